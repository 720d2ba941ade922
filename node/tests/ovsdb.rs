//! Tests of Spur's OVSDB client (`spur_node::ovsdb`).
//!
//! - Pure parts: the JSON stream splitter (proptests: any chunking of a
//!   sequence of JSON texts gives the same values; garbage never panics),
//!   the value encodings and the transact result parsing.
//! - The client against a fake server on a unix socket: echo requests from
//!   the server answered, replies cut and glued arbitrarily, timeouts,
//!   connection loss under a request.
//! - The client and its `Switch` implementation against a real
//!   `ovsdb-server` (Debian `openvswitch-switch`) run as a child process on
//!   a fresh database per test; skipped with a message when it is not
//!   installed. No ovs-vswitchd: `ofport` stays empty, so monitors are
//!   tested on columns that Spur changes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Value};
use spur_node::ovsdb::proto::{
    parse_table_updates, parse_transact_result, result_rows, row_uuid, Atom, Condition, Datum,
    Message, MonitorRequest, Mutation, Operation, Row, Transaction, Uuid,
};
use spur_node::ovsdb::split::{JsonSplitter, SplitError};
use spur_node::ovsdb::switch::{OVS_DB, ROLE_ACCESS, ROLE_KEY, ROLE_LOCAL, ROLE_UPLINK};
use spur_node::ovsdb::{
    BridgeSpec, Client, ClientConfig, MonitorEvent, MonitorStream, OvsdbError, PortInfo, Switch,
    SwitchError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

// ---------------------------------------------------------------------------
// The splitter

fn split_all(chunks: &[&[u8]]) -> Vec<Result<Value, SplitError>> {
    let mut s = JsonSplitter::new(1 << 20);
    let mut out = Vec::new();
    for c in chunks {
        s.push(c);
        while let Some(v) = s.next_value() {
            out.push(v);
        }
    }
    out
}

/// Cuts `bytes` at the given fractions.
fn chunk<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut from = 0;
    for p in points {
        out.push(&bytes[from..p]);
        from = p;
    }
    out.push(&bytes[from..]);
    out
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        // Strings full of the characters the splitter must not be fooled by.
        prop::collection::vec(
            prop_oneof![
                Just('{'),
                Just('}'),
                Just('['),
                Just(']'),
                Just('"'),
                Just('\\'),
                Just('é'),
                Just('\n'),
                any::<char>()
            ],
            0..12
        )
        .prop_map(|cs| Value::String(cs.into_iter().collect())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z\\]\\[{}\"]{0,4}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A top-level text: an object or an array.
fn arb_text() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::collection::vec(arb_json(), 0..4).prop_map(Value::Array),
        prop::collection::btree_map("[a-z]{1,6}", arb_json(), 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn split_any_chunking_gives_the_same_values(
        values in prop::collection::vec(arb_text(), 0..6),
        seps in prop::collection::vec(prop_oneof![Just(""), Just(" "), Just("\n"), Just("\r\n\t")], 6),
        pretty in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..24),
    ) {
        let mut bytes = Vec::new();
        let mut want = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let text = if pretty { serde_json::to_string_pretty(v).unwrap() } else { v.to_string() };
            bytes.extend_from_slice(text.as_bytes());
            bytes.extend_from_slice(seps[i].as_bytes());
            // What parsing that text alone gives (serde_json's float
            // parsing is not always exact: not the splitter's business).
            want.push(Ok(serde_json::from_str::<Value>(&text).unwrap()));
        }
        let got = split_all(&chunk(&bytes, &cuts));
        prop_assert_eq!(got, want);
    }

    #[test]
    fn split_garbage_never_panics_and_ignores_chunking(
        bytes in prop::collection::vec(
            prop_oneof![
                any::<u8>(),
                prop::sample::select(b"{}[]\"\\ ,:a1\n".to_vec()),
            ],
            0..400,
        ),
        cuts in prop::collection::vec(any::<usize>(), 0..24),
    ) {
        let whole = split_all(&[&bytes]);
        let chunked = split_all(&chunk(&bytes, &cuts));
        // Values and invalid texts do not depend on the chunking; garbage
        // runs may be reported in pieces, but cover the same bytes.
        let summary = |items: &[Result<Value, SplitError>]| {
            let mut garbage = 0;
            let mut rest = Vec::new();
            for item in items {
                match item {
                    Err(SplitError::Garbage { len }) => garbage += len,
                    other => rest.push(other.clone()),
                }
            }
            (garbage, rest)
        };
        prop_assert_eq!(summary(&whole), summary(&chunked));
    }

    #[test]
    fn datum_json_round_trip(datum in arb_datum()) {
        let text = datum.to_json().to_string();
        let back = Datum::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
        prop_assert_eq!(back, datum);
    }
}

