//! [`FakeSwitch`]: the switch (ovsdb-server's view of it) in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use super::{FaultHook, FaultPoint, HookSlot, Op, Step, Subject};
use crate::ovsdb::switch::{check_name, ROLE_ACCESS, ROLE_KEY, ROLE_LOCAL, ROLE_UPLINK};
use crate::ovsdb::{BridgeSpec, PortInfo, Switch, SwitchError};

#[derive(Debug)]
struct Bridge {
    spec: BridgeSpec,
    /// Names of its ports (the local one, uplinks, access ports).
    ports: BTreeSet<String>,
}

#[derive(Debug)]
struct Port {
    bridge: String,
    info: PortInfo,
}

#[derive(Debug, Default)]
struct SwitchState {
    bridges: BTreeMap<String, Bridge>,
    /// Every port of the switch by name (names are unique switch-wide).
    ports: BTreeMap<String, Port>,
    next_ofport: i64,
    fail_add_port: BTreeSet<String>,
}

impl SwitchState {
    fn insert_port(&mut self, bridge: &str, name: &str, tag: u16, ids: BTreeMap<String, String>) {
        self.next_ofport += 1;
        let info = PortInfo {
            name: name.to_string(),
            tag,
            external_ids: ids,
            ofport: Some(self.next_ofport),
        };
        if let Some(b) = self.bridges.get_mut(bridge) {
            b.ports.insert(name.to_string());
        }
        self.ports.insert(
            name.to_string(),
            Port {
                bridge: bridge.to_string(),
                info,
            },
        );
    }

    fn remove_port(&mut self, name: &str) -> Option<Port> {
        let p = self.ports.remove(name)?;
        if let Some(b) = self.bridges.get_mut(&p.bridge) {
            b.ports.remove(name);
        }
        Some(p)
    }
}

/// The switch's content, read back ([`FakeSwitch::snapshot`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchSnapshot {
    /// Every bridge by name.
    pub bridges: BTreeMap<String, BridgeSnapshot>,
}

/// A bridge with its ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeSnapshot {
    /// The spec it was last brought to.
    pub spec: BridgeSpec,
    /// Every port by name: its local port (`spur.dev/role=local`), its
    /// uplinks (`uplink`, trunks: tag 0) and the access ports (`access`).
    pub ports: BTreeMap<String, PortInfo>,
}

/// A switch in memory: bridges, each with its local port, its uplinks
/// (trunks) and access ports; port names unique switch-wide; OpenFlow
/// port numbers assigned at once. Survives an agent crash (it models
/// ovsdb-server); [`FakeSwitch::wipe`] models a node reboot.
#[derive(Debug, Default)]
pub struct FakeSwitch {
    state: Mutex<SwitchState>,
    hook: HookSlot,
}

fn injected(e: String) -> SwitchError {
    SwitchError::Backend(e)
}

fn role(role: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(ROLE_KEY.to_string(), role.to_string())])
}

fn has_role(p: &PortInfo, role: &str) -> bool {
    p.external_ids.get(ROLE_KEY).map(String::as_str) == Some(role)
}

