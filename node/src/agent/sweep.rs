//! Level-driven clean-up: what is on the switch is compared with what
//! should be, and the difference removed. It runs when the agent starts
//! (rebuilding its view of the node from OVSDB and the API after a
//! restart), then periodically, and for CNI GC.
//!
//! A Pod's access port is stale when its sandbox is gone (the netns path
//! recorded in the port no longer exists) or its Pod is gone (the API,
//! asked directly rather than through a cache that may lag, says there is
//! no such Pod, or that the Pod with that name now runs on another node;
//! the API is asked only about Pods the node's cache does not hold, so a
//! pass over a healthy node reads nothing from the API).
//! A stale port is removed with its veth, and the addresses of its
//! interface are released. A live Pod's sandbox netns exists and its Pod
//! exists, so its addresses are never released here.
//!
//! SR-IOV VFs have no port: a VF whose Pod netns went away is back in the
//! node's namespace (the kernel moves a physical device home rather than
//! deleting it), under the Pod's interface name and still carrying the
//! Spur record in its alias. [`Agent::recover_vfs`] finds such VFs and
//! restores the PF's settings and the VF's name from that record; it runs
//! with every sweep and with every DEL. The addresses of such an interface
//! are released by the sandbox's DEL (by its container ID), taken over by
//! the Pod's next sandbox, or collected by the controller once the Pod is
//! gone.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use spur_core::attach::host_port_name;
use spur_core::ipamblock::OwnerKey;

use super::run::ConfigSource;
use super::{port_keys, Agent};
use crate::ovsdb::switch::{ROLE_ACCESS, ROLE_KEY};
use crate::ovsdb::PortInfo;

impl Agent {
    /// Every access port Spur made, on every bridge of the switch, with its
    /// bridge, sorted by bridge and port name (so every pass acts in the
    /// same order); and what could not be read (one sentence each).
    pub(crate) async fn access_ports(&self) -> (Vec<(String, PortInfo)>, Vec<String>) {
        let mut errors = Vec::new();
        let mut bridges = self.port_bridges().await.unwrap_or_else(|e| {
            errors.push(e);
            self.bridge_names()
        });
        bridges.sort();
        bridges.dedup();
        let mut out = Vec::new();
        for bridge in bridges {
            match self.switch.list_ports(&bridge).await {
                Ok(ports) => {
                    let mut ports: Vec<PortInfo> = ports
                        .into_iter()
                        .filter(|p| {
                            p.external_ids.get(ROLE_KEY).map(String::as_str) == Some(ROLE_ACCESS)
                        })
                        .collect();
                    // The switch's order is its own (OVSDB's is a hash
                    // order): act on ports in name order.
                    ports.sort_by(|a, b| a.name.cmp(&b.name));
                    out.extend(ports.into_iter().map(|p| (bridge.clone(), p)));
                }
                Err(crate::ovsdb::SwitchError::NoSuchBridge(_)) => {}
                Err(e) => errors.push(format!("listing ports of bridge {bridge}: {e}")),
            }
        }
        (out, errors)
    }

