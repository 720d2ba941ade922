//! `spur-agent ipam show` against the embedded API server on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use common::*;
use spur_core::ipamblock::Owner;
use spur_node::ipam::AllocateRequest;

fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n\
         contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n\
         current-context: lab\nusers:\n- name: lab\n  user: {{}}\n"
    )
}

async fn spur_agent(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_spur-agent"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipam_show_lists_who_holds_what_sorted_by_address() {
    let server = server().await;
    pool(&server, "vlan100-ipv4", &["10.10.1.0/25"], "10.10.1.1", 24).await;
    let a = agent(&server, 1, &["vlan100-ipv4"]).await;
    let b = agent(&server, 2, &["vlan100-ipv4"]).await;
    let pools = ["vlan100-ipv4"];
    a.allocate(&AllocateRequest::new(
        "node-a",
        Owner::pod("default", "web-1", "c0ffee", "eth1"),
        pools,
    ))
    .await
    .unwrap();
    a.allocate(&AllocateRequest::new(
        "node-a",
        Owner::pod("default", "web-2", "beef", "net1"),
        pools,
    ))
    .await
    .unwrap();
    wait_until(|| {
        b.cache()
            .pool("vlan100-ipv4")
            .is_some_and(|p| p.used() == 2)
    })
    .await;
    b.allocate(&AllocateRequest::new(
        "node-b",
        Owner::stateful_set("db", "pg", 0, "eth1", "pg-0", "f00d"),
        pools,
    ))
    .await
    .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let serving = {
        let s = server.clone();
        tokio::spawn(async move { s.serve_tcp(listener).await })
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, kubeconfig(&url)).unwrap();
    let path = path.display().to_string();

    let out = spur_agent(vec![
        "ipam".into(),
        "show".into(),
        "vlan100-ipv4".into(),
        "--kubeconfig".into(),
        path.clone(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "IPPool vlan100-ipv4: 126 addresses, 3 used, 2 blocks\n\
         ADDRESS     NODE    OWNER                                                CONTAINER\n\
         10.10.1.2   node-b  StatefulSet db/pg ordinal 0 interface eth1           f00d\n\
         10.10.1.64  node-a  Pod default/web-1 interface eth1 (container c0ffee)  c0ffee\n\
         10.10.1.65  node-a  Pod default/web-2 interface net1 (container beef)    beef\n"
    );

    let out = spur_agent(vec![
        "--kubeconfig".into(),
        path,
        "ipam".into(),
        "show".into(),
        "nope".into(),
    ])
    .await;
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "spur-agent: IPPool nope not found\n"
    );
    serving.abort();
}