#[test]
fn split_recovers_after_an_invalid_text_and_garbage() {
    let got = split_all(&[b"{\"a\":} junk [1]", b" 42 {\"b\"", b":2}"]);
    assert!(matches!(got[0], Err(SplitError::Invalid(_))), "{got:?}");
    assert_eq!(got[1], Err(SplitError::Garbage { len: 4 }));
    assert_eq!(got[2], Ok(json!([1])));
    assert_eq!(got[3], Err(SplitError::Garbage { len: 2 }));
    assert_eq!(got[4], Ok(json!({"b": 2})));
    assert_eq!(got.len(), 5);
}

// ---------------------------------------------------------------------------
// The wire format

fn arb_atom() -> impl Strategy<Value = Atom> {
    prop_oneof![
        any::<i64>().prop_map(Atom::Integer),
        // Reals exact in binary and decimal, and not integers.
        (-1_000_000_000i64..1_000_000_000).prop_map(|k| Atom::Real(k as f64 + 0.25)),
        any::<bool>().prop_map(Atom::Boolean),
        ".{0,10}".prop_map(Atom::String),
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
            .prop_map(|u| Atom::Uuid(Uuid::parse(&u).unwrap())),
        "[a-z_][a-z0-9_]{0,8}".prop_map(Atom::NamedUuid),
    ]
}

fn arb_datum() -> impl Strategy<Value = Datum> {
    prop_oneof![
        arb_atom().prop_map(Datum::Atom),
        prop::collection::vec(arb_atom(), 0..5).prop_map(Datum::Set),
        prop::collection::vec((arb_atom(), arb_atom()), 0..5).prop_map(Datum::Map),
    ]
}

#[test]
fn encodings_follow_rfc_7047() {
    let u = Uuid::parse("36BBE2E3-6EFA-4E6A-9F3B-6C4C1D2A0001").unwrap();
    assert_eq!(u.as_str(), "36bbe2e3-6efa-4e6a-9f3b-6c4c1d2a0001");
    assert_eq!(Uuid::parse("not-a-uuid"), None);
    assert_eq!(
        Atom::from(&u).to_json(),
        json!(["uuid", "36bbe2e3-6efa-4e6a-9f3b-6c4c1d2a0001"])
    );
    assert_eq!(
        Atom::named("port_1").to_json(),
        json!(["named-uuid", "port_1"])
    );
    assert_eq!(Datum::set([1i64, 2]).to_json(), json!(["set", [1, 2]]));
    let ids = BTreeMap::from([("a".to_string(), "b".to_string())]);
    assert_eq!(
        Datum::string_map(&ids).to_json(),
        json!(["map", [["a", "b"]]])
    );
    // A one-element set may come as the bare atom.
    let one = Datum::from_json(&json!(["uuid", u.as_str()])).unwrap();
    assert_eq!(one.as_uuid_set(), vec![u.clone()]);
    assert_eq!(
        Datum::from_json(&json!(["set", []]))
            .unwrap()
            .as_optional_integer(),
        None
    );
    assert_eq!(
        Datum::from_json(&json!(7)).unwrap().as_optional_integer(),
        Some(7)
    );

    let mut tx = Transaction::new();
    let iface = tx.insert("Interface", Row::from([("name".into(), Datum::from("p1"))]));
    tx.push(Operation::mutate(
        "Bridge",
        vec![Condition::eq("name", "br0")],
        vec![Mutation::insert("ports", Datum::Set(vec![iface.clone()]))],
    ));
    tx.push(Operation::comment("hello"));
    let Atom::NamedUuid(name) = &iface else {
        panic!()
    };
    assert!(spur_node::ovsdb::proto::is_valid_uuid_name(name));
    assert_eq!(
        tx.ops()[0].to_json(),
        json!({"op": "insert", "table": "Interface", "row": {"name": "p1"}, "uuid-name": name})
    );
    assert_eq!(
        tx.ops()[1].to_json(),
        json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", "br0"]],
               "mutations": [["ports", "insert", ["set", [["named-uuid", name]]]]]})
    );
    assert_eq!(
        tx.ops()[2].to_json(),
        json!({"op": "comment", "comment": "hello"})
    );
    let wait = Operation::assert_rows("Bridge", vec![], &["name"], vec![]);
    assert_eq!(
        wait.to_json(),
        json!({"op": "wait", "table": "Bridge", "where": [], "columns": ["name"], "until": "==", "rows": [], "timeout": 0})
    );
}

