//! The PF driver of the hardware harness's emulated SR-IOV NICs
//! ([`EmulatedPf`], a [`PfDriver`]), over Spur's own OVSDB client.
//!
//! The harness (`spur-hil`) emulates PF `P` of a node as an OVS bridge
//! named `P` in the node's own Open vSwitch: its local internal port is
//! the PF netdev `P`; VF `k` is a veth pair, `{P}v{k}` in the node's
//! namespace (the VF netdev the agent moves into Pods) and its
//! representor `{P}r{k}` on bridge `P` as an access port
//! (`vlan_mode=access`); an uplink joins bridge `P` to the fabric. The
//! bridge is the NIC's embedded switch, and the representor's Port row is
//! where this driver keeps what a real PF keeps per VF:
//!
//! - VLAN: the port's `tag` (no tag: VLAN 0, and with `vlan_mode=access`
//!   the port then carries untagged frames only). This one is enforced:
//!   the VF's frames leave the bridge tagged, and only frames of that
//!   VLAN reach the VF, as on a real NIC.
//! - MAC, QoS (802.1p priority), spoof check and trust: kept in the
//!   port's `external_ids` (`spur.dev/vf-mac`, `spur.dev/vf-qos`,
//!   `spur.dev/vf-spoofchk`, `spur.dev/vf-trust`) and read back, but only
//!   recorded, not enforced: the bridge does not rewrite the VF's MAC
//!   (the agent sets the same MAC on the VF netdev itself, so frames carry
//!   it anyway), does not drop frames with another source MAC (spoof
//!   check), does not set the priority bits, and has no notion of a
//!   trusted VF. What is not recorded reads as Linux drivers report a
//!   fresh VF: no MAC, priority 0, spoof check on, not trusted.
//!
//! The driver only changes the representor ports of bridges that exist:
//! the harness creates bridge, veths and ports; a missing port is an
//! error naming the PF, the VF and the port.
//!
//! What is not here: the VF netdev's move into the Pod (the netlink
//! [`super::netlink::RtNetlinkVfs`], which takes this driver through
//! [`super::netlink::RtNetlinkVfs::with_pf_driver`]), the harness's
//! wiring (spur-hil's lab).

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use spur_core::names::Mac;
use tracing::debug;

use super::netlink::PfDriver;
use super::vf::PfVfSettings;
use crate::netdev::{NetdevError, Netns};
use crate::ovsdb::proto::{result_rows, row_uuid, Condition, Datum, Operation, Row};
use crate::ovsdb::switch::OVS_DB;
use crate::ovsdb::{Client, OvsdbError};

/// `external_ids` key of the VF's MAC as the PF set it.
pub const MAC_KEY: &str = "spur.dev/vf-mac";
/// `external_ids` key of the VF's 802.1p priority.
pub const QOS_KEY: &str = "spur.dev/vf-qos";
/// `external_ids` key of the VF's spoof check (`true`/`false`).
pub const SPOOFCHK_KEY: &str = "spur.dev/vf-spoofchk";
/// `external_ids` key of the VF's trust (`true`/`false`).
pub const TRUST_KEY: &str = "spur.dev/vf-trust";

/// The representor port of VF `index` of PF `pf`: `{pf}r{index}`.
pub fn representor(pf: &str, index: u16) -> String {
    format!("{pf}r{index}")
}

