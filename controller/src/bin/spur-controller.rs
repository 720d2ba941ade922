//! `spur-controller`: the cluster-level controller of Spur.
//!
//! What lives here: the process edges. Flags (those of
//! deploy/controller.yaml), `spur-controller.conf`, the API connection, the
//! metrics and health server, the admission webhook and signals. The
//! replica itself — leader election on a Lease, the pool gauges and, while
//! it leads, the leader-only loops (IPPool usage, address garbage
//! collection and, when enabled, NodeIPAM), started when leadership is won
//! and stopped when it is lost — is `spur_controller::replica::run_replica`
//! (moved out of this file so the simulator runs the same code). On
//! SIGTERM (or SIGINT) the loops stop, the Lease is released so the other
//! replica takes over at its next try, and the process exits 0.
//!
//! Every replica, leader or not, serves the HTTPS admission webhook
//! (`spur_controller::webhook`: certificate bootstrapped into its Secret
//! and the webhook configuration's caBundle, or cert-manager's from
//! `--webhook-cert-dir`); a webhook that cannot start is retried.
//!
//! An unreachable API does not end the process: the leader steps down at
//! its renew deadline and every replica keeps retrying (a restart would not
//! make the API reachable, and the kube client reconnects by itself);
//! `/healthz` stays 200 and the pool gauges keep their last values.
//!
//! What does not live here: every decision and server (the library
//! modules: `replica`, `leader`, `metrics`, `webhook`, `usage`, `gc`,
//! `nodeipam`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use spur_controller::leader::ElectionConfig;
use spur_controller::metrics::{self, Health, Metrics};
use spur_controller::replica::{run_replica, ReplicaConfig, STOP_TIMEOUT};
use spur_controller::webhook::WebhookConfig;
use spur_core::config::ControllerConfig;
use tokio::sync::watch;

/// How long a failed admission webhook waits before starting again.
const WEBHOOK_RETRY: Duration = Duration::from_secs(10);

/// Spur's controller: admission, IPPool usage, garbage collection and
/// NodeIPAM, leader-elected.
#[derive(Debug, Parser)]
#[command(name = "spur-controller", version)]
struct Args {
    /// spur-controller.conf (YAML; see reference.md).
    #[arg(long, default_value = "/etc/spur/spur-controller.conf")]
    config: PathBuf,
    /// A kubeconfig file (default: in-cluster service account, then
    /// $KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    leader_election_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "spur-controller")]
    leader_election_lease: String,
    /// holderIdentity (default: $POD_NAME, else hostname and pid).
    #[arg(long, env = "POD_NAME")]
    leader_election_identity: Option<String>,
    /// leaseDurationSeconds of the Lease.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    leader_election_lease_duration: u64,
    /// Milliseconds without renewal after which the leader steps down
    /// (below the lease duration).
    #[arg(long, default_value_t = 10_000)]
    leader_election_renew_deadline_ms: u64,
    /// Milliseconds between two election tries.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(10..))]
    leader_election_retry_period_ms: u64,
    /// Port of /metrics, /healthz and /readyz.
    #[arg(long, default_value_t = 8080)]
    metrics_port: u16,
    /// Address the metrics port binds.
    #[arg(long, default_value_t = std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    metrics_address: std::net::IpAddr,
    #[command(flatten)]
    webhook: WebhookArgs,
}

/// The admission webhook's flags (deploy/controller.yaml). Accepted and
/// recorded here; the webhook server uses them.
#[derive(Debug, Clone, clap::Args)]
struct WebhookArgs {
    /// HTTPS port of the admission webhook.
    #[arg(long, default_value_t = 9443)]
    webhook_port: u16,
    /// Address the webhook port binds (all addresses by default; labs bind
    /// their management address).
    #[arg(long, default_value_t = std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    webhook_address: std::net::IpAddr,
    /// Secret (in the controller's namespace) holding the webhook's
    /// certificate.
    #[arg(long, default_value = "spur-webhook-tls")]
    webhook_secret: String,
    /// Service fronting the webhook (the certificate's DNS names).
    #[arg(long, default_value = "spur-webhook")]
    webhook_service: String,
    /// ValidatingWebhookConfiguration whose caBundle is filled.
    #[arg(long, default_value = "spur-webhook")]
    webhook_configuration: String,
    /// cert-manager mode: read tls.crt and tls.key from this directory
    /// instead of bootstrapping the Secret and the caBundle.
    #[arg(long)]
    webhook_cert_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("config {path}: {message}")]
    Config { path: String, message: String },
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("cannot connect to the Kubernetes API: {0}")]
    Client(#[from] kube::Error),
    #[error("leader election: renew deadline {deadline_ms} ms must be below the lease duration {lease_s} s")]
    Timing { deadline_ms: u64, lease_s: u64 },
    #[error("metrics port {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
}