#[test]
fn transact_results_name_the_failing_operation() {
    let ops = [
        Operation::insert("Bridge", Row::new()),
        Operation::update("Port", vec![], Row::new()),
        Operation::comment("x"),
    ];
    let ok = json!([{"uuid": ["uuid", "36bbe2e3-6efa-4e6a-9f3b-6c4c1d2a0001"]}, {"count": 0}, {}]);
    assert_eq!(parse_transact_result(&ops, &ok).unwrap().len(), 3);

    let failed = json!([{"uuid": ["uuid", "36bbe2e3-6efa-4e6a-9f3b-6c4c1d2a0001"]},
                        {"error": "unknown column", "details": "No column nope in table Port."}, null]);
    match parse_transact_result(&ops, &failed) {
        Err(OvsdbError::OperationFailed {
            index: 1,
            op,
            error,
            details,
        }) => {
            assert_eq!(op, "update Port");
            assert_eq!(error, "unknown column");
            assert_eq!(details.as_deref(), Some("No column nope in table Port."));
        }
        other => panic!("{other:?}"),
    }
    let commit =
        json!([{}, {"count": 1}, {}, {"error": "referential integrity violation", "details": "d"}]);
    assert!(matches!(
        parse_transact_result(&ops, &commit),
        Err(OvsdbError::CommitFailed { ref error, .. }) if error == "referential integrity violation"
    ));
    assert!(matches!(
        parse_transact_result(&ops, &json!([{}])),
        Err(OvsdbError::Malformed(_))
    ));
    assert!(matches!(
        parse_transact_result(&ops, &json!({"a": 1})),
        Err(OvsdbError::Malformed(_))
    ));
}

#[test]
fn messages_are_classified() {
    let m = Message::from_json(json!({"method": "echo", "params": [], "id": "x"})).unwrap();
    assert!(matches!(m, Message::Request { ref method, .. } if method == "echo"));
    let m = Message::from_json(json!({"method": "update", "params": [1, {}], "id": null})).unwrap();
    assert!(matches!(m, Message::Notification { .. }));
    let m = Message::from_json(json!({"result": [], "error": null, "id": 3})).unwrap();
    assert_eq!(
        m,
        Message::Response {
            id: json!(3),
            result: Ok(json!([]))
        }
    );
    let m =
        Message::from_json(json!({"result": null, "error": "unknown database", "id": 4})).unwrap();
    assert_eq!(
        m,
        Message::Response {
            id: json!(4),
            result: Err(json!("unknown database"))
        }
    );
    assert!(Message::from_json(json!([1])).is_err());
    assert!(Message::from_json(json!({"result": 1})).is_err());

    let updates = parse_table_updates(&json!({"Port": {
        "36bbe2e3-6efa-4e6a-9f3b-6c4c1d2a0001": {"new": {"name": "p1", "tag": 5}},
        "36bbe2e3-6efa-4e6a-9f3b-6c4c1d2a0002": {"old": {"name": "p2"}},
    }}))
    .unwrap();
    let port = &updates["Port"];
    assert_eq!(port.len(), 2);
    assert!(port
        .values()
        .any(|u| u.old.is_none() && u.new.as_ref().unwrap()["name"] == Datum::from("p1")));
    assert!(parse_table_updates(&json!({"Port": {"nope": {}}})).is_err());
}

// ---------------------------------------------------------------------------
// A fake server

fn quick_config(socket: &Path) -> ClientConfig {
    let mut cfg = ClientConfig::new(socket);
    cfg.request_timeout = Duration::from_secs(5);
    cfg.backoff_initial = Duration::from_millis(20);
    cfg.backoff_max = Duration::from_millis(200);
    cfg
}

/// Reads JSON texts from `conn` until `n` arrived.
async fn read_texts(conn: &mut tokio::net::UnixStream, n: usize) -> Vec<Value> {
    let mut s = JsonSplitter::new(1 << 20);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < n {
        let k = conn.read(&mut buf).await.unwrap();
        assert!(k > 0, "client closed the connection");
        s.push(&buf[..k]);
        while let Some(v) = s.next_value() {
            out.push(v.unwrap());
        }
    }
    out
}

#[tokio::test]
async fn answers_server_echo_and_reads_cut_and_glued_replies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let client = Client::connect(quick_config(&path)).await.unwrap();
    let (mut conn, _) = listener.accept().await.unwrap();

    // The server's echo, written in pieces: answered with the same params.
    let echo = br#"{"method":"echo","params":["ping",{"n":1}],"id":"srv-1"}"#;
    for piece in echo.chunks(7) {
        conn.write_all(piece).await.unwrap();
        conn.flush().await.unwrap();
    }
    let reply = tokio::time::timeout(Duration::from_secs(5), read_texts(&mut conn, 1))
        .await
        .unwrap();
    assert_eq!(
        reply[0],
        json!({"id": "srv-1", "result": ["ping", {"n": 1}], "error": null})
    );

    // Two requests in flight; both answers glued together, sent byte by byte,
    // in the opposite order.
    let c2 = client.clone();
    let calls = tokio::spawn(async move { tokio::join!(c2.list_dbs(), c2.echo(json!(["x"]))) });
    let reqs = tokio::time::timeout(Duration::from_secs(5), read_texts(&mut conn, 2))
        .await
        .unwrap();
    let id_of = |m: &str| reqs.iter().find(|r| r["method"] == m).unwrap()["id"].clone();
    let glued = format!(
        "{}\n{}",
        json!({"id": id_of("echo"), "result": ["x"], "error": null}),
        json!({"id": id_of("list_dbs"), "result": ["Open_vSwitch", "_Server"], "error": null}),
    );
    for b in glued.as_bytes() {
        conn.write_all(&[*b]).await.unwrap();
    }
    let (dbs, echoed) = tokio::time::timeout(Duration::from_secs(5), calls)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        dbs.unwrap(),
        vec!["Open_vSwitch".to_string(), "_Server".to_string()]
    );
    assert_eq!(echoed.unwrap(), json!(["x"]));
    assert_eq!(client.reconnects(), 0);
}

