//! The switch operations the agent needs, as a trait ([`Switch`]) that the
//! OVSDB client implements here and a simulator can implement too.
//!
//! On OVSDB every change is one transaction (all or nothing), built with
//! named UUIDs so an Interface, its Port and the Bridge's reference to it
//! are created together:
//!
//! - [`Switch::ensure_bridge`] creates the Bridge (with its local internal
//!   port, as `ovs-vsctl add-br` does, and the `Open_vSwitch` root row when
//!   the database is empty) or brings an existing one to the spec:
//!   datapath type, multicast snooping, and the uplinks. Uplinks are trunk
//!   ports marked `external_ids:spur.dev/role=uplink`; missing ones are
//!   added, marked ones no longer wanted are removed, and ports without
//!   the mark (the Node's management interface, say) are never touched.
//!   With snooping on, uplinks carry
//!   `other_config:mcast-snooping-flood-reports=true` so that members on
//!   other nodes are learned.
//! - [`Switch::add_access_port`] inserts an access port (tag or
//!   untagged), marked `spur.dev/role=access`; for a port already there
//!   that Spur made on that bridge it updates tag and external ids.
//! - [`Switch::remove_port`] takes the Port out of the Bridge and deletes
//!   the Port and Interface rows; removing an absent port is not an error.
//! - [`Switch::list_ports`] reads the bridge's ports with their tag,
//!   external ids and OpenFlow port number (`ofport`, set by
//!   ovs-vswitchd; empty until it has attached the interface).
//!
//! The OVSDB implementation assumes it is the only writer of what it owns
//! (one agent per node): it reads, plans, then writes, without guarding
//! against concurrent changes to the same rows.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::BoxFuture;

use super::client::Client;
use super::error::OvsdbError;
use super::proto::{
    result_count, result_rows, row_uuid, Atom, Condition, Datum, Mutation, Operation, Row,
    Transaction, Uuid,
};

/// The Open vSwitch configuration database.
pub const OVS_DB: &str = "Open_vSwitch";
/// The `external_ids` key marking what Spur created, and why.
pub const ROLE_KEY: &str = "spur.dev/role";
/// [`ROLE_KEY`] value of an uplink (trunk) port.
pub const ROLE_UPLINK: &str = "uplink";
/// [`ROLE_KEY`] value of a Pod's access port.
pub const ROLE_ACCESS: &str = "access";
/// [`ROLE_KEY`] value of the bridge's own internal port.
pub const ROLE_LOCAL: &str = "local";
/// The uplink `other_config` key that floods IGMP/MLD reports.
pub const FLOOD_REPORTS_KEY: &str = "mcast-snooping-flood-reports";

/// The bridge Spur wants on a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeSpec {
    /// Bridge name, e.g. `br-spur`.
    pub name: String,
    /// `netdev` (userspace datapath) or `system` (kernel datapath).
    pub datapath_type: String,
    /// Interfaces attached as trunk ports (all VLANs, tagged).
    pub uplinks: Vec<String>,
    /// IGMP/MLD snooping on the bridge.
    pub mcast_snooping: bool,
}

/// A port of a bridge as [`Switch::list_ports`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// Port (and interface) name.
    pub name: String,
    /// Access VLAN; 0 when untagged (or a trunk).
    pub tag: u16,
    /// The port's `external_ids`.
    pub external_ids: BTreeMap<String, String>,
    /// The OpenFlow port number of its interface, once the switch daemon
    /// has attached it (`-1` if that failed).
    pub ofport: Option<i64>,
}

