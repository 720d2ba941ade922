//! The real `spur` binary against a fake spur-agent: a unix listener on a
//! thread that decodes the request, hands it to the test and answers as
//! told. Covers forwarding, printing, agent errors, an absent or slow
//! agent, VERSION, invalid invocations and a protocol mismatch.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spur_core::cni::CniVersion;
use spur_core::cniproto::{
    encode_frame, frame_body_len, AgentRequest, AgentResponse, CniError, Command as Verb,
    FRAME_HEADER_BYTES, PROTO_VERSION,
};

const CONTAINER: &str = "3f6940ab5ab4";
const NETNS: &str = "/var/run/netns/cni-1234";
const CNI_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
                        K8S_POD_UID=1c2d";

/// How the fake agent answers.
enum Reply {
    /// This response, framed.
    Response(AgentResponse),
    /// These bytes, as they are.
    Raw(Vec<u8>),
    /// Nothing: hold the connection until the test ends.
    Silence,
}

/// A fake spur-agent serving one connection.
struct FakeAgent {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    requests: mpsc::Receiver<AgentRequest>,
    /// Dropped at the end of a test to release a silent agent.
    _release: mpsc::Sender<()>,
}

impl FakeAgent {
    fn start(reply: Reply) -> FakeAgent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("cni.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (req_tx, requests) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let request = read_frame(&mut stream);
            let request = AgentRequest::decode(&request).unwrap();
            req_tx.send(request).unwrap();
            match reply {
                Reply::Response(r) => stream.write_all(&r.encode().unwrap()).unwrap(),
                Reply::Raw(bytes) => stream.write_all(&bytes).unwrap(),
                Reply::Silence => {
                    // Returns once the test drops its sender.
                    let _ = released.recv();
                }
            }
        });
        FakeAgent {
            _dir: dir,
            socket,
            requests,
            _release: release,
        }
    }

    /// The one request the plugin sent.
    fn request(&self) -> AgentRequest {
        self.requests
            .recv_timeout(Duration::from_secs(10))
            .expect("the plugin sent no request")
    }
}

/// Reads one frame the way an agent that trusts the length would.
fn read_frame(stream: &mut UnixStream) -> Vec<u8> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream.read_exact(&mut header).unwrap();
    let mut body = vec![0u8; frame_body_len(header).unwrap()];
    stream.read_exact(&mut body).unwrap();
    body
}

fn config(version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "vlan100",
        "type": "spur",
        "networkType": "vlan",
        "vlan": 100,
        "ipam": {"type": "spur", "ippools": ["vlan100-ipv4"]}
    })
}

fn attachment_env(verb: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", verb.to_string()),
        ("CNI_CONTAINERID", CONTAINER.to_string()),
        ("CNI_NETNS", NETNS.to_string()),
        ("CNI_IFNAME", "net1".to_string()),
        ("CNI_ARGS", CNI_ARGS.to_string()),
        ("CNI_PATH", "/opt/cni/bin".to_string()),
    ]
}

/// Runs the plugin with exactly `env` (plus the socket) and `stdin`.
fn spur(socket: &Path, env: &[(&str, String)], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spur"))
        .env_clear()
        .env("SPUR_CNI_SOCKET", socket)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?} (stderr {:?})",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn msg(v: &Value) -> &str {
    v["msg"].as_str().unwrap()
}

/// Asserts that nobody connected to `listener` (after the plugin exited).
fn assert_not_contacted(listener: &UnixListener) {
    listener.set_nonblocking(true).unwrap();
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => panic!("accept: {e}"),
        Ok(_) => panic!("the plugin contacted the agent"),
    }
}

