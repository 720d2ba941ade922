//! The agent's life after construction, shared by the `spur-agent run`
//! binary and the simulator (one sequence, no copy of it elsewhere):
//!
//! 1. [`start_up`]: wait for the API caches (the cluster's reflectors, a
//!    future the caller passes, e.g. [`super::cluster::KubeCluster::wait_ready`],
//!    and the IPAM cache), bring the configured bridges to their spec (an
//!    error is logged and retried every resync: the agent still serves,
//!    and `STATUS` / `/readyz` say why it is not ready), and sweep the
//!    ports left by Pods that went while the agent was down;
//! 2. the caller starts serving CNI requests (the binary binds its unix
//!    socket, see [`super::server`]; the simulator routes its kubelet's
//!    calls to [`Agent::handle`]);
//! 3. [`super::sweep::run_periodic`]: every resync period, take the newest
//!    config from a [`ConfigSource`], reconcile the bridges, sweep stale
//!    ports and settle left-over IPAM work.
//!
//! [`run`] does the three in order, with step 2 a callback.
//!
//! The config's origin is a [`ConfigSource`]: the binary re-reads its
//! config file (a mounted ConfigMap) every resync; the simulator pushes new
//! configs into a [`tokio::sync::watch`] channel and so does no file I/O;
//! tests may keep the config fixed.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use spur_core::config::AgentConfig;
use tokio::sync::watch;

use super::sweep::run_periodic;
use super::Agent;

/// Where the agent's `spur-agent.conf` comes from after start-up; asked
/// once per resync.
#[derive(Debug)]
pub enum ConfigSource {
    /// The config the agent was built with never changes.
    Fixed,
    /// A file (the mounted ConfigMap), read and parsed every resync; a
    /// file that cannot be read or parsed keeps the config in force (with
    /// a warning).
    File(PathBuf),
    /// The newest value sent on the channel, applied at the first resync
    /// after it was sent; once the sender is gone the config stays as it
    /// is.
    Watch(watch::Receiver<AgentConfig>),
}

impl ConfigSource {
    /// A source fed through the returned sender, starting from `initial`
    /// (already in force: only later sends are applied).
    pub fn channel(initial: AgentConfig) -> (watch::Sender<AgentConfig>, ConfigSource) {
        let (tx, rx) = watch::channel(initial);
        (tx, ConfigSource::Watch(rx))
    }

    /// The config to put in force now: `None` keeps the current one.
    pub fn poll(&mut self) -> Option<AgentConfig> {
        match self {
            ConfigSource::Fixed => None,
            ConfigSource::File(path) => match read_config_file(path) {
                Ok(cfg) => Some(cfg),
                Err(e) => {
                    tracing::warn!(error = %e, "config not reloaded");
                    None
                }
            },
            ConfigSource::Watch(rx) => match rx.has_changed() {
                Ok(true) => Some(rx.borrow_and_update().clone()),
                Ok(false) | Err(_) => None,
            },
        }
    }
}

/// Reads and parses `spur-agent.conf` at `path`; the error names the file.
pub fn read_config_file(path: &std::path::Path) -> Result<AgentConfig, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    AgentConfig::from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// What [`start_up`] did (each also logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartUp {
    /// The first bridge reconciliation.
    pub bridges: Result<(), String>,
    /// The first stale-port sweep: how many ports it removed.
    pub swept: Result<usize, String>,
}

/// Step 1 (see the module doc): waits for `cluster_ready` and the IPAM
/// cache, ensures the bridges, sweeps stale ports. Failures of the last two
/// are logged and reported, not fatal: every resync retries them.
pub async fn start_up(agent: &Agent, cluster_ready: impl Future<Output = ()>) -> StartUp {
    tracing::info!(node = %agent.node(), "waiting for the API caches");
    cluster_ready.await;
    agent.ipam().cache().wait_ready().await;
    let bridges = agent.ensure_bridges().await;
    if let Err(e) = &bridges {
        tracing::error!(error = %e, "secondary bridges not set up; retrying every resync");
    }
    let swept = agent.sweep_stale().await;
    match &swept {
        Ok(n) => tracing::info!(removed = n, "state rebuilt from OVSDB and the API"),
        Err(e) => tracing::warn!(error = %e, "stale-port sweep failed; retrying every resync"),
    }
    if let Err(e) = agent.recover_vfs().await {
        tracing::warn!(error = %e, "giving back VFs left on the node failed; retrying every resync");
    }
    StartUp { bridges, swept }
}