/// Why a switch operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// The named bridge does not exist.
    #[error("bridge {0:?} does not exist")]
    NoSuchBridge(String),
    /// The VLAN is not 0 (untagged) or 1..=4094.
    #[error("VLAN tag {0} is out of range (0 for untagged, or 1..=4094)")]
    InvalidVlan(u16),
    /// A bridge, port or uplink name that cannot be used.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A port of that name exists and is not Spur's to change (made by
    /// someone else, for another purpose, or on another bridge), so it is
    /// left alone.
    #[error("port {port:?} already exists and is not Spur's to use on bridge {bridge:?}")]
    PortConflict {
        /// The port.
        port: String,
        /// The bridge asked for.
        bridge: String,
    },
    /// The database refused or could not be reached.
    #[error(transparent)]
    Ovsdb(#[from] OvsdbError),
    /// Another implementation's failure (e.g. one a simulator injects).
    #[error("{0}")]
    Backend(String),
}

/// The switch operations of the node agent. Boxed futures keep it usable
/// as `dyn Switch` (the agent holds an `Arc<dyn Switch>`; tests and the
/// simulator supply their own).
pub trait Switch: Send + Sync {
    /// Creates the bridge or brings it to `spec` (see the module doc).
    fn ensure_bridge<'a>(&'a self, spec: &'a BridgeSpec) -> BoxFuture<'a, Result<(), SwitchError>>;

    /// Attaches interface `port` to `bridge` as an access port of VLAN
    /// `vlan_tag` (0: untagged), with `external_ids` (plus
    /// `spur.dev/role=access`). Idempotent for Spur's own ports.
    fn add_access_port<'a>(
        &'a self,
        bridge: &'a str,
        port: &'a str,
        vlan_tag: u16,
        external_ids: BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<(), SwitchError>>;

    /// Detaches `port` from `bridge`: `Ok(true)` if it was there,
    /// `Ok(false)` if there was nothing to do.
    fn remove_port<'a>(
        &'a self,
        bridge: &'a str,
        port: &'a str,
    ) -> BoxFuture<'a, Result<bool, SwitchError>>;

    /// The ports of `bridge`, by name.
    fn list_ports<'a>(
        &'a self,
        bridge: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PortInfo>, SwitchError>>;

    /// The names of every bridge of the switch (Spur's and others').
    fn list_bridges(&self) -> BoxFuture<'_, Result<Vec<String>, SwitchError>>;
}

impl Switch for Client {
    fn ensure_bridge<'a>(&'a self, spec: &'a BridgeSpec) -> BoxFuture<'a, Result<(), SwitchError>> {
        Box::pin(ensure_bridge(self, spec))
    }

    fn add_access_port<'a>(
        &'a self,
        bridge: &'a str,
        port: &'a str,
        vlan_tag: u16,
        external_ids: BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<(), SwitchError>> {
        Box::pin(add_access_port(self, bridge, port, vlan_tag, external_ids))
    }

    fn remove_port<'a>(
        &'a self,
        bridge: &'a str,
        port: &'a str,
    ) -> BoxFuture<'a, Result<bool, SwitchError>> {
        Box::pin(remove_port(self, bridge, port))
    }

    fn list_ports<'a>(
        &'a self,
        bridge: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PortInfo>, SwitchError>> {
        Box::pin(list_ports(self, bridge))
    }

    fn list_bridges(&self) -> BoxFuture<'_, Result<Vec<String>, SwitchError>> {
        Box::pin(list_bridges(self))
    }
}