/// Why the emulated NIC's driver failed.
#[derive(Debug, thiserror::Error)]
pub enum EmulatedNicError {
    /// The PF's bridge does not exist.
    #[error("emulated PF {pf}: no OVS bridge {pf} (the emulated NIC is not wired)")]
    NoBridge {
        /// The PF.
        pf: String,
    },
    /// The representor port of the VF does not exist on the PF's bridge.
    #[error("emulated PF {pf}: VF {index}: no representor port {port} on bridge {pf}")]
    NoRepresentor {
        /// The PF.
        pf: String,
        /// The VF's index.
        index: u16,
        /// The port looked for.
        port: String,
    },
    /// A recorded value cannot be read back.
    #[error("emulated PF {pf}: VF {index}: port {port}: {key} = {value:?}: {reason}")]
    BadRecord {
        /// The PF.
        pf: String,
        /// The VF's index.
        index: u16,
        /// The representor port.
        port: String,
        /// The column or `external_ids` key.
        key: String,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A VLAN or priority out of range.
    #[error("emulated PF {pf}: VF {index}: {field} {value} is out of range ({range})")]
    OutOfRange {
        /// The PF.
        pf: String,
        /// The VF's index.
        index: u16,
        /// `vlan` or `qos`.
        field: &'static str,
        /// The value.
        value: u16,
        /// The valid range.
        range: &'static str,
    },
    /// The database failed.
    #[error("emulated PF {pf}: VF {index}: OVSDB: {source}")]
    Ovsdb {
        /// The PF.
        pf: String,
        /// The VF's index.
        index: u16,
        /// The failure.
        source: OvsdbError,
    },
}

impl EmulatedNicError {
    /// The [`NetdevError`] the [`PfDriver`] answers with.
    fn into_netdev(self, op: &str) -> NetdevError {
        match self {
            EmulatedNicError::OutOfRange {
                pf,
                index,
                field,
                value,
                range,
            } => NetdevError::InvalidSpec {
                field: field.into(),
                value: value.to_string(),
                reason: format!("VF {index} of emulated PF {pf}: must be {range}"),
            },
            other => NetdevError::Protocol {
                op: op.to_owned(),
                netns: Netns::Agent,
                detail: other.to_string(),
            },
        }
    }
}

/// The VF's settings as its representor's Port row records them (pure):
/// the tag is the VLAN, the rest comes from `external_ids`, with a fresh
/// VF's defaults where nothing is recorded.
pub fn settings_of_port(
    pf: &str,
    index: u16,
    tag: Option<i64>,
    external_ids: &BTreeMap<String, String>,
) -> Result<PfVfSettings, EmulatedNicError> {
    let port = representor(pf, index);
    let bad = |key: &str, value: &str, reason: &'static str| EmulatedNicError::BadRecord {
        pf: pf.to_owned(),
        index,
        port: port.clone(),
        key: key.to_owned(),
        value: value.to_owned(),
        reason,
    };
    let vlan = match tag {
        None => 0,
        Some(t) => u16::try_from(t)
            .ok()
            .filter(|v| (1..=4094).contains(v))
            .ok_or_else(|| bad("tag", &t.to_string(), "not a VLAN ID (1..=4094)"))?,
    };
    let mac = match external_ids.get(MAC_KEY) {
        None => None,
        Some(text) => Some(
            text.parse::<Mac>()
                .map_err(|_| bad(MAC_KEY, text, "not a MAC address"))?,
        ),
    };
    let qos = match external_ids.get(QOS_KEY) {
        None => 0,
        Some(text) => text
            .parse::<u8>()
            .ok()
            .filter(|q| *q <= 7)
            .ok_or_else(|| bad(QOS_KEY, text, "not a priority (0..=7)"))?,
    };
    let flag = |key: &str, default: bool| -> Result<bool, EmulatedNicError> {
        match external_ids.get(key).map(String::as_str) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(bad(key, other, "neither true nor false")),
        }
    };
    Ok(PfVfSettings {
        mac: mac.filter(|m| m.0 != [0; 6]),
        vlan,
        qos,
        spoofchk: Some(flag(SPOOFCHK_KEY, true)?),
        trust: Some(flag(TRUST_KEY, false)?),
    })
}

/// The representor's new tag and `external_ids` for `settings` (pure):
/// VLAN and priority always, MAC, spoof check and trust when given (kept
/// otherwise); other keys of `external_ids` are kept.
pub fn port_update(
    pf: &str,
    index: u16,
    settings: &PfVfSettings,
    external_ids: &BTreeMap<String, String>,
) -> Result<(Option<u16>, BTreeMap<String, String>), EmulatedNicError> {
    let range =
        |field: &'static str, value: u16, range: &'static str| EmulatedNicError::OutOfRange {
            pf: pf.to_owned(),
            index,
            field,
            value,
            range,
        };
    if settings.vlan > 4094 {
        return Err(range("vlan", settings.vlan, "0 (untagged) or 1..=4094"));
    }
    if settings.qos > 7 {
        return Err(range("qos", u16::from(settings.qos), "0..=7"));
    }
    let mut ids = external_ids.clone();
    if let Some(mac) = settings.mac {
        ids.insert(MAC_KEY.to_owned(), mac.to_string());
    }
    ids.insert(QOS_KEY.to_owned(), settings.qos.to_string());
    if let Some(on) = settings.spoofchk {
        ids.insert(SPOOFCHK_KEY.to_owned(), on.to_string());
    }
    if let Some(on) = settings.trust {
        ids.insert(TRUST_KEY.to_owned(), on.to_string());
    }
    let tag = (settings.vlan != 0).then_some(settings.vlan);
    Ok((tag, ids))
}