    /// Removes every Spur access port of the switch for which
    /// `stale(external_ids)` holds, with its link and addresses. Returns
    /// how many ports were removed.
    pub async fn sweep_ports(
        &self,
        stale: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> Result<usize, String> {
        let (ports, errors) = self.access_ports().await;
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        let gone: Vec<(String, PortInfo)> = ports
            .into_iter()
            .filter(|(_, p)| stale(&p.external_ids))
            .collect();
        self.remove_ports(&gone).await
    }

    async fn remove_ports(&self, gone: &[(String, PortInfo)]) -> Result<usize, String> {
        for (bridge, p) in gone {
            self.remove_port_of(bridge, &p.name, &p.external_ids)
                .await?;
            self.metrics.add_stale_ports_removed(1);
        }
        Ok(gone.len())
    }

    async fn remove_port_of(
        &self,
        bridge: &str,
        port: &str,
        ids: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        let get = |k: &str| ids.get(k).cloned().unwrap_or_default();
        let (ns, pod, cid, ifname) = (
            get(port_keys::POD_NAMESPACE),
            get(port_keys::POD_NAME),
            get(port_keys::CONTAINER_ID),
            get(port_keys::INTERFACE),
        );
        tracing::info!(bridge, port, pod = %format!("{ns}/{pod}"), container = %cid, interface = %ifname, "removing a stale Pod port");
        self.switch
            .remove_port(bridge, port)
            .await
            .map_err(|e| format!("removing port {port} of bridge {bridge}: {e}"))?;
        let host = host_port_name(&cid, &ifname);
        self.links
            .delete_host_link(&host)
            .await
            .map_err(|e| format!("deleting link {host}: {e}"))?;
        let key = OwnerKey::Pod(ns, pod, cid, ifname);
        self.ipam
            .release(&key)
            .await
            .map_err(|e| format!("releasing the addresses of port {port}: {e}"))?;
        Ok(())
    }

    /// One pass of the stale-port sweep (see the module doc). Returns how
    /// many ports were removed.
    pub async fn sweep_stale(&self) -> Result<usize, String> {
        // Decide first (API reads), then remove.
        let (ports, errors) = self.access_ports().await;
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        let mut gone = Vec::new();
        for (bridge, p) in ports {
            if self.port_is_stale(&p.external_ids).await? {
                gone.push((bridge, p));
            }
        }
        self.remove_ports(&gone).await
    }

    /// Gives back every VF that is in the agent's namespace with a Spur
    /// record on it: a VF whose Pod namespace went away without a DEL
    /// (the kernel brings it home under the Pod's interface name) or that
    /// an interrupted ADD left labelled. The PF's settings are restored
    /// from the record first, then the VF's name, and the record is
    /// cleared last, so an interrupted recovery is finished by the next
    /// one. VFs an ADD is working on are skipped. Returns how many VFs
    /// were given back.
    pub async fn recover_vfs(&self) -> Result<usize, String> {
        let Some(b) = &self.sriov else {
            return Ok(0);
        };
        let host = b
            .vfs
            .host_vfs()
            .await
            .map_err(|e| format!("listing the VFs of the node: {e}"))?;
        let mut errors = Vec::new();
        let mut restored = 0;
        for (_, listed) in host {
            let Some(_claim) = self.claim_vf(listed.pci) else {
                continue;
            };
            // The list was read before the claim: since then another
            // recovery or an ADD may have given the VF back, and an ADD
            // may have set it up for its Pod. Its old record would put the
            // PF's settings back under that Pod: read it again, now that
            // nobody else acts on it.
            let now = match b.vfs.host_vfs().await {
                Ok(now) => now,
                Err(e) => {
                    errors.push(format!("reading VF {} again: {e}", listed.pci));
                    continue;
                }
            };
            let Some((netdev, record)) = still_labelled(now, &listed) else {
                tracing::debug!(pci = %listed.pci, name = %listed.name,
                    "VF no longer left on the node: already given back");
                continue;
            };
            match self.give_back_host_vf(b, &netdev, &record).await {
                Ok(true) => restored += 1,
                Ok(false) => {}
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(restored)
        } else {
            Err(errors.join("; "))
        }
    }

    /// Gives back one labelled VF of the host (the caller holds its
    /// claim, and read `netdev` and `record` from the host after taking
    /// it: a record read before may be that of a VF already given back and
    /// handed to a Pod since): the PF's settings from `record`, then the
    /// VF's name, the label last. `Ok(false)` when the VF was no longer
    /// there labelled.
    pub(crate) async fn give_back_host_vf(
        &self,
        b: &super::SriovBackends,
        netdev: &str,
        record: &crate::sriov::vf::VfRecord,
    ) -> Result<bool, String> {
        if let Some((pf, index)) = &record.parent {
            b.vfs
                .set_pf_settings(pf, *index, &record.pf.to_restore())
                .await
                .map_err(|e| format!("restoring VF {index} of {pf} ({}): {e}", record.pci))?;
        }
        match b.vfs.restore_host_vf(netdev).await {
            Ok(Some(_)) => {
                tracing::info!(netdev = %netdev, name = %record.name, pci = %record.pci,
                    "gave back a VF that a Pod's sandbox or an ADD left on the node");
                self.metrics.add_vfs_recovered(1);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(format!("giving back VF {} ({netdev}): {e}", record.pci)),
        }
    }

    async fn port_is_stale(&self, ids: &BTreeMap<String, String>) -> Result<bool, String> {
        let netns = ids.get(port_keys::NETNS).map(String::as_str).unwrap_or("");
        if netns.is_empty() || !self.links.netns_exists(Path::new(netns)).await {
            return Ok(true);
        }
        let (Some(ns), Some(name)) = (
            ids.get(port_keys::POD_NAMESPACE),
            ids.get(port_keys::POD_NAME),
        ) else {
            return Ok(false);
        };
        // The cache answers for the Pods that are here (no API read per
        // port and pass); only a Pod the cache does not have is asked of
        // the API before anything is freed.
        if self
            .cluster
            .cached_pod(ns, name)
            .is_some_and(|p| p.node.as_deref() == Some(self.node()))
        {
            return Ok(false);
        }
        match self.cluster.pod_fresh(ns, name).await {
            Ok(None) => Ok(true),
            Ok(Some(p)) => Ok(p.node.as_deref().is_some_and(|n| n != self.node())),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The entry of the VF `listed` names (by PCI address) in `now`, a fresh
/// reading of the host's labelled VFs: `None` when that VF is no longer in
/// the host with a Spur record (given back, or moved into a Pod since
/// `listed` was read).
fn still_labelled(
    now: Vec<(String, crate::sriov::vf::VfRecord)>,
    listed: &crate::sriov::vf::VfRecord,
) -> Option<(String, crate::sriov::vf::VfRecord)> {
    now.into_iter().find(|(_, r)| r.pci == listed.pci)
}

/// Runs the bridge reconciliation and the stale sweep every `period`
/// (level-driven: each pass compares the whole state), first taking the
/// newest config from `source` (see [`ConfigSource`]) so that a changed
/// `spur-agent.conf` (a ConfigMap update) takes effect without a restart.
/// Never returns; the first pass runs one `period` after the call.
pub async fn run_periodic(
    agent: Arc<Agent>,
    mut source: ConfigSource,
    period: Duration,
) -> std::convert::Infallible {
    loop {
        tokio::time::sleep(period).await;
        resync_once(&agent, &mut source).await;
    }
}

/// One pass of [`run_periodic`]: config, bridges, stale ports, IPAM work
/// left over. Failures are logged; the next pass retries.
pub async fn resync_once(agent: &Agent, source: &mut ConfigSource) {
    if let Some(cfg) = source.poll() {
        agent.set_config(cfg);
    }
    if let Err(e) = agent.ensure_bridges().await {
        tracing::warn!(error = %e, "bridges not in spec");
    }
    match agent.sweep_stale().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "stale Pod ports removed"),
        Err(e) => tracing::warn!(error = %e, "stale-port sweep failed"),
    }
    if let Err(e) = agent.recover_vfs().await {
        tracing::warn!(error = %e, "giving back VFs left on the node failed");
    }
    if let Err(e) = agent.ipam().settle().await {
        tracing::debug!(error = %e, "IPAM work left over");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failure

    use super::still_labelled;
    use crate::sriov::vf::{PfVfSettings, VfRecord};

    fn record(name: &str, pci: &str, vlan: u16) -> VfRecord {
        VfRecord {
            name: name.into(),
            pci: pci.parse().unwrap(),
            parent: Some(("ens1f0".into(), 1)),
            pf: PfVfSettings {
                vlan,
                ..PfVfSettings::default()
            },
        }
    }

    #[test]
    fn a_vf_given_back_since_the_listing_is_left_alone() {
        let listed = record("ens1f0v1", "0000:3b:02.1", 0);
        let other = record("ens1f0v0", "0000:3b:02.0", 0);
        assert_eq!(still_labelled(vec![("eth1".into(), other)], &listed), None);
        assert_eq!(still_labelled(Vec::new(), &listed), None);
    }

    #[test]
    fn the_fresh_reading_wins_over_the_listing() {
        // Given back and labelled again by an ADD that died: the name and
        // the record are today's, not the listing's.
        let listed = record("ens1f0v1", "0000:3b:02.1", 0);
        let now = record("ens1f0v1", "0000:3b:02.1", 42);
        assert_eq!(
            still_labelled(vec![("net1".into(), now.clone())], &listed),
            Some(("net1".into(), now))
        );
    }
}