#[tokio::test]
async fn times_out_then_reports_a_lost_connection_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let mut cfg = quick_config(&path);
    cfg.request_timeout = Duration::from_millis(300);
    let client = Client::connect(cfg).await.unwrap();
    let (conn, _) = listener.accept().await.unwrap();

    // Nobody answers.
    let err = client.list_dbs().await.unwrap_err();
    assert!(
        matches!(err, OvsdbError::Timeout { ref method, .. } if method == "list_dbs"),
        "{err}"
    );

    // The connection drops under a request: it fails as Disconnected.
    let c2 = client.clone();
    let call = tokio::spawn(async move { c2.get_schema("Open_vSwitch").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(conn);
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, OvsdbError::Disconnected { .. }), "{err}");
    assert!(err.is_transient());

    // The client comes back on its own and counts it.
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .unwrap()
        .unwrap();
    wait_for("the client to reconnect", || {
        client.reconnects() == 1 && client.is_connected()
    })
    .await;
    let c3 = client.clone();
    let call = tokio::spawn(async move { c3.echo(json!([])).await });
    let req = read_texts(&mut conn, 1).await;
    conn.write_all(
        json!({"id": req[0]["id"], "result": [], "error": null})
            .to_string()
            .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(call.await.unwrap().unwrap(), json!([]));
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

// ---------------------------------------------------------------------------
// A real ovsdb-server

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// An ovsdb-server on a fresh Open_vSwitch database in a temp dir, killed
/// on drop.
struct OvsdbServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    child: Option<Child>,
}