#[test]
fn add_is_forwarded_and_the_result_printed_as_sent() {
    let result = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "net1", "mac": "ca:fe:00:00:00:01", "sandbox": NETNS}],
        "ips": [{"address": "10.10.0.5/24", "gateway": "10.10.0.254", "interface": 0}],
        "dns": {}
    });
    let agent = FakeAgent::start(Reply::Response(AgentResponse::ok(result.clone())));
    let conf = config("1.0.0");
    let out = spur(
        &agent.socket,
        &attachment_env("ADD"),
        conf.to_string().as_bytes(),
    );

    let req = agent.request();
    assert_eq!(req.proto, PROTO_VERSION);
    assert_eq!(req.command, Verb::Add);
    assert_eq!(req.container_id.as_deref(), Some(CONTAINER));
    assert_eq!(req.netns.as_deref(), Some(NETNS));
    assert_eq!(req.ifname.as_deref(), Some("net1"));
    assert_eq!(req.args.len(), 4);
    assert_eq!(req.args["IgnoreUnknown"], "1");
    assert_eq!(req.args["K8S_POD_NAMESPACE"], "default");
    assert_eq!(req.args["K8S_POD_NAME"], "web-0");
    assert_eq!(req.args["K8S_POD_UID"], "1c2d");
    assert_eq!(req.config, conf);
    assert_eq!(req.cni_version, CniVersion::V1_0_0);

    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.stdout, serde_json::to_vec(&result).unwrap());
    assert!(out.stderr.is_empty(), "{:?}", out.stderr);
}

#[test]
fn del_with_a_null_answer_prints_nothing() {
    let agent = FakeAgent::start(Reply::Response(AgentResponse::ok(Value::Null)));
    let mut env = attachment_env("DEL");
    env.retain(|(k, _)| *k != "CNI_NETNS");
    let out = spur(&agent.socket, &env, config("0.4.0").to_string().as_bytes());
    let req = agent.request();
    assert_eq!(req.command, Verb::Del);
    assert_eq!(req.netns, None);
    assert_eq!(req.cni_version, CniVersion::V0_4_0);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
}

#[test]
fn agent_error_is_printed_in_the_requested_version() {
    let error = CniError::exhausted("IPPool vlan100-ipv4 is exhausted (82 of 82 in use)")
        .with_details("no other pool of network default/vlan100 has an address");
    let agent = FakeAgent::start(Reply::Response(AgentResponse::err(error)));
    let out = spur(
        &agent.socket,
        &attachment_env("ADD"),
        config("0.3.1").to_string().as_bytes(),
    );
    agent.request();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout_json(&out),
        json!({
            "cniVersion": "0.3.1",
            "code": 100,
            "msg": "IPPool vlan100-ipv4 is exhausted (82 of 82 in use)",
            "details": "no other pool of network default/vlan100 has an address"
        })
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("exhausted"));
}

#[test]
fn no_agent_means_try_again_later_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    for verb in ["ADD", "DEL", "CHECK"] {
        let mut conf = config("1.1.0");
        if verb == "CHECK" {
            conf["prevResult"] = json!({"cniVersion": "1.1.0", "dns": {}});
        }
        let out = spur(&socket, &attachment_env(verb), conf.to_string().as_bytes());
        assert_eq!(out.status.code(), Some(1), "{verb}");
        let v = stdout_json(&out);
        assert_eq!(v["code"], 11, "{verb}: {v}");
        assert_eq!(v["cniVersion"], "1.1.0");
        assert!(msg(&v).contains(socket.to_str().unwrap()), "{v}");
        assert!(msg(&v).contains("spur-agent is not running"), "{v}");
        assert!(msg(&v).contains("No such file or directory"), "{v}");
    }

    // GC too, and a socket file nobody listens on is the same.
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let mut conf = config("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([]);
    let out = spur(
        &stale,
        &[("CNI_COMMAND", "GC".to_string())],
        conf.to_string().as_bytes(),
    );
    let v = stdout_json(&out);
    assert_eq!(v["code"], 11, "{v}");
    assert!(msg(&v).contains("stale.sock"), "{v}");
    assert!(msg(&v).contains("refused"), "{v}");
}

#[test]
fn status_without_agent_is_plugin_not_available() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let out = spur(
        &socket,
        &[("CNI_COMMAND", "STATUS".to_string())],
        config("1.1.0").to_string().as_bytes(),
    );
    assert_eq!(out.status.code(), Some(1));
    let v = stdout_json(&out);
    assert_eq!(v["code"], 50, "{v}");
    assert!(msg(&v).contains(socket.to_str().unwrap()), "{v}");
}

#[test]
fn slow_agent_times_out_with_try_again_later() {
    let agent = FakeAgent::start(Reply::Silence);
    let mut env = attachment_env("ADD");
    env.push(("SPUR_CNI_TIMEOUT_SECONDS", "1".to_string()));
    let start = Instant::now();
    let out = spur(&agent.socket, &env, config("1.0.0").to_string().as_bytes());
    let took = start.elapsed();
    agent.request();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(out.status.code(), Some(1));
    let v = stdout_json(&out);
    assert_eq!(v["code"], 11, "{v}");
    assert!(msg(&v).contains("within 1 s"), "{v}");
    assert!(msg(&v).contains("SPUR_CNI_TIMEOUT_SECONDS"), "{v}");
}

