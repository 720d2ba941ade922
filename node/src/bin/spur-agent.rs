//! `spur-agent`: Spur's node agent.
//!
//! ```text
//! spur-agent ipam show POOL [--kubeconfig FILE]
//! ```
//!
//! Today it only inspects: `ipam show` lists who holds which address of an
//! IPPool. The agent's long-running `run` command comes with later issues.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// IP address management.
    #[command(subcommand)]
    Ipam(IpamCommand),
}

#[derive(Subcommand, Debug)]
enum IpamCommand {
    /// Lists who holds which address of an IPPool, sorted by address.
    Show {
        /// The IPPool.
        pool: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ipam(IpamCommand::Show { pool }) => show(cli.kubeconfig, &pool).await,
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