impl FakeSwitch {
    /// An empty switch.
    pub fn new() -> FakeSwitch {
        FakeSwitch::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SwitchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs (or, with `None`, removes) the hook consulted at every
    /// fault point.
    pub fn set_fault_hook(&self, hook: Option<Arc<dyn FaultHook>>) {
        self.hook.set(hook);
    }

    async fn point(&self, point: &FaultPoint) -> Result<(), SwitchError> {
        self.hook.check(point).await.map_err(injected)
    }

    /// The bridges ensured so far, with their specs.
    pub fn bridges(&self) -> BTreeMap<String, BridgeSpec> {
        self.lock()
            .bridges
            .iter()
            .map(|(n, b)| (n.clone(), b.spec.clone()))
            .collect()
    }

    /// Every access port, as (bridge, port), by port name.
    pub fn access_ports(&self) -> Vec<(String, PortInfo)> {
        self.lock()
            .ports
            .values()
            .filter(|p| has_role(&p.info, ROLE_ACCESS))
            .map(|p| (p.bridge.clone(), p.info.clone()))
            .collect()
    }

    /// The port `name`, as (bridge, port).
    pub fn port(&self, name: &str) -> Option<(String, PortInfo)> {
        self.lock()
            .ports
            .get(name)
            .map(|p| (p.bridge.clone(), p.info.clone()))
    }

    /// How many ports the switch has (every role).
    pub fn port_count(&self) -> usize {
        self.lock().ports.len()
    }

    /// Everything the switch holds.
    pub fn snapshot(&self) -> SwitchSnapshot {
        let s = self.lock();
        SwitchSnapshot {
            bridges: s
                .bridges
                .iter()
                .map(|(name, b)| {
                    let ports = b
                        .ports
                        .iter()
                        .filter_map(|p| s.ports.get(p))
                        .map(|p| (p.info.name.clone(), p.info.clone()))
                        .collect();
                    (
                        name.clone(),
                        BridgeSnapshot {
                            spec: b.spec.clone(),
                            ports,
                        },
                    )
                })
                .collect(),
        }
    }

    /// The node rebooted and its OVSDB state was lost: no bridges, no
    /// ports. (Injected failures and the hook stay.)
    pub fn wipe(&self) {
        let mut s = self.lock();
        s.bridges.clear();
        s.ports.clear();
    }

    /// Makes adding the port `name` fail (a switch that refuses it), at
    /// [`Step::Start`] of `add_access_port`: nothing is changed.
    pub fn fail_port(&self, name: &str) {
        self.lock().fail_add_port.insert(name.to_string());
    }

    /// Undoes [`FakeSwitch::fail_port`].
    pub fn unfail_port(&self, name: &str) {
        self.lock().fail_add_port.remove(name);
    }

    /// The transaction of `ensure_bridge`, all or nothing.
    fn apply_bridge(&self, spec: &BridgeSpec) -> Result<(), SwitchError> {
        let mut s = self.lock();
        let mut wanted: Vec<&str> = Vec::new();
        for up in &spec.uplinks {
            if !wanted.contains(&up.as_str()) {
                wanted.push(up);
            }
        }
        // A wanted uplink's name taken by a port that is not an uplink of
        // this bridge is not Spur's to take.
        for up in &wanted {
            if let Some(p) = s.ports.get(*up) {
                if p.bridge != spec.name || !has_role(&p.info, ROLE_UPLINK) {
                    return Err(SwitchError::PortConflict {
                        port: up.to_string(),
                        bridge: spec.name.clone(),
                    });
                }
            }
        }
        match s.bridges.get_mut(&spec.name) {
            Some(b) => b.spec = spec.clone(),
            None => {
                if let Some(p) = s.ports.get(&spec.name) {
                    // The local port's name is taken elsewhere: OVSDB's
                    // unique index on Port names refuses the transaction.
                    return Err(SwitchError::PortConflict {
                        port: spec.name.clone(),
                        bridge: p.bridge.clone(),
                    });
                }
                s.bridges.insert(
                    spec.name.clone(),
                    Bridge {
                        spec: spec.clone(),
                        ports: BTreeSet::new(),
                    },
                );
                s.insert_port(&spec.name, &spec.name, 0, role(ROLE_LOCAL));
            }
        }
        let extra: Vec<String> = s.bridges[&spec.name]
            .ports
            .iter()
            .filter(|p| !wanted.contains(&p.as_str()))
            .filter(|p| {
                s.ports
                    .get(*p)
                    .is_some_and(|p| has_role(&p.info, ROLE_UPLINK))
            })
            .cloned()
            .collect();
        for p in extra {
            s.remove_port(&p);
        }
        for up in wanted {
            if !s.ports.contains_key(up) {
                s.insert_port(&spec.name, up, 0, role(ROLE_UPLINK));
            }
        }
        Ok(())
    }

    /// The transaction of `add_access_port`, all or nothing.
    fn apply_access_port(
        &self,
        bridge: &str,
        port: &str,
        vlan_tag: u16,
        mut external_ids: BTreeMap<String, String>,
    ) -> Result<(), SwitchError> {
        let mut s = self.lock();
        if s.fail_add_port.contains(port) {
            return Err(SwitchError::Backend(format!(
                "injected failure adding {port}"
            )));
        }
        if !s.bridges.contains_key(bridge) {
            return Err(SwitchError::NoSuchBridge(bridge.to_string()));
        }
        external_ids.insert(ROLE_KEY.to_string(), ROLE_ACCESS.to_string());
        match s.ports.get_mut(port) {
            Some(p) => {
                // Spur's own access port on that bridge: updated in place
                // (same interface, same OpenFlow port).
                if p.bridge != bridge || !has_role(&p.info, ROLE_ACCESS) {
                    return Err(SwitchError::PortConflict {
                        port: port.to_string(),
                        bridge: bridge.to_string(),
                    });
                }
                p.info.tag = vlan_tag;
                p.info.external_ids = external_ids;
            }
            None => s.insert_port(bridge, port, vlan_tag, external_ids),
        }
        Ok(())
    }
}

impl Switch for FakeSwitch {
    fn ensure_bridge<'a>(&'a self, spec: &'a BridgeSpec) -> BoxFuture<'a, Result<(), SwitchError>> {
        Box::pin(async move {
            let point = FaultPoint::new(
                Op::EnsureBridge,
                Step::Start,
                Subject {
                    bridge: Some(spec.name.clone()),
                    ..Subject::default()
                },
            );
            self.point(&point).await?;
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
            self.apply_bridge(spec)?;
            self.point(&point.at(Step::Reply)).await
        })
    }