/// [`PfDriver`] of the harness's emulated NICs (see the module doc), over
/// the node's OVSDB.
#[derive(Clone, Debug)]
pub struct EmulatedPf {
    client: Client,
}

impl EmulatedPf {
    /// The driver over the node's OVSDB connection.
    pub fn new(client: Client) -> EmulatedPf {
        EmulatedPf { client }
    }

    /// The representor's Port row (uuid, tag, external_ids), checked to
    /// be a port of bridge `pf`.
    async fn representor_row(&self, pf: &str, index: u16) -> Result<Row, EmulatedNicError> {
        let port = representor(pf, index);
        let db = |source: OvsdbError| EmulatedNicError::Ovsdb {
            pf: pf.to_owned(),
            index,
            source,
        };
        let ops = [
            Operation::select(
                "Port",
                vec![Condition::eq("name", port.as_str())],
                &["_uuid", "tag", "external_ids"],
            ),
            Operation::select("Bridge", vec![Condition::eq("name", pf)], &["ports"]),
        ];
        let results = self.client.transact(OVS_DB, &ops).await.map_err(db)?;
        let nth = |i: usize| {
            results.get(i).ok_or_else(|| {
                db(OvsdbError::Malformed(
                    "transact returned too few results".into(),
                ))
            })
        };
        let port_row = result_rows(nth(0)?).map_err(db)?.into_iter().next();
        let bridge = result_rows(nth(1)?).map_err(db)?.into_iter().next();
        let Some(bridge) = bridge else {
            return Err(EmulatedNicError::NoBridge { pf: pf.to_owned() });
        };
        let no_port = || EmulatedNicError::NoRepresentor {
            pf: pf.to_owned(),
            index,
            port: port.clone(),
        };
        let row = port_row.ok_or_else(no_port)?;
        let on_bridge = row_uuid(&row).is_some_and(|uuid| {
            bridge
                .get("ports")
                .is_some_and(|ports| ports.as_uuid_set().contains(&uuid))
        });
        if !on_bridge {
            return Err(no_port());
        }
        Ok(row)
    }

    async fn read(&self, pf: &str, index: u16) -> Result<PfVfSettings, EmulatedNicError> {
        let row = self.representor_row(pf, index).await?;
        let tag = row.get("tag").and_then(Datum::as_optional_integer);
        let ids = row
            .get("external_ids")
            .map(Datum::as_string_map)
            .unwrap_or_default();
        settings_of_port(pf, index, tag, &ids)
    }

    async fn write(
        &self,
        pf: &str,
        index: u16,
        settings: &PfVfSettings,
    ) -> Result<(), EmulatedNicError> {
        let row = self.representor_row(pf, index).await?;
        let ids = row
            .get("external_ids")
            .map(Datum::as_string_map)
            .unwrap_or_default();
        let (tag, ids) = port_update(pf, index, settings, &ids)?;
        let uuid = row_uuid(&row).ok_or_else(|| EmulatedNicError::Ovsdb {
            pf: pf.to_owned(),
            index,
            source: OvsdbError::Malformed("Port row without _uuid".into()),
        })?;
        let tag = match tag {
            Some(t) => Datum::from(i64::from(t)),
            None => Datum::empty_set(),
        };
        let ops = [Operation::update(
            "Port",
            vec![Condition::uuid(&uuid)],
            Row::from([
                ("tag".to_owned(), tag),
                ("vlan_mode".to_owned(), Datum::from("access")),
                ("external_ids".to_owned(), Datum::string_map(&ids)),
            ]),
        )];
        self.client
            .transact(OVS_DB, &ops)
            .await
            .map_err(|source| EmulatedNicError::Ovsdb {
                pf: pf.to_owned(),
                index,
                source,
            })?;
        debug!(pf, index, vlan = settings.vlan, port = %representor(pf, index),
            "set VF on the emulated PF");
        Ok(())
    }
}

