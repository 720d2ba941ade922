//! `spur-agent`: Spur's node agent.
//!
//! ```text
//! spur-agent run --node-name NODE [--config FILE] [--kubeconfig FILE]
//!                [--cni-socket PATH] [--ovsdb PATH] [--datapath netdev|system]
//!                [--metrics-addr HOST:PORT] [--sysfs-root DIR]
//!                [--pod-resources-socket PATH] [--sriov-emulated-nics]
//! spur-agent ipam show POOL [--kubeconfig FILE]
//! spur-agent install-cni [--plugin-src PATH] [--cni-bin-dir DIR]
//!                        [--cni-conf-dir DIR] [--mode native|multus]
//!                        [--uninstall] [--wait-seconds N]
//! ```
//!
//! `run` is the DaemonSet's long-running process (see `spur_node::agent`);
//! `ipam show` lists who holds which address of an IPPool; `install-cni`
//! is the DaemonSet's init container (see `install_cni`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[path = "spur-agent/install_cni.rs"]
mod install_cni;

#[derive(Parser, Debug)]
#[command(name = "spur-agent", version, about = "Spur's node agent")]
struct Cli {
    /// Kubeconfig file (default: in-cluster, $KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the node agent: serves the spur CNI plugin until SIGTERM.
    Run(RunArgs),
    /// IP address management.
    #[command(subcommand)]
    Ipam(IpamCommand),
    /// Installs the spur plugin into the CNI binary directory and, in
    /// native mode, chains it into the primary CNI's conflist.
    InstallCni(install_cni::InstallArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// This node's name (the Pods with this spec.nodeName are served).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// spur-agent.conf (the ConfigMap key, mounted as a file); without it,
    /// no secondary bridge is configured.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The socket the spur plugin dials (default: the config's cniSocket).
    #[arg(long, value_name = "PATH")]
    cni_socket: Option<PathBuf>,
    /// The OVSDB server's unix socket (default: db.sock in the config's
    /// ovsRunDir).
    #[arg(long, value_name = "PATH")]
    ovsdb: Option<PathBuf>,
    /// The OVS datapath of the bridges (default: system when the kernel has
    /// the openvswitch module, else netdev).
    #[arg(long, value_parser = ["netdev", "system"])]
    datapath: Option<String>,
    /// Seconds between two passes of the bridge and stale-port
    /// reconciliation.
    #[arg(long, default_value_t = 30)]
    resync_seconds: u64,
    /// Where to serve /metrics, /healthz and /readyz (HTTP); empty
    /// disables them.
    #[arg(long, env = "SPUR_METRICS_ADDR", value_name = "HOST:PORT",
          default_value = spur_node::agent::metrics::DEFAULT_ADDR)]
    metrics_addr: String,
    /// Where sysfs is mounted for SR-IOV discovery (PFs, VFs, their PCI
    /// addresses and netdevs under DIR/sys/...); a test harness points it
    /// at an emulated tree.
    #[arg(long, value_name = "DIR", default_value = "/")]
    sysfs_root: PathBuf,
    /// The kubelet's PodResources socket: which VFs the kubelet gave each
    /// Pod (native mode).
    #[arg(long, value_name = "PATH",
          default_value = spur_node::podresources::DEFAULT_SOCKET)]
    pod_resources_socket: PathBuf,
    /// The PFs are the hardware harness's emulated NICs (an OVS bridge per
    /// PF in this node's OVS, a representor access port `{PF}r{k}` per VF)
    /// instead of real SR-IOV NICs: VF VLAN, MAC, QoS, spoof check and
    /// trust are kept on the representor ports instead of being set
    /// through the PF with netlink. For spur-hil, not for real nodes.
    #[arg(long)]
    sriov_emulated_nics: bool,
}