/// The whole sequence (see the module doc): [`start_up`], then `serve`
/// (which starts serving CNI requests and returns at once), then
/// [`run_periodic`] every `resync` with the config from `source`. Returns
/// only when `serve` fails, with its error.
pub async fn run<E>(
    agent: Arc<Agent>,
    cluster_ready: impl Future<Output = ()>,
    source: ConfigSource,
    resync: Duration,
    serve: impl FnOnce() -> Result<(), E>,
) -> E {
    start_up(&agent, cluster_ready).await;
    if let Err(e) = serve() {
        return e;
    }
    match run_periodic(agent, source, resync).await {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::cluster::KubeCluster;
    use crate::agent::AgentSettings;
    use crate::fake::{FakeLinks, FakeSwitch};
    use crate::ipam::{Ipam, IpamConfig};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, PostParams};
    use kube::{Client, CustomResourceExt};
    use spur_core::ipamblock::IPAMBlock;
    use spur_core::ippool::IPPool;

    const ONE_BRIDGE: &str =
        "secondaryNetwork:\n  ovsBridges: [{bridgeName: br-sec, physicalInterfaces: [eth1]}]\n";

    fn conf(yaml: &str) -> AgentConfig {
        AgentConfig::from_yaml(yaml).unwrap()
    }

    #[test]
    fn sources_yield_only_what_is_new() {
        assert_eq!(ConfigSource::Fixed.poll(), None);
        let (tx, mut src) = ConfigSource::channel(conf("{}"));
        assert_eq!(src.poll(), None, "the initial config is already in force");
        tx.send_replace(conf(ONE_BRIDGE));
        assert_eq!(src.poll(), Some(conf(ONE_BRIDGE)));
        assert_eq!(src.poll(), None, "applied once");
        drop(tx);
        assert_eq!(src.poll(), None, "a closed channel keeps the config");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spur-agent.conf");
        let mut file = ConfigSource::File(path.clone());
        assert_eq!(file.poll(), None, "a missing file keeps the config");
        std::fs::write(&path, ONE_BRIDGE).unwrap();
        assert_eq!(file.poll(), Some(conf(ONE_BRIDGE)));
        std::fs::write(&path, "secondaryNetwork: [").unwrap();
        assert_eq!(file.poll(), None, "a broken file keeps the config");
        let e = read_config_file(&path).unwrap_err();
        assert!(e.contains("spur-agent.conf"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pushed_config_is_in_force_at_the_next_resync() {
        let server = spur_kubeapi::ApiServer::in_memory();
        let client = Client::new(server.service(), "default");
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in [IPPool::crd(), IPAMBlock::crd()] {
            crds.create(&PostParams::default(), &crd).await.unwrap();
        }
        let cluster = KubeCluster::start_with(client.clone(), "node-a", Some(3));
        let ipam = Ipam::start(
            client,
            IpamConfig {
                seed: Some(3),
                ..Default::default()
            },
        );
        let switch = Arc::new(FakeSwitch::new());
        let agent = Arc::new(Agent::new(
            AgentSettings {
                node: "node-a".into(),
                datapath: "netdev".into(),
            },
            conf("{}"),
            ipam,
            Arc::new(cluster.clone()),
            switch.clone(),
            Arc::new(FakeLinks::new()),
        ));
        let (tx, source) = ConfigSource::channel(conf("{}"));
        let started = start_up(&agent, cluster.wait_ready()).await;
        assert_eq!(
            started,
            StartUp {
                bridges: Ok(()),
                swept: Ok(0)
            }
        );
        assert!(agent.not_ready_reason().is_none());

        let period = Duration::from_secs(30);
        let t0 = tokio::time::Instant::now();
        let resync = tokio::spawn(run_periodic(agent.clone(), source, period));
        tx.send_replace(conf(ONE_BRIDGE));
        tokio::time::sleep_until(t0 + period - Duration::from_secs(1)).await;
        assert!(agent.bridge_names().is_empty(), "not before the resync");
        assert!(switch.bridges().is_empty());
        tokio::time::sleep_until(t0 + period + Duration::from_secs(1)).await;
        assert_eq!(agent.bridge_names(), vec!["br-sec".to_string()]);
        assert!(switch.bridges().contains_key("br-sec"));
        resync.abort();
    }
}