impl PfDriver for EmulatedPf {
    fn get<'a>(
        &'a self,
        pf: &'a str,
        index: u16,
    ) -> BoxFuture<'a, Result<PfVfSettings, NetdevError>> {
        Box::pin(async move {
            self.read(pf, index)
                .await
                .map_err(|e| e.into_netdev(&format!("read VF {index} of emulated PF {pf}")))
        })
    }

    fn set<'a>(
        &'a self,
        pf: &'a str,
        index: u16,
        settings: &'a PfVfSettings,
    ) -> BoxFuture<'a, Result<(), NetdevError>> {
        Box::pin(async move {
            self.write(pf, index, settings)
                .await
                .map_err(|e| e.into_netdev(&format!("set VF {index} of emulated PF {pf}")))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ids(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_untouched_representor_reads_as_a_fresh_vf() {
        let s = settings_of_port("ens1f0", 3, None, &BTreeMap::new()).unwrap();
        assert_eq!(
            s,
            PfVfSettings {
                mac: None,
                vlan: 0,
                qos: 0,
                spoofchk: Some(true),
                trust: Some(false),
            }
        );
        assert_eq!(representor("ens1f0", 3), "ens1f0r3");
    }

    #[test]
    fn settings_round_trip_through_the_port() {
        let want = PfVfSettings {
            mac: Some(Mac([0x02, 0, 0, 0, 0, 7])),
            vlan: 100,
            qos: 5,
            spoofchk: Some(false),
            trust: Some(true),
        };
        let before = ids(&[("spur-hil/vf", "3")]);
        let (tag, after) = port_update("p", 3, &want, &before).unwrap();
        assert_eq!(tag, Some(100));
        assert_eq!(after.get("spur-hil/vf").map(String::as_str), Some("3"));
        let got = settings_of_port("p", 3, tag.map(i64::from), &after).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn what_is_not_given_is_kept_and_vlan_zero_untags() {
        let first = PfVfSettings {
            mac: Some(Mac([0x02, 0, 0, 0, 0, 7])),
            vlan: 200,
            qos: 1,
            spoofchk: Some(false),
            trust: Some(true),
        };
        let (_, ids1) = port_update("p", 0, &first, &BTreeMap::new()).unwrap();
        let restore = PfVfSettings {
            mac: None,
            vlan: 0,
            qos: 0,
            spoofchk: None,
            trust: None,
        };
        let (tag, ids2) = port_update("p", 0, &restore, &ids1).unwrap();
        assert_eq!(tag, None, "VLAN 0 removes the tag");
        let got = settings_of_port("p", 0, None, &ids2).unwrap();
        assert_eq!(got.mac, first.mac, "MAC kept");
        assert_eq!(got.qos, 0);
        assert_eq!((got.spoofchk, got.trust), (Some(false), Some(true)));
    }

    #[test]
    fn out_of_range_values_are_refused_naming_pf_vf_and_field() {
        let e = port_update(
            "ens1f0",
            2,
            &PfVfSettings {
                vlan: 4095,
                ..Default::default()
            },
            &BTreeMap::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("ens1f0") && e.contains("VF 2") && e.contains("vlan 4095"),
            "{e}"
        );
        let e = port_update(
            "ens1f0",
            2,
            &PfVfSettings {
                qos: 8,
                ..Default::default()
            },
            &BTreeMap::new(),
        )
        .unwrap_err()
        .into_netdev("set");
        assert!(
            matches!(e, NetdevError::InvalidSpec { ref field, .. } if field == "qos"),
            "{e:?}"
        );
    }

    #[test]
    fn garbled_records_name_the_port_key_and_value() {
        let e = settings_of_port("p", 1, None, &ids(&[(TRUST_KEY, "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pr1") && e.contains(TRUST_KEY) && e.contains("maybe"),
            "{e}"
        );
        let e = settings_of_port("p", 1, Some(5000), &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("tag") && e.contains("5000"), "{e}");
        let e = settings_of_port("p", 1, None, &ids(&[(MAC_KEY, "zz")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(MAC_KEY) && e.contains("zz"), "{e}");
    }
}