#[test]
fn version_needs_no_agent() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cni.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let out = spur(
        &socket,
        &[("CNI_COMMAND", "VERSION".to_string())],
        br#"{"cniVersion": "0.4.0"}"#,
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout_json(&out),
        json!({"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
    // Without stdin too.
    let out = spur(&socket, &[("CNI_COMMAND", "VERSION".to_string())], b"");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout_json(&out)["cniVersion"], "1.1.0");
    assert_not_contacted(&listener);
}

#[test]
fn bad_environment_is_refused_without_contacting_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cni.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let mut env = attachment_env("ADD");
    env.retain(|(k, _)| *k != "CNI_CONTAINERID");
    let out = spur(&socket, &env, config("1.0.0").to_string().as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let v = stdout_json(&out);
    assert_eq!(v["code"], 4, "{v}");
    assert_eq!(v["cniVersion"], "1.0.0");
    assert!(msg(&v).contains("CNI_CONTAINERID"), "{v}");
    assert!(!out.stderr.is_empty());

    // Not JSON on stdin: code 6, in the latest version.
    let out = spur(&socket, &attachment_env("ADD"), b"{not json");
    let v = stdout_json(&out);
    assert_eq!(
        (v["code"].clone(), v["cniVersion"].clone()),
        (json!(6), json!("1.1.0"))
    );

    // A bad timeout.
    let mut env = attachment_env("ADD");
    env.push(("SPUR_CNI_TIMEOUT_SECONDS", "soon".to_string()));
    let out = spur(&socket, &env, config("1.0.0").to_string().as_bytes());
    let v = stdout_json(&out);
    assert_eq!(v["code"], 4, "{v}");
    assert!(msg(&v).contains("SPUR_CNI_TIMEOUT_SECONDS=\"soon\""), "{v}");

    assert_not_contacted(&listener);
}

#[test]
fn agent_of_another_protocol_is_refused() {
    let body = json!({"proto": PROTO_VERSION + 1, "result": {"Ok": null}}).to_string();
    let agent = FakeAgent::start(Reply::Raw(encode_frame(body.as_bytes()).unwrap()));
    let out = spur(
        &agent.socket,
        &attachment_env("DEL"),
        config("1.0.0").to_string().as_bytes(),
    );
    agent.request();
    assert_eq!(out.status.code(), Some(1));
    let v = stdout_json(&out);
    assert_eq!(v["code"], 1, "{v}");
    assert!(
        msg(&v).contains(&format!("spur-agent speaks {}", PROTO_VERSION + 1)),
        "{v}"
    );
}

#[test]
fn garbage_answers_are_decode_or_io_errors() {
    // Not a response.
    let agent = FakeAgent::start(Reply::Raw(encode_frame(b"<html>").unwrap()));
    let out = spur(
        &agent.socket,
        &attachment_env("ADD"),
        config("1.0.0").to_string().as_bytes(),
    );
    agent.request();
    let v = stdout_json(&out);
    assert_eq!(v["code"], 6, "{v}");
    assert!(msg(&v).contains(agent.socket.to_str().unwrap()), "{v}");

    // An answer announcing more than the protocol allows.
    let agent = FakeAgent::start(Reply::Raw(vec![0x40, 0, 0, 0, b'{']));
    let out = spur(
        &agent.socket,
        &attachment_env("ADD"),
        config("1.0.0").to_string().as_bytes(),
    );
    agent.request();
    let v = stdout_json(&out);
    assert_eq!(v["code"], 6, "{v}");
    assert!(msg(&v).contains("1073741824 bytes"), "{v}");

    // Closed without an answer.
    let agent = FakeAgent::start(Reply::Raw(Vec::new()));
    let out = spur(
        &agent.socket,
        &attachment_env("ADD"),
        config("1.0.0").to_string().as_bytes(),
    );
    agent.request();
    assert_eq!(out.status.code(), Some(1));
    let v = stdout_json(&out);
    assert_eq!(v["code"], 5, "{v}");
    assert!(
        msg(&v).contains("closed the connection after 0 bytes"),
        "{v}"
    );
}
