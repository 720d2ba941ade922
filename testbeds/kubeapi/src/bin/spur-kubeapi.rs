//! `spur-kubeapi`: the embedded Kubernetes API server on a socket, for labs
//! and for anyone trying Spur with kubectl on one machine.
//!
//! ```text
//! spur-kubeapi --listen 127.0.0.1:6443 [--state FILE] [--kubeconfig FILE]
//! spur-kubeapi --listen unix:/run/spur/kubeapi.sock
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use spur_kubeapi::persist::FileJournal;
use spur_kubeapi::{ApiServer, Clock, Store, SystemClock};

#[derive(Parser, Debug)]
#[command(
    name = "spur-kubeapi",
    version,
    about = "An embedded Kubernetes API server for Spur labs"
)]
struct Args {
    /// Where to listen: HOST:PORT (plain HTTP) or unix:PATH.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: String,
    /// State file: objects survive a restart; every acknowledged write is on disk.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Write a kubeconfig that points kubectl at this server.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Seed for generated names and UIDs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seconds between BOOKMARK events on watches that ask for them.
    #[arg(long, default_value_t = 10)]
    bookmark_seconds: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = match &args.state {
        Some(path) => {
            let records = FileJournal::load(path)
                .map_err(|e| format!("cannot read the state file {}: {e}", path.display()))?;
            let n = records.len();
            let mut store = Store::restore(clock.clone(), args.seed, records, None);
            let journal = FileJournal::rewrite(path, &store.snapshot())
                .map_err(|e| format!("cannot write the state file {}: {e}", path.display()))?;
            store.set_journal(Box::new(journal));
            eprintln!("spur-kubeapi: restored {n} records from {}", path.display());
            store
        }
        None => Store::new(clock.clone(), args.seed),
    };
    let server = ApiServer::new(store, clock, args.seed);
    let bookmarks = server.clone();
    let every = Duration::from_secs(args.bookmark_seconds.max(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            bookmarks.send_bookmarks();
        }
    });
    let url;
    let serve = if let Some(path) = args.listen.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        url = format!("unix:{path}");
        let s = server.clone();
        tokio::spawn(async move { s.serve_unix(listener).await })
    } else {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        url = format!("http://{}", listener.local_addr()?);
        let s = server.clone();
        tokio::spawn(async move { s.serve_tcp(listener).await })
    };
    if let Some(path) = &args.kubeconfig {
        std::fs::write(path, kubeconfig(&url))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    println!("spur-kubeapi: serving on {url}");
    tokio::select! {
        r = serve => { r??; }
        _ = tokio::signal::ctrl_c() => { eprintln!("spur-kubeapi: stopping"); }
    }
    Ok(())
}

fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: spur-lab\n  cluster:\n    server: {server}\n\
         contexts:\n- name: spur-lab\n  context:\n    cluster: spur-lab\n    user: spur-lab\n    namespace: default\n\
         current-context: spur-lab\nusers:\n- name: spur-lab\n  user: {{}}\n"
    )
}