impl OvsdbServer {
    /// `None` (after saying so) when ovsdb-server is not installed.
    async fn start() -> Option<OvsdbServer> {
        let (Some(bin), Some(tool)) = (find_binary("ovsdb-server"), find_binary("ovsdb-tool"))
        else {
            eprintln!(
                "SKIPPED: ovsdb-server/ovsdb-tool not found; install Debian's openvswitch-switch \
                 (scripts/deps.sh test does) to run the OVSDB integration tests"
            );
            return None;
        };
        if !Path::new(SCHEMA).is_file() {
            eprintln!("SKIPPED: {SCHEMA} not found (Debian's openvswitch-common ships it)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("spur-ovsdb")
            .tempdir()
            .unwrap();
        let status = Command::new(tool)
            .arg("create")
            .arg(dir.path().join("conf.db"))
            .arg(SCHEMA)
            .status()
            .unwrap();
        assert!(status.success(), "ovsdb-tool create failed");
        let mut server = OvsdbServer {
            dir,
            bin,
            child: None,
        };
        server.run().await;
        Some(server)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("db.sock")
    }

    async fn run(&mut self) {
        let d = self.dir.path();
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new(&self.bin)
            .arg(format!("--remote=punix:{}", self.socket().display()))
            .arg(format!("--unixctl={}", d.join("ctl").display()))
            .arg(format!("--pidfile={}", d.join("pid").display()))
            .arg(format!("--log-file={}", d.join("log").display()))
            .arg(d.join("conf.db"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        // Up when the socket accepts connections (bounded).
        for _ in 0..250 {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = std::fs::read_to_string(d.join("log")).unwrap_or_default();
        panic!("ovsdb-server did not come up within 5 s; log:\n{log}");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn client(&self) -> Client {
        Client::connect(quick_config(&self.socket())).await.unwrap()
    }
}

impl Drop for OvsdbServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spec(uplinks: &[&str], snooping: bool) -> BridgeSpec {
    BridgeSpec {
        name: "br-spur".into(),
        datapath_type: "netdev".into(),
        uplinks: uplinks.iter().map(|s| s.to_string()).collect(),
        mcast_snooping: snooping,
    }
}

fn ids(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn names(ports: &[PortInfo]) -> Vec<&str> {
    ports.iter().map(|p| p.name.as_str()).collect()
}

/// Rows of `table` matching `conditions` (all columns).
async fn select(client: &Client, table: &str, conditions: Vec<Condition>) -> Vec<Row> {
    let res = client
        .transact(OVS_DB, &[Operation::select(table, conditions, &[])])
        .await
        .unwrap();
    result_rows(&res[0]).unwrap()
}

async fn port_row(client: &Client, name: &str) -> Option<Row> {
    select(client, "Port", vec![Condition::eq("name", name)])
        .await
        .into_iter()
        .next()
}

/// Adds a port the way an administrator would (no Spur marks).
async fn add_foreign_port(client: &Client, bridge: &str, name: &str) {
    let mut tx = Transaction::new();
    let iface = tx.insert("Interface", Row::from([("name".into(), Datum::from(name))]));
    let port = tx.insert(
        "Port",
        Row::from([
            ("name".into(), Datum::from(name)),
            ("interfaces".into(), Datum::from(iface)),
        ]),
    );
    tx.push(Operation::mutate(
        "Bridge",
        vec![Condition::eq("name", bridge)],
        vec![Mutation::insert("ports", Datum::Set(vec![port]))],
    ));
    client.transact(OVS_DB, tx.ops()).await.unwrap();
}

async fn next_event(stream: &mut MonitorStream) -> MonitorEvent {
    tokio::time::timeout(Duration::from_secs(5), stream.next_event())
        .await
        .expect("no monitor event within 5 s")
        .expect("monitor stream ended")
}

#[tokio::test]
async fn real_server_rpc_basics() {
    let Some(server) = OvsdbServer::start().await else {
        return;
    };
    let client = server.client().await;
    let dbs = client.list_dbs().await.unwrap();
    assert!(dbs.iter().any(|d| d == OVS_DB), "{dbs:?}");
    let schema = client.get_schema(OVS_DB).await.unwrap();
    for table in ["Open_vSwitch", "Bridge", "Port", "Interface"] {
        assert!(schema["tables"][table].is_object(), "schema lacks {table}");
    }
    assert!(schema["tables"]["Interface"]["columns"]["ofport"].is_object());
    assert_eq!(
        client.echo(json!(["hello", 1])).await.unwrap(),
        json!(["hello", 1])
    );
    let err = client.get_schema("NoSuchDb").await.unwrap_err();
    assert!(matches!(err, OvsdbError::Rpc { .. }), "{err}");
}

#[tokio::test]
async fn ensure_bridge_creates_the_bridge_and_root_row_then_is_idempotent() {
    let Some(server) = OvsdbServer::start().await else {
        return;
    };
    let client = server.client().await;
    assert!(
        select(&client, "Open_vSwitch", vec![]).await.is_empty(),
        "fresh db has no root row"
    );

    client.ensure_bridge(&spec(&["up0"], true)).await.unwrap();

    let roots = select(&client, "Open_vSwitch", vec![]).await;
    assert_eq!(roots.len(), 1);
    let bridges = select(&client, "Bridge", vec![]).await;
    assert_eq!(bridges.len(), 1);
    let br = &bridges[0];
    assert_eq!(
        roots[0]["bridges"].as_uuid_set(),
        vec![row_uuid(br).unwrap()]
    );
    assert_eq!(br["datapath_type"].as_str(), Some("netdev"));
    assert_eq!(br["mcast_snooping_enable"].as_bool(), Some(true));

    assert_eq!(client.list_bridges().await.unwrap(), ["br-spur"]);
    let ports = client.list_ports("br-spur").await.unwrap();
    assert_eq!(names(&ports), ["br-spur", "up0"]);
    assert_eq!(ports[0].external_ids, ids(&[(ROLE_KEY, ROLE_LOCAL)]));
    assert_eq!(ports[1].external_ids, ids(&[(ROLE_KEY, ROLE_UPLINK)]));
    assert_eq!(ports[1].tag, 0);
    assert_eq!(ports[1].ofport, None, "no ovs-vswitchd, so no ofport");
    let local_iface = select(&client, "Interface", vec![Condition::eq("name", "br-spur")]).await;
    assert_eq!(local_iface[0]["type"].as_str(), Some("internal"));
    let up0 = port_row(&client, "up0").await.unwrap();
    assert_eq!(up0["vlan_mode"].as_str(), Some("trunk"));
    assert_eq!(
        up0["other_config"].as_string_map(),
        ids(&[("mcast-snooping-flood-reports", "true")])
    );

    // Again: nothing is written (the bridge row's version does not move).
    let version = br["_version"].clone();
    client.ensure_bridge(&spec(&["up0"], true)).await.unwrap();
    let again = select(&client, "Bridge", vec![]).await;
    assert_eq!(again[0]["_version"], version);
    assert_eq!(select(&client, "Port", vec![]).await.len(), 2);

    // A second bridge goes into the existing root row.
    let mut other = spec(&[], false);
    other.name = "br-two".into();
    client.ensure_bridge(&other).await.unwrap();
    let roots = select(&client, "Open_vSwitch", vec![]).await;
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0]["bridges"].as_uuid_set().len(), 2);
}

#[tokio::test]
async fn access_ports_are_added_listed_updated_and_removed() {
    let Some(server) = OvsdbServer::start().await else {
        return;
    };
    let client = server.client().await;
    let switch: Arc<dyn Switch> = Arc::new(client.clone());
    switch.ensure_bridge(&spec(&["up0"], false)).await.unwrap();

    switch
        .add_access_port("br-spur", "veth-a", 100, ids(&[("spur.dev/pod", "ns/a")]))
        .await
        .unwrap();
    switch
        .add_access_port("br-spur", "veth-b", 0, BTreeMap::new())
        .await
        .unwrap();

    let ports = switch.list_ports("br-spur").await.unwrap();
    assert_eq!(names(&ports), ["br-spur", "up0", "veth-a", "veth-b"]);
    let a = &ports[2];
    assert_eq!(a.tag, 100);
    assert_eq!(
        a.external_ids,
        ids(&[("spur.dev/pod", "ns/a"), (ROLE_KEY, ROLE_ACCESS)])
    );
    assert_eq!(ports[3].tag, 0);
    assert_eq!(
        port_row(&client, "veth-b").await.unwrap()["tag"],
        Datum::empty_set()
    );

    // Adding again is an update of Spur's own port.
    switch
        .add_access_port("br-spur", "veth-a", 200, ids(&[("spur.dev/pod", "ns/a2")]))
        .await
        .unwrap();
    let ports = switch.list_ports("br-spur").await.unwrap();
    assert_eq!(ports.len(), 4);
    assert_eq!(ports[2].tag, 200);
    assert_eq!(ports[2].external_ids["spur.dev/pod"], "ns/a2");

    // Removal, twice.
    assert!(switch.remove_port("br-spur", "veth-a").await.unwrap());
    assert!(!switch.remove_port("br-spur", "veth-a").await.unwrap());
    assert!(!switch
        .remove_port("no-such-bridge", "veth-b")
        .await
        .unwrap());
    assert_eq!(
        names(&switch.list_ports("br-spur").await.unwrap()),
        ["br-spur", "up0", "veth-b"]
    );
    assert!(port_row(&client, "veth-a").await.is_none());
    assert!(
        select(&client, "Interface", vec![Condition::eq("name", "veth-a")])
            .await
            .is_empty()
    );

    // Refusals.
    let err = switch
        .add_access_port("br-none", "veth-c", 5, BTreeMap::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, SwitchError::NoSuchBridge(ref b) if b == "br-none"),
        "{err}"
    );
    assert!(port_row(&client, "veth-c").await.is_none());
    let err = switch
        .add_access_port("br-spur", "veth-c", 4095, BTreeMap::new())
        .await
        .unwrap_err();
    assert!(matches!(err, SwitchError::InvalidVlan(4095)), "{err}");
    let err = switch
        .add_access_port("br-spur", "up0", 5, BTreeMap::new())
        .await
        .unwrap_err();
    assert!(matches!(err, SwitchError::PortConflict { .. }), "{err}");
    let err = switch.list_ports("br-none").await.unwrap_err();
    assert!(matches!(err, SwitchError::NoSuchBridge(_)), "{err}");
}

#[tokio::test]
async fn uplinks_are_reconciled_and_foreign_ports_survive() {
    let Some(server) = OvsdbServer::start().await else {
        return;
    };
    let client = server.client().await;

    // The bridge exists already, made by an administrator, with the Node's
    // management interface on it.
    let mut tx = Transaction::new();
    let iface = tx.insert(
        "Interface",
        Row::from([("name".into(), Datum::from("mgmt0"))]),
    );
    let port = tx.insert(
        "Port",
        Row::from([
            ("name".into(), Datum::from("mgmt0")),
            ("interfaces".into(), Datum::from(iface)),
        ]),
    );
    let br = tx.insert(
        "Bridge",
        Row::from([
            ("name".into(), Datum::from("br-spur")),
            ("ports".into(), Datum::Set(vec![port])),
        ]),
    );
    tx.push(Operation::insert(
        "Open_vSwitch",
        Row::from([("bridges".into(), Datum::Set(vec![br]))]),
    ));
    client.transact(OVS_DB, tx.ops()).await.unwrap();

    client
        .ensure_bridge(&spec(&["up0", "up1"], true))
        .await
        .unwrap();
    assert_eq!(
        names(&client.list_ports("br-spur").await.unwrap()),
        ["mgmt0", "up0", "up1"]
    );
    let br = &select(&client, "Bridge", vec![]).await[0];
    assert_eq!(br["datapath_type"].as_str(), Some("netdev"));
    assert_eq!(br["mcast_snooping_enable"].as_bool(), Some(true));

    // Another foreign port appears; the spec changes.
    add_foreign_port(&client, "br-spur", "eth9").await;
    client
        .ensure_bridge(&spec(&["up1", "up2"], false))
        .await
        .unwrap();
    let ports = client.list_ports("br-spur").await.unwrap();
    assert_eq!(names(&ports), ["eth9", "mgmt0", "up1", "up2"]);
    assert!(
        port_row(&client, "up0").await.is_none(),
        "removed uplink's Port row deleted"
    );
    assert!(
        select(&client, "Interface", vec![Condition::eq("name", "up0")])
            .await
            .is_empty()
    );
    let up1 = port_row(&client, "up1").await.unwrap();
    assert!(
        up1["other_config"].as_string_map().is_empty(),
        "flood-reports dropped with snooping"
    );
    let br = &select(&client, "Bridge", vec![]).await[0];
    assert_eq!(br["mcast_snooping_enable"].as_bool(), Some(false));

    // Snooping back on: kept uplinks get the flag again.
    client
        .ensure_bridge(&spec(&["up1", "up2"], true))
        .await
        .unwrap();
    for up in ["up1", "up2"] {
        let row = port_row(&client, up).await.unwrap();
        assert_eq!(
            row["other_config"].as_string_map()["mcast-snooping-flood-reports"],
            "true"
        );
    }

    // A foreign port is never taken over as an uplink.
    let err = client
        .ensure_bridge(&spec(&["up1", "mgmt0"], true))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SwitchError::PortConflict { ref port, .. } if port == "mgmt0"),
        "{err}"
    );
    assert_eq!(
        port_row(&client, "mgmt0").await.unwrap()["external_ids"].as_string_map(),
        BTreeMap::new()
    );

    // No uplinks at all: only what Spur did not create is left.
    client.ensure_bridge(&spec(&[], false)).await.unwrap();
    assert_eq!(
        names(&client.list_ports("br-spur").await.unwrap()),
        ["eth9", "mgmt0"]
    );
    // And Spur refuses to remove the management port through add/remove
    // of another bridge.
    assert!(!client.remove_port("br-other", "mgmt0").await.unwrap());
    assert!(port_row(&client, "mgmt0").await.is_some());
}

#[tokio::test]
async fn transaction_errors_report_the_failing_operation() {
    let Some(server) = OvsdbServer::start().await else {
        return;
    };
    let client = server.client().await;
    client.ensure_bridge(&spec(&[], false)).await.unwrap();

    // An operation fails: its index and what it was.
    let ops = [
        Operation::select("Bridge", vec![], &["name"]),
        Operation::update(
            "Bridge",
            vec![Condition::eq("name", "br-spur")],
            Row::from([("nope".into(), Datum::from(1i64))]),
        ),
        Operation::comment("never applied"),
    ];
    let err = client.transact(OVS_DB, &ops).await.unwrap_err();
    match &err {
        OvsdbError::OperationFailed {
            index, op, error, ..
        } => {
            assert_eq!(*index, 1);
            assert_eq!(op, "update Bridge");
            assert_eq!(error, "unknown column");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().contains("operation 1 (update Bridge)"),
        "{err}"
    );

    // The commit fails: a second bridge with the same (indexed) name.
    let mut tx = Transaction::new();
    let br = tx.insert(
        "Bridge",
        Row::from([("name".into(), Datum::from("br-spur"))]),
    );
    tx.push(Operation::mutate(
        "Open_vSwitch",
        vec![],
        vec![Mutation::insert("bridges", Datum::Set(vec![br]))],
    ));
    let err = client.transact(OVS_DB, tx.ops()).await.unwrap_err();
    assert!(
        matches!(err, OvsdbError::CommitFailed { ref error, .. } if error == "constraint violation"),
        "{err}"
    );
    assert_eq!(
        select(&client, "Bridge", vec![]).await.len(),
        1,
        "nothing applied"
    );
}

#[tokio::test]
async fn monitor_reports_inserted_modified_and_deleted_rows() {
    let Some(server) = OvsdbServer::start().await else {
        return;
    };
    let client = server.client().await;
    client.ensure_bridge(&spec(&[], false)).await.unwrap();

    let requests = BTreeMap::from([
        (
            "Port".to_string(),
            MonitorRequest::columns(&["name", "tag", "external_ids"]),
        ),
        (
            "Interface".to_string(),
            MonitorRequest::columns(&["name", "ofport"]),
        ),
    ]);
    let (initial, mut stream) = client
        .monitor(OVS_DB, "ports", requests.clone())
        .await
        .unwrap();
    assert_eq!(initial["Port"].len(), 1, "the local port");
    let local = initial["Port"].values().next().unwrap();
    assert_eq!(
        local.new.as_ref().unwrap()["name"].as_str(),
        Some("br-spur")
    );

    // The same id twice is refused locally; the first monitor lives on.
    let err = client.monitor(OVS_DB, "ports", requests).await.unwrap_err();
    assert!(matches!(err, OvsdbError::DuplicateMonitor(_)), "{err}");

    client
        .add_access_port("br-spur", "veth-m", 7, BTreeMap::new())
        .await
        .unwrap();
    let MonitorEvent::Update(update) = next_event(&mut stream).await else {
        panic!("expected an update")
    };
    let port = update["Port"].values().next().unwrap();
    assert!(port.old.is_none());
    let new = port.new.as_ref().unwrap();
    assert_eq!(new["name"].as_str(), Some("veth-m"));
    assert_eq!(new["tag"].as_optional_integer(), Some(7));
    let iface = update["Interface"].values().next().unwrap();
    assert_eq!(iface.new.as_ref().unwrap()["ofport"], Datum::empty_set());

    client
        .add_access_port("br-spur", "veth-m", 8, BTreeMap::new())
        .await
        .unwrap();
    let MonitorEvent::Update(update) = next_event(&mut stream).await else {
        panic!("expected an update")
    };
    let port = update["Port"].values().next().unwrap();
    assert_eq!(
        port.old.as_ref().unwrap()["tag"].as_optional_integer(),
        Some(7)
    );
    assert_eq!(
        port.new.as_ref().unwrap()["tag"].as_optional_integer(),
        Some(8)
    );

    client.remove_port("br-spur", "veth-m").await.unwrap();
    let MonitorEvent::Update(update) = next_event(&mut stream).await else {
        panic!("expected an update")
    };
    let port = update["Port"].values().next().unwrap();
    assert!(port.new.is_none());
    assert_eq!(port.old.as_ref().unwrap()["name"].as_str(), Some("veth-m"));

    // Dropping the stream cancels the monitor; the id can be used again.
    drop(stream);
    let mut again = None;
    for _ in 0..50 {
        let req = BTreeMap::from([("Bridge".to_string(), MonitorRequest::columns(&["name"]))]);
        match client.monitor(OVS_DB, "ports", req).await {
            Ok(m) => {
                again = Some(m);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let (initial, _stream) = again.expect("monitor id reusable after the stream was dropped");
    assert_eq!(initial["Bridge"].len(), 1);
}

#[tokio::test]
async fn reconnects_after_the_server_restarts() {
    let Some(mut server) = OvsdbServer::start().await else {
        return;
    };
    let client = server.client().await;
    client.ensure_bridge(&spec(&["up0"], false)).await.unwrap();
    let req = BTreeMap::from([("Port".to_string(), MonitorRequest::columns(&["name"]))]);
    let (initial, mut stream) = client.monitor(OVS_DB, "ports", req).await.unwrap();
    assert_eq!(initial["Port"].len(), 2);

    server.kill();
    wait_for("the client to notice", || !client.is_connected()).await;
    server.run().await;

    // Requests wait for the new connection (within their timeout).
    client
        .add_access_port("br-spur", "veth-r", 3, BTreeMap::new())
        .await
        .unwrap();
    assert!(
        client.reconnects() >= 1,
        "reconnects = {}",
        client.reconnects()
    );
    assert_eq!(
        names(&client.list_ports("br-spur").await.unwrap()),
        ["br-spur", "up0", "veth-r"]
    );

    // The monitor was re-established: a full snapshot, then changes again.
    let mut saw_resync = false;
    let mut saw_port = false;
    while !(saw_resync && saw_port) {
        match next_event(&mut stream).await {
            MonitorEvent::Resync(snapshot) => {
                saw_resync = true;
                saw_port |= snapshot["Port"]
                    .values()
                    .any(|u| u.new.as_ref().unwrap()["name"].as_str() == Some("veth-r"));
            }
            MonitorEvent::Update(update) => {
                assert!(saw_resync, "an update before the resync");
                saw_port |= update["Port"].values().any(|u| {
                    u.new
                        .as_ref()
                        .is_some_and(|n| n["name"].as_str() == Some("veth-r"))
                });
            }
        }
    }
    client.remove_port("br-spur", "veth-r").await.unwrap();
    let MonitorEvent::Update(update) = next_event(&mut stream).await else {
        panic!("expected an update")
    };
    assert!(update["Port"].values().all(|u| u.new.is_none()));
}

#[tokio::test]
async fn attach_watch_follows_ofport_and_error() {
    use spur_node::ovsdb::attach::{Attach, AttachWatch};
    let Some(server) = OvsdbServer::start().await else {
        return;
    };
    let client = server.client().await;
    client.ensure_bridge(&spec(&[], false)).await.unwrap();
    let watch = AttachWatch::start(&client).await.unwrap();
    assert_eq!(
        watch.get("br-spur"),
        Some(Attach::Pending),
        "no vswitchd here"
    );
    client
        .add_access_port("br-spur", "veth-a", 7, BTreeMap::new())
        .await
        .unwrap();
    // Play ovs-vswitchd: it refuses the interface, then attaches it.
    let set = |ofport: i64, error: Option<&str>| {
        let client = client.clone();
        let row: Row = BTreeMap::from([
            ("ofport".to_string(), Datum::Atom(Atom::Integer(ofport))),
            (
                "error".to_string(),
                error.map_or_else(Datum::empty_set, |e| Datum::Atom(Atom::String(e.into()))),
            ),
        ]);
        async move {
            let ops = [Operation::update(
                "Interface",
                vec![Condition::eq("name", "veth-a")],
                row,
            )];
            client.transact(OVS_DB, &ops).await.unwrap();
        }
    };
    set(
        -1,
        Some("could not open network device veth-a (No such device)"),
    )
    .await;
    let err = watch
        .wait("veth-a", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.contains("No such device"), "{err}");
    set(5, None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while watch.get("veth-a") != Some(Attach::Attached(5)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            watch.get("veth-a")
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(watch.wait("veth-a", Duration::from_secs(1)).await, Ok(5));
    client.remove_port("br-spur", "veth-a").await.unwrap();
    let err = watch
        .wait("veth-gone", Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(err.contains("within"), "{err}");
}