async fn list_bridges(client: &Client) -> Result<Vec<String>, SwitchError> {
    let ops = [Operation::select("Bridge", vec![], &["name"])];
    let results = client.transact(OVS_DB, &ops).await?;
    let mut names: Vec<String> = result_rows(nth(&results, 0)?)?
        .iter()
        .filter_map(|row| row.get("name").and_then(Datum::as_str).map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// Checks a bridge or port name as OVSDB would take it (shared with the
/// in-memory switch of `crate::fake`).
pub(crate) fn check_name(name: &str) -> Result<(), SwitchError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > 255 {
        "longer than 255 bytes"
    } else if name.chars().any(|c| c.is_control()) {
        "contains control characters"
    } else {
        return Ok(());
    };
    Err(SwitchError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

fn check_vlan(tag: u16) -> Result<(), SwitchError> {
    if tag > 4094 {
        return Err(SwitchError::InvalidVlan(tag));
    }
    Ok(())
}

fn role_map(role: &str) -> Datum {
    Datum::Map(vec![(Atom::from(ROLE_KEY), Atom::from(role))])
}

fn tag_datum(tag: u16) -> Datum {
    if tag == 0 {
        Datum::empty_set()
    } else {
        Datum::from(i64::from(tag))
    }
}

fn malformed(what: &str) -> SwitchError {
    SwitchError::Ovsdb(OvsdbError::Malformed(what.to_owned()))
}

/// The result of operation `i`, which the transaction had.
fn nth(results: &[serde_json::Value], i: usize) -> Result<&serde_json::Value, SwitchError> {
    results
        .get(i)
        .ok_or_else(|| malformed("transact returned too few results"))
}

/// What [`plan_ensure_bridge`] needs to know of the database.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Observed {
    /// Whether the `Open_vSwitch` root row exists.
    pub root_exists: bool,
    /// The bridge, if it exists.
    pub bridge: Option<ObservedBridge>,
    /// Every port marked as a Spur uplink, on any bridge.
    pub uplinks: Vec<ObservedPort>,
    /// The ports, on any bridge, that have the name of a wanted uplink.
    pub taken: BTreeMap<String, Uuid>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ObservedBridge {
    pub uuid: Uuid,
    pub datapath_type: String,
    pub mcast_snooping: bool,
    pub ports: BTreeSet<Uuid>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ObservedPort {
    pub uuid: Uuid,
    pub name: String,
    pub interfaces: Vec<Uuid>,
    pub flood_reports: bool,
}

/// The operations that bring the database from `seen` to `spec` (none
/// when it is there already).
pub(crate) fn plan_ensure_bridge(spec: &BridgeSpec, seen: &Observed) -> Transaction {
    let mut tx = Transaction::new();
    let mut wanted: Vec<&str> = Vec::new();
    for up in &spec.uplinks {
        if !wanted.contains(&up.as_str()) {
            wanted.push(up);
        }
    }
    let uplink_row = |tx: &mut Transaction, name: &str| -> Atom {
        let iface = tx.insert(
            "Interface",
            Row::from([("name".to_owned(), Datum::from(name))]),
        );
        let mut port = Row::from([
            ("name".to_owned(), Datum::from(name)),
            ("interfaces".to_owned(), Datum::from(iface)),
            ("vlan_mode".to_owned(), Datum::from("trunk")),
            ("external_ids".to_owned(), role_map(ROLE_UPLINK)),
        ]);
        if spec.mcast_snooping {
            port.insert(
                "other_config".to_owned(),
                Datum::Map(vec![(Atom::from(FLOOD_REPORTS_KEY), Atom::from("true"))]),
            );
        }
        tx.insert("Port", port)
    };

    let Some(bridge) = &seen.bridge else {
        // A new bridge: its local internal port, its uplinks, and the root
        // row's reference (without which the bridge would be collected).
        let local_iface = tx.insert(
            "Interface",
            Row::from([
                ("name".to_owned(), Datum::from(spec.name.as_str())),
                ("type".to_owned(), Datum::from("internal")),
            ]),
        );
        let mut ports = vec![tx.insert(
            "Port",
            Row::from([
                ("name".to_owned(), Datum::from(spec.name.as_str())),
                ("interfaces".to_owned(), Datum::from(local_iface)),
                ("external_ids".to_owned(), role_map(ROLE_LOCAL)),
            ]),
        )];
        for up in &wanted {
            ports.push(uplink_row(&mut tx, up));
        }
        let br = tx.insert(
            "Bridge",
            Row::from([
                ("name".to_owned(), Datum::from(spec.name.as_str())),
                (
                    "datapath_type".to_owned(),
                    Datum::from(spec.datapath_type.as_str()),
                ),
                (
                    "mcast_snooping_enable".to_owned(),
                    Datum::from(spec.mcast_snooping),
                ),
                ("ports".to_owned(), Datum::Set(ports)),
            ]),
        );
        if seen.root_exists {
            tx.push(Operation::mutate(
                "Open_vSwitch",
                vec![],
                vec![Mutation::insert("bridges", Datum::Set(vec![br]))],
            ));
        } else {
            // Fails (rather than making a second root) if one appeared since.
            tx.push(Operation::assert_rows(
                "Open_vSwitch",
                vec![],
                &["_uuid"],
                vec![],
            ));
            tx.push(Operation::insert(
                "Open_vSwitch",
                Row::from([("bridges".to_owned(), Datum::Set(vec![br]))]),
            ));
        }
        tx.push(Operation::comment(format!(
            "spur: create bridge {}",
            spec.name
        )));
        return tx;
    };

    let this_bridge = || vec![Condition::uuid(&bridge.uuid)];
    let mut changes = Row::new();
    if bridge.datapath_type != spec.datapath_type {
        changes.insert(
            "datapath_type".to_owned(),
            Datum::from(spec.datapath_type.as_str()),
        );
    }
    if bridge.mcast_snooping != spec.mcast_snooping {
        changes.insert(
            "mcast_snooping_enable".to_owned(),
            Datum::from(spec.mcast_snooping),
        );
    }
    if !changes.is_empty() {
        tx.push(Operation::update("Bridge", this_bridge(), changes));
    }

    let owned: Vec<&ObservedPort> = seen
        .uplinks
        .iter()
        .filter(|p| bridge.ports.contains(&p.uuid))
        .collect();
    let extra: Vec<&ObservedPort> = owned
        .iter()
        .copied()
        .filter(|p| !wanted.contains(&p.name.as_str()))
        .collect();
    if !extra.is_empty() {
        tx.push(Operation::mutate(
            "Bridge",
            this_bridge(),
            vec![Mutation::delete(
                "ports",
                Datum::set(extra.iter().map(|p| p.uuid.clone())),
            )],
        ));
        for p in &extra {
            tx.push(Operation::delete("Port", vec![Condition::uuid(&p.uuid)]));
            for i in &p.interfaces {
                tx.push(Operation::delete("Interface", vec![Condition::uuid(i)]));
            }
        }
    }
    for p in owned.iter().filter(|p| wanted.contains(&p.name.as_str())) {
        if p.flood_reports != spec.mcast_snooping {
            let mut m = vec![Mutation::delete(
                "other_config",
                Datum::set([FLOOD_REPORTS_KEY]),
            )];
            if spec.mcast_snooping {
                m.push(Mutation::insert(
                    "other_config",
                    Datum::Map(vec![(Atom::from(FLOOD_REPORTS_KEY), Atom::from("true"))]),
                ));
            }
            tx.push(Operation::mutate("Port", vec![Condition::uuid(&p.uuid)], m));
        }
    }
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| !owned.iter().any(|p| p.name == *w))
        .collect();
    if !missing.is_empty() {
        let new_ports: Vec<Atom> = missing
            .iter()
            .map(|name| uplink_row(&mut tx, name))
            .collect();
        tx.push(Operation::mutate(
            "Bridge",
            this_bridge(),
            vec![Mutation::insert("ports", Datum::Set(new_ports))],
        ));
    }
    if !tx.is_empty() {
        tx.push(Operation::comment(format!(
            "spur: reconcile bridge {}",
            spec.name
        )));
    }
    tx
}

async fn observe(client: &Client, spec: &BridgeSpec) -> Result<Observed, SwitchError> {
    let ops = [
        Operation::select("Open_vSwitch", vec![], &["_uuid"]),
        Operation::select(
            "Bridge",
            vec![Condition::eq("name", spec.name.as_str())],
            &["_uuid", "ports", "datapath_type", "mcast_snooping_enable"],
        ),
        Operation::select(
            "Port",
            vec![Condition::includes("external_ids", role_map(ROLE_UPLINK))],
            &["_uuid", "name", "interfaces", "other_config"],
        ),
    ];
    let by_name = spec
        .uplinks
        .iter()
        .map(|up| Operation::select("Port", vec![Condition::eq("name", up.as_str())], &["_uuid"]));
    let ops: Vec<Operation> = ops.into_iter().chain(by_name).collect();
    let results = client.transact(OVS_DB, &ops).await?;
    let root_exists = !result_rows(nth(&results, 0)?)?.is_empty();
    let bridge = match result_rows(nth(&results, 1)?)?.first() {
        None => None,
        Some(row) => Some(ObservedBridge {
            uuid: row_uuid(row).ok_or_else(|| malformed("Bridge row without _uuid"))?,
            datapath_type: row
                .get("datapath_type")
                .and_then(Datum::as_str)
                .unwrap_or_default()
                .to_owned(),
            mcast_snooping: row
                .get("mcast_snooping_enable")
                .and_then(Datum::as_bool)
                .unwrap_or(false),
            ports: row
                .get("ports")
                .map(|d| d.as_uuid_set().into_iter().collect())
                .unwrap_or_default(),
        }),
    };
    let mut uplinks = Vec::new();
    for row in result_rows(nth(&results, 2)?)? {
        uplinks.push(ObservedPort {
            uuid: row_uuid(&row).ok_or_else(|| malformed("Port row without _uuid"))?,
            name: row
                .get("name")
                .and_then(Datum::as_str)
                .unwrap_or_default()
                .to_owned(),
            interfaces: row
                .get("interfaces")
                .map(Datum::as_uuid_set)
                .unwrap_or_default(),
            flood_reports: row
                .get("other_config")
                .map(|d| d.as_string_map())
                .and_then(|m| m.get(FLOOD_REPORTS_KEY).cloned())
                .is_some_and(|v| v == "true"),
        });
    }
    let mut taken = BTreeMap::new();
    for (i, up) in spec.uplinks.iter().enumerate() {
        if let Some(uuid) = result_rows(nth(&results, 3 + i)?)?
            .first()
            .and_then(row_uuid)
        {
            taken.insert(up.clone(), uuid);
        }
    }
    Ok(Observed {
        root_exists,
        bridge,
        uplinks,
        taken,
    })
}

async fn ensure_bridge(client: &Client, spec: &BridgeSpec) -> Result<(), SwitchError> {
    check_name(&spec.name)?;
    for up in &spec.uplinks {
        check_name(up)?;
        if *up == spec.name {
            return Err(SwitchError::InvalidName {
                name: up.clone(),
                reason: "an uplink cannot have the bridge's own name",
            });
        }
    }
    let seen = observe(client, spec).await?;
    // A wanted uplink whose name is taken by a port Spur does not own here
    // (the management interface, say) is an error, not something to take.
    let owned_here: BTreeSet<&Uuid> = match &seen.bridge {
        Some(b) => seen
            .uplinks
            .iter()
            .map(|p| &p.uuid)
            .filter(|u| b.ports.contains(*u))
            .collect(),
        None => BTreeSet::new(),
    };
    if let Some((name, _)) = seen
        .taken
        .iter()
        .find(|(_, uuid)| !owned_here.contains(uuid))
    {
        return Err(SwitchError::PortConflict {
            port: name.clone(),
            bridge: spec.name.clone(),
        });
    }
    let tx = plan_ensure_bridge(spec, &seen);
    if tx.is_empty() {
        tracing::debug!(bridge = spec.name, "bridge already as specified");
        return Ok(());
    }
    tracing::info!(
        bridge = spec.name,
        create = seen.bridge.is_none(),
        ops = tx.ops().len(),
        "reconciling OVS bridge"
    );
    client.transact(OVS_DB, tx.ops()).await?;
    Ok(())
}

async fn add_access_port(
    client: &Client,
    bridge: &str,
    port: &str,
    vlan_tag: u16,
    mut external_ids: BTreeMap<String, String>,
) -> Result<(), SwitchError> {
    check_name(bridge)?;
    check_name(port)?;
    check_vlan(vlan_tag)?;
    external_ids.insert(ROLE_KEY.to_owned(), ROLE_ACCESS.to_owned());

    let mut tx = Transaction::new();
    let bridge_exists = tx.push(Operation::assert_rows(
        "Bridge",
        vec![Condition::eq("name", bridge)],
        &["name"],
        vec![Row::from([("name".to_owned(), Datum::from(bridge))])],
    ));
    let iface = tx.insert(
        "Interface",
        Row::from([("name".to_owned(), Datum::from(port))]),
    );
    let port_ref = tx.insert(
        "Port",
        Row::from([
            ("name".to_owned(), Datum::from(port)),
            ("interfaces".to_owned(), Datum::from(iface)),
            ("tag".to_owned(), tag_datum(vlan_tag)),
            ("external_ids".to_owned(), Datum::string_map(&external_ids)),
        ]),
    );
    tx.push(Operation::mutate(
        "Bridge",
        vec![Condition::eq("name", bridge)],
        vec![Mutation::insert("ports", Datum::Set(vec![port_ref]))],
    ));
    tx.push(Operation::comment(format!(
        "spur: add port {port} to {bridge}"
    )));

    match client.transact(OVS_DB, tx.ops()).await {
        Ok(_) => Ok(()),
        Err(OvsdbError::OperationFailed { index, .. }) if index == bridge_exists => {
            Err(SwitchError::NoSuchBridge(bridge.to_owned()))
        }
        Err(OvsdbError::CommitFailed { error, details }) if error == "constraint violation" => {
            // Most likely the name is taken: fine if it is our own port.
            update_existing_access_port(client, bridge, port, vlan_tag, &external_ids)
                .await?
                .ok_or(SwitchError::Ovsdb(OvsdbError::CommitFailed {
                    error,
                    details,
                }))
        }
        Err(e) => Err(e.into()),
    }
}

/// Sets tag and external ids of `port` if it is a Spur access port of
/// `bridge`; `None` if no port has that name.
async fn update_existing_access_port(
    client: &Client,
    bridge: &str,
    port: &str,
    vlan_tag: u16,
    external_ids: &BTreeMap<String, String>,
) -> Result<Option<()>, SwitchError> {
    let (port_row, bridge_ports) =
        read_port_and_bridge(client, bridge, port, &["_uuid", "external_ids"]).await?;
    let Some(row) = port_row else {
        return Ok(None);
    };
    let uuid = row_uuid(&row).ok_or_else(|| malformed("Port row without _uuid"))?;
    let ours = row
        .get("external_ids")
        .map(Datum::as_string_map)
        .is_some_and(|m| m.get(ROLE_KEY).map(String::as_str) == Some(ROLE_ACCESS));
    if !ours || !bridge_ports.is_some_and(|ports| ports.contains(&uuid)) {
        return Err(SwitchError::PortConflict {
            port: port.to_owned(),
            bridge: bridge.to_owned(),
        });
    }
    let ops = [Operation::update(
        "Port",
        vec![Condition::uuid(&uuid)],
        Row::from([
            ("tag".to_owned(), tag_datum(vlan_tag)),
            ("external_ids".to_owned(), Datum::string_map(external_ids)),
        ]),
    )];
    client.transact(OVS_DB, &ops).await?;
    tracing::debug!(bridge, port, vlan_tag, "updated existing access port");
    Ok(Some(()))
}

/// The Port row named `port` (selected `columns`) and the port UUIDs of
/// `bridge` (`None`: no such bridge), read together.
async fn read_port_and_bridge(
    client: &Client,
    bridge: &str,
    port: &str,
    columns: &[&str],
) -> Result<(Option<Row>, Option<BTreeSet<Uuid>>), SwitchError> {
    let ops = [
        Operation::select("Port", vec![Condition::eq("name", port)], columns),
        Operation::select("Bridge", vec![Condition::eq("name", bridge)], &["ports"]),
    ];
    let results = client.transact(OVS_DB, &ops).await?;
    let port_row = result_rows(nth(&results, 0)?)?.into_iter().next();
    let bridge_ports = result_rows(nth(&results, 1)?)?.first().map(|row| {
        row.get("ports")
            .map(|d| d.as_uuid_set().into_iter().collect())
            .unwrap_or_default()
    });
    Ok((port_row, bridge_ports))
}

async fn remove_port(client: &Client, bridge: &str, port: &str) -> Result<bool, SwitchError> {
    check_name(bridge)?;
    check_name(port)?;
    // Read only the port (by its indexed name): the bridge's whole port
    // set would make removal cost grow with the number of ports.
    let select = [Operation::select(
        "Port",
        vec![Condition::eq("name", port)],
        &["_uuid", "interfaces"],
    )];
    let results = client.transact(OVS_DB, &select).await?;
    let Some(row) = result_rows(nth(&results, 0)?)?.into_iter().next() else {
        return Ok(false);
    };
    let uuid = row_uuid(&row).ok_or_else(|| malformed("Port row without _uuid"))?;
    let mut tx = Transaction::new();
    // Only if it is on this bridge (on another one, it is not ours to take).
    let on_bridge = tx.push(Operation::assert_rows(
        "Bridge",
        vec![
            Condition::eq("name", bridge),
            Condition::includes("ports", Datum::set([uuid.clone()])),
        ],
        &["name"],
        vec![Row::from([("name".to_owned(), Datum::from(bridge))])],
    ));
    tx.push(Operation::mutate(
        "Bridge",
        vec![Condition::eq("name", bridge)],
        vec![Mutation::delete("ports", Datum::set([uuid.clone()]))],
    ));
    let deleted = tx.push(Operation::delete("Port", vec![Condition::uuid(&uuid)]));
    for iface in row
        .get("interfaces")
        .map(Datum::as_uuid_set)
        .unwrap_or_default()
    {
        tx.push(Operation::delete(
            "Interface",
            vec![Condition::uuid(&iface)],
        ));
    }
    tx.push(Operation::comment(format!(
        "spur: remove port {port} from {bridge}"
    )));
    match client.transact(OVS_DB, tx.ops()).await {
        Ok(results) => {
            let removed = results.get(deleted).and_then(result_count).unwrap_or(0) > 0;
            tracing::debug!(bridge, port, removed, "removed port");
            Ok(removed)
        }
        Err(OvsdbError::OperationFailed { index, .. }) if index == on_bridge => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn list_ports(client: &Client, bridge: &str) -> Result<Vec<PortInfo>, SwitchError> {
    check_name(bridge)?;
    let ops = [
        Operation::select("Bridge", vec![Condition::eq("name", bridge)], &["ports"]),
        Operation::select(
            "Port",
            vec![],
            &["_uuid", "name", "tag", "external_ids", "interfaces"],
        ),
        Operation::select("Interface", vec![], &["_uuid", "ofport"]),
    ];
    let results = client.transact(OVS_DB, &ops).await?;
    let bridge_ports: BTreeSet<Uuid> = match result_rows(nth(&results, 0)?)?.first() {
        None => return Err(SwitchError::NoSuchBridge(bridge.to_owned())),
        Some(row) => row
            .get("ports")
            .map(|d| d.as_uuid_set().into_iter().collect())
            .unwrap_or_default(),
    };
    let ofports: BTreeMap<Uuid, i64> = result_rows(nth(&results, 2)?)?
        .iter()
        .filter_map(|row| Some((row_uuid(row)?, row.get("ofport")?.as_optional_integer()?)))
        .collect();
    let mut out = Vec::new();
    for row in result_rows(nth(&results, 1)?)? {
        let Some(uuid) = row_uuid(&row) else { continue };
        if !bridge_ports.contains(&uuid) {
            continue;
        }
        let first_iface = row
            .get("interfaces")
            .map(Datum::as_uuid_set)
            .unwrap_or_default()
            .into_iter()
            .next();
        out.push(PortInfo {
            name: row
                .get("name")
                .and_then(Datum::as_str)
                .unwrap_or_default()
                .to_owned(),
            tag: row
                .get("tag")
                .and_then(Datum::as_optional_integer)
                .and_then(|t| u16::try_from(t).ok())
                .unwrap_or(0),
            external_ids: row
                .get("external_ids")
                .map(Datum::as_string_map)
                .unwrap_or_default(),
            ofport: first_iface.and_then(|i| ofports.get(&i).copied()),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid(n: u8) -> Uuid {
        Uuid::parse(&format!("00000000-0000-0000-0000-0000000000{n:02x}")).unwrap()
    }

    fn spec(uplinks: &[&str], snoop: bool) -> BridgeSpec {
        BridgeSpec {
            name: "br-spur".into(),
            datapath_type: "netdev".into(),
            uplinks: uplinks.iter().map(|s| s.to_string()).collect(),
            mcast_snooping: snoop,
        }
    }

    fn seen(ports: &[(u8, &str, bool)], extra_ports: &[u8]) -> Observed {
        Observed {
            root_exists: true,
            bridge: Some(ObservedBridge {
                uuid: uuid(0xff),
                datapath_type: "netdev".into(),
                mcast_snooping: true,
                ports: ports
                    .iter()
                    .map(|p| uuid(p.0))
                    .chain(extra_ports.iter().map(|n| uuid(*n)))
                    .collect(),
            }),
            uplinks: ports
                .iter()
                .map(|(n, name, flood)| ObservedPort {
                    uuid: uuid(*n),
                    name: name.to_string(),
                    interfaces: vec![uuid(n + 100)],
                    flood_reports: *flood,
                })
                .collect(),
            taken: BTreeMap::new(),
        }
    }

    #[test]
    fn nothing_to_do_when_in_spec() {
        let tx = plan_ensure_bridge(
            &spec(&["eth1", "eth2"], true),
            &seen(&[(1, "eth1", true), (2, "eth2", true)], &[9]),
        );
        assert!(tx.is_empty(), "{:?}", tx.ops());
    }

    #[test]
    fn removes_only_owned_extras() {
        let tx = plan_ensure_bridge(
            &spec(&["eth2"], true),
            &seen(&[(1, "eth1", true), (2, "eth2", true)], &[9]),
        );
        let deleted: Vec<String> = tx
            .ops()
            .iter()
            .filter_map(|op| match op {
                Operation::Delete { table, conditions } => {
                    Some(format!("{table}:{:?}", conditions[0].value))
                }
                _ => None,
            })
            .collect();
        assert_eq!(deleted.len(), 2, "{deleted:?}"); // Port 1 and its interface
        assert!(deleted.iter().all(|d| !d.contains("09")), "{deleted:?}");
    }

    #[test]
    fn new_bridge_on_empty_db_creates_root() {
        let tx = plan_ensure_bridge(&spec(&["eth1"], false), &Observed::default());
        let inserts: Vec<&str> = tx
            .ops()
            .iter()
            .filter_map(|op| match op {
                Operation::Insert { table, .. } => Some(table.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            inserts,
            [
                "Interface",
                "Port",
                "Interface",
                "Port",
                "Bridge",
                "Open_vSwitch"
            ]
        );
    }
}