fn read_config(path: &Path) -> Result<ControllerConfig, StartError> {
    let bad = |message: String| StartError::Config {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    ControllerConfig::from_yaml(&text).map_err(|e| bad(e.to_string()))
}

/// A client from `kubeconfig`, or from the environment when `None`.
async fn connect(kubeconfig: Option<&Path>) -> Result<Client, StartError> {
    let Some(path) = kubeconfig else {
        return Ok(Client::try_default().await?);
    };
    let bad = |message: String| StartError::Kubeconfig {
        path: path.display().to_string(),
        message,
    };
    let kc = Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    Ok(Client::try_from(config)?)
}

/// `$POD_NAME` (via the flag), else `hostname-pid`.
fn identity(flag: Option<&str>) -> String {
    if let Some(id) = flag.filter(|s| !s.is_empty()) {
        return id.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "spur-controller".to_string());
    format!("{host}-{}", std::process::id())
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "spur-controller failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let config = read_config(&args.config)?;
    let mut election = ElectionConfig::new(
        &args.leader_election_namespace,
        &args.leader_election_lease,
        &identity(args.leader_election_identity.as_deref()),
    );
    election.lease_duration = Duration::from_secs(args.leader_election_lease_duration);
    election.renew_deadline = Duration::from_millis(args.leader_election_renew_deadline_ms);
    election.retry_period = Duration::from_millis(args.leader_election_retry_period_ms);
    if election.renew_deadline >= election.lease_duration {
        return Err(StartError::Timing {
            deadline_ms: args.leader_election_renew_deadline_ms,
            lease_s: args.leader_election_lease_duration,
        });
    }
    let mut term = signal(SignalKind::terminate()).map_err(StartError::Signal)?;
    let client = connect(args.kubeconfig.as_deref()).await?;

    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let addr = SocketAddr::new(args.metrics_address, args.metrics_port);
    let listener = metrics::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    tokio::spawn(metrics::serve(listener, metrics.clone(), health.clone()));
    tracing::info!(%addr, identity = %election.identity, "serving /metrics, /healthz, /readyz");

    // ---- The admission webhook -------------------------------------------
    // Every replica, leader or not, serves the HTTPS admission webhook; it
    // stops with the rest on SIGTERM. A failure to start it (certificate
    // Secret or webhook configuration not writable, port taken) is logged
    // and retried: IPPool writes fail closed meanwhile, which is safe.
    let (stop_tx, stop_rx) = watch::channel(false);
    let webhook_cfg = WebhookConfig {
        addr: SocketAddr::new(args.webhook.webhook_address, args.webhook.webhook_port),
        namespace: args.leader_election_namespace.clone(),
        secret: args.webhook.webhook_secret.clone(),
        service: args.webhook.webhook_service.clone(),
        configuration: args.webhook.webhook_configuration.clone(),
        cert_dir: args.webhook.webhook_cert_dir.clone(),
    };
    let counted = metrics.clone();
    let decisions: spur_controller::webhook::DecisionSink =
        Arc::new(move |resource: &str, decision: &str| {
            counted.admission_decision(resource, decision)
        });
    let webhook = tokio::spawn(run_webhook(
        webhook_cfg,
        client.clone(),
        decisions,
        stop_rx.clone(),
    ));
    // -----------------------------------------------------------------------

    let replica = tokio::spawn(run_replica(
        client,
        ReplicaConfig::new(election, config),
        metrics,
        health,
        stop_rx,
    ));
    tokio::select! {
        biased;
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
    }
    // The replica stops its loops, then releases the Lease (each bounded by
    // STOP_TIMEOUT); the webhook stops beside it.
    let _ = stop_tx.send(true);
    if let Err(e) = replica.await {
        tracing::error!(error = %e, "the replica failed");
    }
    if tokio::time::timeout(STOP_TIMEOUT, webhook).await.is_err() {
        tracing::warn!("the webhook did not stop in time");
    }
    Ok(())
}

/// Serves the admission webhook until `stop` turns true, restarting it
/// after [`WEBHOOK_RETRY`] when it fails.
async fn run_webhook(
    cfg: WebhookConfig,
    client: Client,
    decisions: spur_controller::webhook::DecisionSink,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let mut rx = stop.clone();
        let shutdown = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let sink = Some(decisions.clone());
        match spur_controller::webhook::serve_with(cfg.clone(), client.clone(), sink, shutdown)
            .await
        {
            Ok(()) => return,
            Err(e) => tracing::error!(error = %e, "admission webhook failed; retrying"),
        }
        if tokio::time::timeout(WEBHOOK_RETRY, stop.wait_for(|s| *s))
            .await
            .is_ok()
        {
            return;
        }
    }
}
