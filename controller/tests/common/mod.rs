//! Helpers of the tests that run the real `spur-controller` binary against
//! the embedded API server over TCP: serving the server, the kubeconfig and
//! the controller's config, free ports, starting the binary (killed when
//! the test ends), and reading its /metrics.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, CustomResourceExt};
use spur_core::ipamblock::IPAMBlock;
use spur_core::ippool::IPPool;
use spur_kubeapi::ApiServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Kills the child when the test ends, however it ends.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A kubeconfig for `server` (no credentials).
pub fn kubeconfig_text(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {server}\n\
         contexts:\n- name: t\n  context:\n    cluster: t\n    user: t\n    namespace: default\n\
         current-context: t\nusers:\n- name: t\n  user: {{}}\n"
    )
}

/// A TCP port of 127.0.0.1 free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh embedded API server with the IPPool and IPAMBlock CRDs, and an
/// in-process client of it.
pub async fn cluster() -> (ApiServer, Client) {
    let server = ApiServer::in_memory();
    let client = Client::new(server.service(), "default");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [IPPool::crd(), IPAMBlock::crd()] {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    (server, client)
}

/// Serves `server` over TCP on 127.0.0.1 (until the test's runtime ends);
/// its URL.
pub async fn serve_tcp(server: &ApiServer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let serving = server.clone();
    tokio::spawn(async move { serving.serve_tcp(listener).await });
    url
}

/// Writes `dir/kubeconfig` (for `url`) and `dir/spur-controller.conf`.
pub fn write_config(dir: &Path, url: &str, controller_conf: &str) {
    std::fs::write(dir.join("kubeconfig"), kubeconfig_text(url)).unwrap();
    std::fs::write(dir.join("spur-controller.conf"), controller_conf).unwrap();
}

/// Starts the binary with `dir/kubeconfig` and `dir/spur-controller.conf`,
/// identity `id`, leader election in kube-system (200 ms retry period),
/// /metrics on 127.0.0.1:`port` and the webhook on a free port of
/// 127.0.0.1; its log goes to `dir/<id>.log`.
pub fn start(dir: &Path, id: &str, port: u16) -> Proc {
    start_with_webhook(dir, id, port, free_port())
}

/// [`start`] with the webhook on 127.0.0.1:`webhook_port`.
pub fn start_with_webhook(dir: &Path, id: &str, port: u16, webhook_port: u16) -> Proc {
    let log = std::fs::File::create(dir.join(format!("{id}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_spur-controller"))
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .arg("--config")
        .arg(dir.join("spur-controller.conf"))
        .args(["--leader-election-namespace", "kube-system"])
        .args(["--leader-election-lease", "spur-controller"])
        .args(["--leader-election-lease-duration", "20"])
        .args(["--leader-election-renew-deadline-ms", "12000"])
        .args(["--leader-election-retry-period-ms", "200"])
        .args(["--metrics-address", "127.0.0.1"])
        .args(["--metrics-port", &port.to_string()])
        .args(["--webhook-address", "127.0.0.1"])
        .args(["--webhook-port", &webhook_port.to_string()])
        .args(["--webhook-secret", "spur-webhook-tls"])
        .args(["--webhook-service", "spur-webhook"])
        .args(["--webhook-configuration", "spur-webhook"])
        .env("POD_NAME", id)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc(child)
}

/// GET `path` on 127.0.0.1:`port`: the status code and body, or None if
/// nothing answers yet.
pub async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Polls `/metrics` until every line of `want` is in it.
pub async fn wait_metrics(port: u16, want: &[&str], timeout: Duration, dir: &Path) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((200, body)) = get(port, "/metrics").await {
            if want.iter().all(|w| body.lines().any(|l| l == *w)) {
                return body;
            }
            if Instant::now() >= deadline {
                panic!(
                    "metrics on {port} lack {want:?}:\n{body}\nlogs:\n{}",
                    logs(dir)
                );
            }
        } else if Instant::now() >= deadline {
            panic!("nothing on {port}; logs:\n{}", logs(dir));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the sample `series` (name with its labels, as exposed) in
/// a /metrics body; 0 when absent (a counter not incremented yet).
pub fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|rest| rest.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The value of `series` on `port` now (None: nothing answers).
pub async fn metric(port: u16, series: &str) -> Option<f64> {
    match get(port, "/metrics").await {
        Some((200, body)) => Some(sample(&body, series)),
        _ => None,
    }
}

/// Polls `/metrics` until `series` is at least `at_least`; its value.
pub async fn wait_metric_at_least(
    port: u16,
    series: &str,
    at_least: f64,
    timeout: Duration,
    dir: &Path,
) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let v = metric(port, series).await;
        if let Some(v) = v.filter(|v| *v >= at_least) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {v:?}, not yet {at_least}; logs:\n{}",
            logs(dir)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every `*.log` of `dir`, each under its name.
pub fn logs(dir: &Path) -> String {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .map(|p| {
            format!(
                "--- {}\n{}",
                p.file_stem().unwrap_or_default().to_string_lossy(),
                std::fs::read_to_string(p).unwrap_or_default()
            )
        })
        .collect()
}