#[derive(Subcommand, Debug)]
enum IpamCommand {
    /// Lists who holds which address of an IPPool, sorted by address.
    Show {
        /// The IPPool.
        pool: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    use std::io::IsTerminal;
    // Structured events on stderr; `info` unless RUST_LOG says otherwise,
    // colours only on a terminal (a DaemonSet's log is a file).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(cli.kubeconfig, args).await.map(|()| String::new()),
        Command::Ipam(IpamCommand::Show { pool }) => show(cli.kubeconfig, &pool).await,
        Command::InstallCni(args) => tokio::task::spawn_blocking(move || install_cni::run(&args))
            .await
            .unwrap_or_else(|e| Err(format!("install-cni: {e}")))
            .map(|()| String::new()),
    };
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("spur-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn show(kubeconfig: Option<PathBuf>, pool: &str) -> Result<String, String> {
    let client = spur_node::client::connect(kubeconfig.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let report = spur_node::ipam::show::load(client, pool)
        .await
        .map_err(|e| e.to_string())?;
    Ok(spur_node::ipam::show::render(&report))
}

/// The agent's SR-IOV boundaries: sysfs under `--sysfs-root`, the
/// kubelet's PodResources at `--pod-resources-socket` (connected lazily:
/// a node without SR-IOV Pods never dials it), VFs over netlink with the
/// PF settings through netlink or, with `--sriov-emulated-nics`, on the
/// emulated NICs' OVS representor ports.
async fn sriov_backends(
    args: &RunArgs,
    switch: &spur_node::ovsdb::Client,
) -> Result<spur_node::agent::SriovBackends, String> {
    use std::sync::Arc;
    let mut vfs = spur_node::sriov::netlink::RtNetlinkVfs::new()
        .await
        .map_err(|e| format!("netlink (SR-IOV VFs): {e}"))?;
    if args.sriov_emulated_nics {
        tracing::info!("SR-IOV: PFs are emulated NICs (OVS representor ports)");
        vfs = vfs.with_pf_driver(Arc::new(spur_node::sriov::emulated::EmulatedPf::new(
            switch.clone(),
        )));
    }
    tracing::info!(sysfs_root = %args.sysfs_root.display(),
        pod_resources = %args.pod_resources_socket.display(), "SR-IOV discovery");
    Ok(spur_node::agent::SriovBackends {
        sysfs: spur_node::sriov::sysfs::Sysfs::new(&args.sysfs_root),
        pod_resources: Arc::new(spur_node::podresources::KubeletPodResources::connect(
            &args.pod_resources_socket,
        )),
        vfs: Arc::new(vfs),
    })
}

async fn run(kubeconfig: Option<PathBuf>, args: RunArgs) -> Result<(), String> {
    use spur_core::config::AgentConfig;
    use spur_node::agent::run::ConfigSource;
    use spur_node::agent::{self, cluster::KubeCluster, Agent, AgentSettings};
    use std::sync::Arc;

    let config = match &args.config {
        Some(path) => agent::run::read_config_file(path)?,
        None => AgentConfig::from_yaml("{}").map_err(|e| e.to_string())?,
    };
    let socket = args
        .cni_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(&config.cni_socket));
    let ovsdb = args
        .ovsdb
        .clone()
        .unwrap_or_else(|| PathBuf::from(&config.ovs_run_dir).join("db.sock"));
    let metrics_addr = agent::metrics::parse_addr(&args.metrics_addr).map_err(|e| e.to_string())?;
    let datapath = args
        .datapath
        .clone()
        .unwrap_or_else(|| agent::detect_datapath().to_string());
    let client = spur_node::client::connect(kubeconfig.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let switch = spur_node::ovsdb::Client::connect(spur_node::ovsdb::ClientConfig::new(&ovsdb))
        .await
        .map_err(|e| format!("OVSDB {}: {e}", ovsdb.display()))?;
    // Logs every interface ovs-vswitchd fails to attach, as it happens.
    let _attach = spur_node::ovsdb::attach::AttachWatch::start(&switch)
        .await
        .map_err(|e| format!("OVSDB {}: monitoring interfaces: {e}", ovsdb.display()))?;
    let links = spur_node::netdev::RtNetlinkLinks::new()
        .await
        .map_err(|e| format!("netlink: {e}"))?;
    let sriov = sriov_backends(&args, &switch).await?;
    let ipam_config = spur_node::ipam::IpamConfig {
        timeout: std::time::Duration::from_secs(u64::from(config.api_timeout_seconds.max(1))),
        node: Some(args.node_name.clone()),
        ..Default::default()
    };
    let ipam = spur_node::ipam::Ipam::start(client.clone(), ipam_config);
    let cluster = KubeCluster::start(client, &args.node_name);
    let agent = Arc::new(
        Agent::new(
            AgentSettings {
                node: args.node_name.clone(),
                datapath,
            },
            config,
            ipam,
            Arc::new(cluster.clone()),
            Arc::new(switch.clone()),
            Arc::new(links),
        )
        .with_sriov(sriov),
    );
    agent
        .metrics()
        .set_ovsdb_reconnects(move || switch.reconnects());
    // Served from the start: /healthz answers and /readyz says why the
    // agent is not ready while the caches fill.
    let metrics = match metrics_addr {
        Some(addr) => {
            let listener = agent::metrics::bind(addr)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
            Some(tokio::spawn(agent::metrics::serve(listener, agent.clone())))
        }
        None => None,
    };
    let source = match &args.config {
        Some(path) => ConfigSource::File(path.clone()),
        None => ConfigSource::Fixed,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("installing the SIGTERM handler: {e}"))?;
    // The CNI socket is bound once the agent has started up (caches
    // listed, bridges ensured, stale ports swept): until then the plugin
    // cannot connect and reports "try again later".
    let mut server = None;
    let serve = || -> Result<(), String> {
        let listener = agent::server::bind(&socket).map_err(|e| e.to_string())?;
        tracing::info!(socket = %socket.display(), "serving the spur CNI plugin");
        server = Some(tokio::spawn(agent::server::serve(listener, agent.clone())));
        Ok(())
    };
    let running = agent::run::run(
        agent.clone(),
        cluster.wait_ready(),
        source,
        std::time::Duration::from_secs(args.resync_seconds.max(1)),
        serve,
    );
    // Signals first: a stop asked for wins over anything else ready.
    let failed = tokio::select! {
        biased;
        _ = term.recv() => {
            tracing::info!("SIGTERM: stopping");
            None
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted: stopping");
            None
        }
        e = running => Some(e),
    };
    if let Some(s) = server {
        s.abort();
    }
    if let Some(m) = metrics {
        m.abort();
    }
    let _ = std::fs::remove_file(&socket);
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