    fn add_access_port<'a>(
        &'a self,
        bridge: &'a str,
        port: &'a str,
        vlan_tag: u16,
        external_ids: BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<(), SwitchError>> {
        Box::pin(async move {
            let point = FaultPoint::new(
                Op::AddAccessPort,
                Step::Start,
                Subject {
                    bridge: Some(bridge.to_string()),
                    port: Some(port.to_string()),
                    ..Subject::default()
                },
            );
            self.point(&point).await?;
            check_name(bridge)?;
            check_name(port)?;
            if vlan_tag > 4094 {
                return Err(SwitchError::InvalidVlan(vlan_tag));
            }
            self.apply_access_port(bridge, port, vlan_tag, external_ids)?;
            self.point(&point.at(Step::Reply)).await
        })
    }

    fn remove_port<'a>(
        &'a self,
        bridge: &'a str,
        port: &'a str,
    ) -> BoxFuture<'a, Result<bool, SwitchError>> {
        Box::pin(async move {
            let point = FaultPoint::new(
                Op::RemovePort,
                Step::Start,
                Subject {
                    bridge: Some(bridge.to_string()),
                    port: Some(port.to_string()),
                    ..Subject::default()
                },
            );
            self.point(&point).await?;
            check_name(bridge)?;
            check_name(port)?;
            let removed = {
                let mut s = self.lock();
                match s.ports.get(port) {
                    // Only from this bridge (on another, it is not ours).
                    Some(p) if p.bridge == bridge => s.remove_port(port).is_some(),
                    _ => false,
                }
            };
            self.point(&point.at(Step::Reply)).await?;
            Ok(removed)
        })
    }

    fn list_ports<'a>(
        &'a self,
        bridge: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PortInfo>, SwitchError>> {
        Box::pin(async move {
            let point = FaultPoint::new(
                Op::ListPorts,
                Step::Start,
                Subject {
                    bridge: Some(bridge.to_string()),
                    ..Subject::default()
                },
            );
            self.point(&point).await?;
            let s = self.lock();
            let Some(b) = s.bridges.get(bridge) else {
                return Err(SwitchError::NoSuchBridge(bridge.to_string()));
            };
            Ok(b.ports
                .iter()
                .filter_map(|p| s.ports.get(p))
                .map(|p| p.info.clone())
                .collect())
        })
    }

    fn list_bridges(&self) -> BoxFuture<'_, Result<Vec<String>, SwitchError>> {
        Box::pin(async move {
            let point = FaultPoint::new(Op::ListBridges, Step::Start, Subject::default());
            self.point(&point).await?;
            Ok(self.lock().bridges.keys().cloned().collect())
        })
    }
}
