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

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use spur_core::attach::host_port_name;
use spur_core::ipamblock::OwnerKey;

use super::{port_keys, Agent};
use crate::ovsdb::switch::{ROLE_ACCESS, ROLE_KEY};

impl Agent {
    /// Removes every Spur access port of the configured bridges for which
    /// `stale(external_ids)` holds, with its link and addresses. Returns
    /// how many ports were removed.
    pub async fn sweep_ports(
        &self,
        stale: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> Result<usize, String> {
        let mut removed = 0;
        for bridge in self.port_bridges().await? {
            let ports = match self.switch.list_ports(&bridge).await {
                Ok(p) => p,
                Err(crate::ovsdb::SwitchError::NoSuchBridge(_)) => continue,
                Err(e) => return Err(format!("listing ports of bridge {bridge}: {e}")),
            };
            for p in ports {
                let ids = &p.external_ids;
                if ids.get(ROLE_KEY).map(String::as_str) != Some(ROLE_ACCESS) || !stale(ids) {
                    continue;
                }
                self.remove_port_of(&bridge, &p.name, ids).await?;
                self.metrics.add_stale_ports_removed(1);
                removed += 1;
            }
        }
        Ok(removed)
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
        let mut gone: Vec<BTreeMap<String, String>> = Vec::new();
        for bridge in self.port_bridges().await? {
            let ports = match self.switch.list_ports(&bridge).await {
                Ok(p) => p,
                Err(crate::ovsdb::SwitchError::NoSuchBridge(_)) => continue,
                Err(e) => return Err(format!("listing ports of bridge {bridge}: {e}")),
            };
            for p in ports {
                let ids = p.external_ids;
                if ids.get(ROLE_KEY).map(String::as_str) != Some(ROLE_ACCESS) {
                    continue;
                }
                if self.port_is_stale(&ids).await? {
                    gone.push(ids);
                }
            }
        }
        let is_gone = |ids: &BTreeMap<String, String>| gone.iter().any(|g| g == ids);
        self.sweep_ports(is_gone).await
    }

    async fn port_is_stale(&self, ids: &BTreeMap<String, String>) -> Result<bool, String> {
        let netns = ids.get(port_keys::NETNS).map(String::as_str).unwrap_or("");
        if netns.is_empty() || !Path::new(netns).exists() {
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

/// Runs the bridge reconciliation and the stale sweep every `period`
/// (level-driven: each pass compares the whole state), re-reading the
/// config file first when `config_file` is given so that a changed
/// `spur-agent.conf` (a ConfigMap update) takes effect without a restart.
pub async fn run_periodic(
    agent: Arc<Agent>,
    config_file: Option<std::path::PathBuf>,
    period: Duration,
) {
    loop {
        tokio::time::sleep(period).await;
        if let Some(path) = &config_file {
            match std::fs::read_to_string(path) {
                Ok(text) => match spur_core::config::AgentConfig::from_yaml(&text) {
                    Ok(cfg) => agent.set_config(cfg),
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "config not reloaded")
                    }
                },
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "config not read"),
            }
        }
        if let Err(e) = agent.ensure_bridges().await {
            tracing::warn!(error = %e, "bridges not in spec");
        }
        match agent.sweep_stale().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "stale Pod ports removed"),
            Err(e) => tracing::warn!(error = %e, "stale-port sweep failed"),
        }
        if let Err(e) = agent.ipam().settle().await {
            tracing::debug!(error = %e, "IPAM work left over");
        }
    }
}
