//! The logic of `spur`, Spur's CNI plugin binary: a thin client of the
//! node agent `spur-agent`.
//!
//! What lives here:
//!
//! - [`run`] / [`run_with`]: one invocation from environment and stdin to
//!   what the plugin prints and its exit code ([`Outcome`]). VERSION is
//!   answered here; every other verb goes to the agent as one
//!   [`spur_core::cniproto::AgentRequest`] frame and its one
//!   [`spur_core::cniproto::AgentResponse`] frame is printed;
//! - [`Settings`]: where the agent listens ([`SOCKET_ENV`], else
//!   [`DEFAULT_SOCKET`]) and how long the exchange may take
//!   ([`TIMEOUT_ENV`], else [`DEFAULT_TIMEOUT_SECONDS`]);
//! - [`exchange`]: the unix-socket transport (connect, send, receive, all
//!   against one deadline) and its errors ([`TransportError`]), and
//!   [`transport_failure`], which maps them to CNI errors;
//! - [`answer`]: an agent response body to an [`Outcome`].
//!
//! What does not: parsing and validating the invocation, the result and
//! error formats, the message types and their framing (all in
//! [`spur_core::cniproto`]), and whatever the verbs do (the agent). The
//! plugin is on the Pod-start hot path: no async runtime, no logging
//! framework, nothing done before sending that the agent can do.
//!
//! Error codes the plugin itself answers with:
//!
//! | condition | code |
//! |---|---|
//! | invalid invocation | as [`Invocation::from_env`] says (1, 4, 6, 7) |
//! | invalid [`TIMEOUT_ENV`] | 4 |
//! | agent unreachable (socket missing, connection refused) | 11, STATUS 50 |
//! | other connect failures (permission denied, ...) | 5, STATUS 50 |
//! | timeout | 11 |
//! | I/O failure, answer cut short | 5 |
//! | answer oversized or not a response | 6 |
//! | agent of another protocol version | 1 |
//! | ADD answered with no result | 6 |

use std::fmt;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use spur_core::cni::CniVersion;
use spur_core::cniproto::{
    frame_body_len, version_answer, AgentResponse, CniError, Command, Invocation,
    FRAME_HEADER_BYTES,
};

/// The socket `spur-agent` serves the plugin on unless [`SOCKET_ENV`] says
/// otherwise (the agent's `cniSocket` default).
pub const DEFAULT_SOCKET: &str = spur_core::config::DEFAULT_CNI_SOCKET;

/// Environment variable: the agent's socket, when set and non-empty.
pub const SOCKET_ENV: &str = "SPUR_CNI_SOCKET";

/// Environment variable: seconds the whole exchange with the agent
/// (connect, send, receive) may take.
pub const TIMEOUT_ENV: &str = "SPUR_CNI_TIMEOUT_SECONDS";

/// [`TIMEOUT_ENV`] when unset: the agent bounds its own work to less.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 60;

/// The largest [`TIMEOUT_ENV`] accepted (one day).
pub const MAX_TIMEOUT_SECONDS: u64 = 86_400;

/// The exit code of every failure (the error is on stdout).
pub const EXIT_FAILURE: i32 = 1;

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

/// Where the agent is and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The agent's unix socket.
    pub socket: PathBuf,
    /// The bound on connect + send + receive.
    pub timeout: Duration,
}

impl Settings {
    /// Reads [`SOCKET_ENV`] and [`TIMEOUT_ENV`] (empty counts as unset).
    /// Code 4 naming the variable and its value when the timeout is not a
    /// whole number of seconds from 1 to [`MAX_TIMEOUT_SECONDS`].
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Settings, CniError> {
        let var = |name: &str| get(name).filter(|v| !v.is_empty());
        let socket = var(SOCKET_ENV).unwrap_or_else(|| DEFAULT_SOCKET.to_string());
        let seconds = match var(TIMEOUT_ENV) {
            None => DEFAULT_TIMEOUT_SECONDS,
            Some(text) => text
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| (1..=MAX_TIMEOUT_SECONDS).contains(s))
                .ok_or_else(|| {
                    CniError::invalid_environment(format!(
                        "{TIMEOUT_ENV}={text:?} is not a whole number of seconds from 1 to \
                         {MAX_TIMEOUT_SECONDS}"
                    ))
                })?,
        };
        Ok(Settings {
            socket: PathBuf::from(socket),
            timeout: Duration::from_secs(seconds),
        })
    }
}

// ---------------------------------------------------------------------------
// Outcome
// ---------------------------------------------------------------------------

/// What the plugin prints and how it exits.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The bytes for stdout: a result, an error object, or nothing.
    pub stdout: Vec<u8>,
    /// 0, or [`EXIT_FAILURE`].
    pub exit_code: i32,
    /// The error printed on stdout, for a one-line note on stderr.
    pub error: Option<CniError>,
}

impl Outcome {
    /// Success printing `value` (nothing when it is `Null`).
    pub fn success(value: &Value) -> Outcome {
        Outcome {
            stdout: if value.is_null() {
                Vec::new()
            } else {
                value.to_string().into_bytes()
            },
            exit_code: 0,
            error: None,
        }
    }

    /// Failure printing `error` as the error object of `version`.
    pub fn failure(error: CniError, version: CniVersion) -> Outcome {
        Outcome {
            stdout: error.to_json(version).to_string().into_bytes(),
            exit_code: EXIT_FAILURE,
            error: Some(error),
        }
    }
}

// ---------------------------------------------------------------------------
// Running an invocation
// ---------------------------------------------------------------------------

/// One invocation: `env` returns an environment variable's value, `stdin`
/// is what the runtime wrote. Talks to the agent over its unix socket.
pub fn run(env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    run_with(env, stdin, |settings, request| {
        exchange(&settings.socket, request, settings.timeout)
    })
}

/// [`run`] with another transport: `send` gets the settings and the framed
/// request and returns the body of the agent's answer. It is not called
/// for VERSION nor for an invalid invocation.
pub fn run_with(
    env: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    send: impl FnOnce(&Settings, &[u8]) -> Result<Vec<u8>, TransportError>,
) -> Outcome {
    let inv = match Invocation::from_env(&env, stdin) {
        Ok(inv) => inv,
        Err(e) => return Outcome::failure(e, error_version(stdin)),
    };
    let version = inv.cni_version;
    if inv.command == Command::Version {
        return Outcome::success(&version_answer(Some(version)));
    }
    let settings = match Settings::from_env(&env) {
        Ok(s) => s,
        Err(e) => return Outcome::failure(e, version),
    };
    let request = match inv.to_request().encode() {
        Ok(r) => r,
        Err(e) => return Outcome::failure(e, version),
    };
    match send(&settings, &request) {
        Ok(body) => answer(inv.command, version, &body, &settings.socket),
        Err(e) => Outcome::failure(transport_failure(inv.command, &e), version),
    }
}

/// The version to print an invocation error in: the config's
/// `cniVersion` when it is one Spur speaks, else the latest.
pub fn error_version(stdin: &[u8]) -> CniVersion {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .as_ref()
        .and_then(|c| c.get("cniVersion"))
        .and_then(Value::as_str)
        .and_then(|v| v.parse().ok())
        .unwrap_or(CniVersion::LATEST)
}

/// The outcome of the agent's answer `body` (a frame's payload) to
/// `command`, errors in `version`. A body that is not a response is code 6
/// naming `socket`; a response of another protocol version is code 1
/// ([`spur_core::cniproto::check_proto`]); ADD answered with `null` is
/// code 6 (the runtime needs a result).
pub fn answer(command: Command, version: CniVersion, body: &[u8], socket: &Path) -> Outcome {
    let response = match AgentResponse::decode(body) {
        Ok(r) => r,
        Err(mut e) => {
            e.msg = format!("{} (spur-agent at {})", e.msg, socket.display());
            return Outcome::failure(e, version);
        }
    };
    match response.result {
        Ok(Value::Null) if command == Command::Add => Outcome::failure(
            CniError::decode(format!(
                "spur-agent at {} answered ADD with no result (null); ADD must return one",
                socket.display()
            )),
            version,
        ),
        Ok(value) => Outcome::success(&value),
        Err(e) => Outcome::failure(e, version),
    }
}

// ---------------------------------------------------------------------------
// Transport
// ---------------------------------------------------------------------------

/// Which part of the exchange with the agent failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Connecting to the socket.
    Connect,
    /// Writing the request.
    Send,
    /// Reading the answer.
    Receive,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connecting",
            Stage::Send => "sending the request",
            Stage::Receive => "waiting for the answer",
        })
    }
}

/// Why the exchange with the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The socket could not be connected to.
    #[error("cannot connect to spur-agent at {}: {source}", path.display())]
    Connect {
        /// The agent's socket.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The deadline passed.
    #[error(
        "spur-agent at {} did not answer within {} s ({TIMEOUT_ENV}); the plugin was {stage}",
        path.display(),
        timeout.as_secs()
    )]
    TimedOut {
        /// The agent's socket.
        path: PathBuf,
        /// What the plugin was doing.
        stage: Stage,
        /// The bound that passed.
        timeout: Duration,
    },
    /// Reading or writing failed.
    #[error("I/O error with spur-agent at {} while {stage}: {source}", path.display())]
    Io {
        /// The agent's socket.
        path: PathBuf,
        /// What the plugin was doing.
        stage: Stage,
        /// The OS error.
        source: io::Error,
    },
    /// The agent closed the connection before a whole answer arrived.
    #[error(
        "spur-agent at {} closed the connection after {got} bytes of an answer of {}",
        path.display(),
        want.map_or_else(|| format!("at least {FRAME_HEADER_BYTES}"), |w| w.to_string())
    )]
    CutShort {
        /// The agent's socket.
        path: PathBuf,
        /// Bytes of the frame received.
        got: usize,
        /// The frame's size, when its header arrived.
        want: Option<usize>,
    },
    /// The answer's header announces more than the protocol allows.
    #[error("{} (spur-agent at {})", error.msg, path.display())]
    Oversized {
        /// The agent's socket.
        path: PathBuf,
        /// The framing error (code 6).
        error: CniError,
    },
}

/// The CNI error the plugin prints for a failed exchange of `command`.
/// The agent being absent (no socket, connection refused) is code 11 (try
/// again later), 50 (plugin not available) for STATUS, and says that
/// spur-agent is not running on this node; other connect failures are 5
/// (STATUS 50); a timeout is 11 naming it; an answer cut short or an
/// I/O error is 5; an oversized answer is 6.
pub fn transport_failure(command: Command, error: &TransportError) -> CniError {
    let status = command == Command::Status;
    match error {
        TransportError::Connect { path, source } => {
            let absent = matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            );
            let msg = if absent {
                format!(
                    "spur-agent is not running on this node: cannot connect to {}: {source}",
                    path.display()
                )
            } else {
                error.to_string()
            };
            let e = match (status, absent) {
                (true, _) => CniError::plugin_not_available(msg),
                (false, true) => CniError::try_again_later(msg),
                (false, false) => CniError::io(msg),
            };
            e.with_details(format!(
                "the spur plugin hands every CNI request to the spur-agent DaemonSet Pod of \
                 the node through {}; {SOCKET_ENV} names another socket",
                path.display()
            ))
        }
        TransportError::TimedOut { .. } => CniError::try_again_later(error.to_string()),
        TransportError::Io { .. } | TransportError::CutShort { .. } => {
            CniError::io(error.to_string())
        }
        TransportError::Oversized { .. } => CniError::decode(error.to_string()),
    }
}

/// Sends the framed `request` to the agent at `socket` and returns the
/// body of its answer frame. Connecting, sending and receiving together
/// take at most `timeout` (connect runs on a helper thread, as a blocking
/// unix connect cannot be bounded otherwise; socket timeouts bound the
/// rest). The write half is shut after the request, so an agent may read
/// either one frame or up to end of stream.
pub fn exchange(
    socket: &Path,
    request: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, TransportError> {
    let deadline = Instant::now() + timeout;
    let timed_out = |stage| TransportError::TimedOut {
        path: socket.to_path_buf(),
        stage,
        timeout,
    };
    let io_error = |stage, source| TransportError::Io {
        path: socket.to_path_buf(),
        stage,
        source,
    };
    let classify = |stage, e: io::Error| {
        if is_timeout(&e) {
            timed_out(stage)
        } else {
            io_error(stage, e)
        }
    };

    let mut stream = connect(socket, deadline).map_err(|e| match e {
        ConnectError::TimedOut => timed_out(Stage::Connect),
        ConnectError::Os(source) => TransportError::Connect {
            path: socket.to_path_buf(),
            source,
        },
    })?;

    write_all_by(&mut stream, request, deadline).map_err(|e| classify(Stage::Send, e))?;
    // The agent may already have answered and closed: its answer tells.
    let _ = stream.shutdown(Shutdown::Write);

    let mut header = [0u8; FRAME_HEADER_BYTES];
    let got = read_full_by(&mut stream, &mut header, deadline)
        .map_err(|e| classify(Stage::Receive, e))?;
    if got < FRAME_HEADER_BYTES {
        return Err(TransportError::CutShort {
            path: socket.to_path_buf(),
            got,
            want: None,
        });
    }
    let len = frame_body_len(header).map_err(|error| TransportError::Oversized {
        path: socket.to_path_buf(),
        error,
    })?;
    let mut body = vec![0u8; len];
    let got =
        read_full_by(&mut stream, &mut body, deadline).map_err(|e| classify(Stage::Receive, e))?;
    if got < len {
        return Err(TransportError::CutShort {
            path: socket.to_path_buf(),
            got: FRAME_HEADER_BYTES + got,
            want: Some(FRAME_HEADER_BYTES + len),
        });
    }
    Ok(body)
}

enum ConnectError {
    TimedOut,
    Os(io::Error),
}

/// Connects before `deadline`. The connect runs on a thread (left behind
/// when the deadline passes; the process exits soon after) because a unix
/// connect to a listener whose backlog is full blocks without bound.
fn connect(path: &Path, deadline: Instant) -> Result<UnixStream, ConnectError> {
    let (tx, rx) = mpsc::sync_channel(1);
    let owned = path.to_path_buf();
    let spawned = thread::Builder::new()
        .name("spur-connect".into())
        .spawn(move || {
            // The receiver is gone only when the deadline passed.
            let _ = tx.send(UnixStream::connect(owned));
        });
    if spawned.is_err() {
        // No thread to be had: connect unbounded rather than not at all.
        return UnixStream::connect(path).map_err(ConnectError::Os);
    }
    let wait = remaining(deadline).ok_or(ConnectError::TimedOut)?;
    match rx.recv_timeout(wait) {
        Ok(result) => result.map_err(ConnectError::Os),
        Err(RecvTimeoutError::Timeout) => Err(ConnectError::TimedOut),
        Err(RecvTimeoutError::Disconnected) => Err(ConnectError::Os(io::Error::other(
            "the connecting thread ended without a result",
        ))),
    }
}

/// Time left before `deadline`, `None` once it passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn deadline_passed() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "deadline passed")
}

/// Writes all of `buf`, each write bounded by the time left.
fn write_all_by(stream: &mut UnixStream, mut buf: &[u8], deadline: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        stream.set_write_timeout(Some(remaining(deadline).ok_or_else(deadline_passed)?))?;
        match stream.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Fills `buf` unless the stream ends first; returns the bytes read. Each
/// read is bounded by the time left.
fn read_full_by(stream: &mut UnixStream, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        stream.set_read_timeout(Some(remaining(deadline).ok_or_else(deadline_passed)?))?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use spur_core::cniproto::{decode_frame, encode_frame, AgentRequest};
    use std::cell::Cell;
    use std::collections::BTreeMap;
    use std::os::unix::net::UnixListener;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const ADD_ENV: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "net1"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"),
    ];

    fn config(version: &str) -> Vec<u8> {
        json!({"cniVersion": version, "name": "vlan100", "type": "spur"})
            .to_string()
            .into_bytes()
    }

    fn body(resp: &AgentResponse) -> Vec<u8> {
        decode_frame(&resp.encode().unwrap()).unwrap().to_vec()
    }

    fn printed(o: &Outcome) -> Value {
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn sock() -> &'static Path {
        Path::new("/run/test/cni.sock")
    }

    #[test]
    fn settings_default_and_override() {
        let s = Settings::from_env(env_of(&[])).unwrap();
        assert_eq!(s.socket, PathBuf::from("/var/run/spur/cni.sock"));
        assert_eq!(s.timeout, Duration::from_secs(60));
        let s = Settings::from_env(env_of(&[(SOCKET_ENV, ""), (TIMEOUT_ENV, "")])).unwrap();
        assert_eq!(s.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(s.timeout, Duration::from_secs(60));
        let s = Settings::from_env(env_of(&[(SOCKET_ENV, "/tmp/a.sock"), (TIMEOUT_ENV, " 5 ")]))
            .unwrap();
        assert_eq!(s.socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(s.timeout, Duration::from_secs(5));
        assert_eq!(
            Settings::from_env(env_of(&[(TIMEOUT_ENV, "86400")]))
                .unwrap()
                .timeout
                .as_secs(),
            MAX_TIMEOUT_SECONDS
        );
    }

    #[test]
    fn settings_refuse_bad_timeouts_naming_them() {
        for bad in ["0", "-1", "1.5", "ten", "86401", "99999999999999999999999"] {
            let e = Settings::from_env(env_of(&[(TIMEOUT_ENV, bad)])).unwrap_err();
            assert_eq!(e.code, 4, "{bad}");
            assert!(e.msg.contains(TIMEOUT_ENV), "{e}");
            assert!(e.msg.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn version_is_answered_without_sending() {
        let o = run_with(env_of(&[("CNI_COMMAND", "VERSION")]), b"", |_, _| {
            panic!("VERSION must not reach the agent")
        });
        assert_eq!(o.exit_code, 0);
        let v = printed(&o);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
        let o = run_with(
            env_of(&[("CNI_COMMAND", "VERSION"), (TIMEOUT_ENV, "bad")]),
            &config("0.4.0"),
            |_, _| panic!("VERSION must not reach the agent"),
        );
        assert_eq!(o.exit_code, 0);
        assert_eq!(printed(&o)["cniVersion"], "0.4.0");
    }

    #[test]
    fn invalid_invocations_are_not_sent_and_print_in_the_asked_version() {
        let o = run_with(
            env_of(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "net1")]),
            &config("0.4.0"),
            |_, _| panic!("an invalid invocation must not reach the agent"),
        );
        assert_eq!(o.exit_code, EXIT_FAILURE);
        let v = printed(&o);
        assert_eq!(v["code"], 4);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert!(
            v["msg"].as_str().unwrap().contains("CNI_CONTAINERID"),
            "{v}"
        );
        assert_eq!(o.error.unwrap().code, 4);

        // Unknown version: the error is in the latest.
        let o = run_with(env_of(&ADD_ENV), &config("0.2.0"), |_, _| {
            panic!("must not be sent")
        });
        assert_eq!(printed(&o)["code"], 1);
        assert_eq!(printed(&o)["cniVersion"], "1.1.0");

        // A bad timeout is an invalid environment too.
        let mut e = ADD_ENV.to_vec();
        e.push((TIMEOUT_ENV, "0"));
        let o = run_with(env_of(&e), &config("1.0.0"), |_, _| {
            panic!("must not be sent")
        });
        assert_eq!(printed(&o)["code"], 4);
        assert_eq!(printed(&o)["cniVersion"], "1.0.0");
    }

    #[test]
    fn error_version_reads_what_it_can() {
        assert_eq!(error_version(b""), CniVersion::LATEST);
        assert_eq!(error_version(b"{"), CniVersion::LATEST);
        assert_eq!(error_version(b"[]"), CniVersion::LATEST);
        assert_eq!(error_version(br#"{"cniVersion": 1}"#), CniVersion::LATEST);
        assert_eq!(
            error_version(br#"{"cniVersion": "0.3.1"}"#),
            CniVersion::V0_3_1
        );
    }

    #[test]
    fn the_request_carries_the_invocation() {
        let sent = Cell::new(false);
        let result = json!({"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.0.0.2/24"}], "dns": {}});
        let o = run_with(env_of(&ADD_ENV), &config("0.3.1"), |s, frame| {
            sent.set(true);
            assert_eq!(s.socket, PathBuf::from(DEFAULT_SOCKET));
            let req = AgentRequest::decode(decode_frame(frame).unwrap()).unwrap();
            assert_eq!(req.command, Command::Add);
            assert_eq!(req.container_id.as_deref(), Some("c0ffee"));
            assert_eq!(req.netns.as_deref(), Some("/var/run/netns/x"));
            assert_eq!(req.ifname.as_deref(), Some("net1"));
            assert_eq!(req.args["K8S_POD_NAME"], "web-0");
            assert_eq!(req.cni_version, CniVersion::V0_3_1);
            assert_eq!(req.config["name"], "vlan100");
            Ok(body(&AgentResponse::ok(result.clone())))
        });
        assert!(sent.get());
        assert_eq!(o.exit_code, 0);
        assert_eq!(o.stdout, result.to_string().into_bytes());
        assert_eq!(o.error, None);
    }

    #[test]
    fn answers() {
        let v = CniVersion::V1_0_0;
        // Null prints nothing for every verb but ADD.
        for c in [Command::Del, Command::Check, Command::Status, Command::Gc] {
            let o = answer(c, v, &body(&AgentResponse::ok(Value::Null)), sock());
            assert_eq!((o.stdout.len(), o.exit_code), (0, 0), "{c}");
        }
        let o = answer(
            Command::Add,
            v,
            &body(&AgentResponse::ok(Value::Null)),
            sock(),
        );
        assert_eq!(o.exit_code, EXIT_FAILURE);
        assert_eq!(printed(&o)["code"], 6);
        assert!(printed(&o)["msg"].as_str().unwrap().contains("ADD"));

        // The agent's error, in the version asked for, details included.
        let e = CniError::exhausted("pool vlan100-ipv4 is exhausted").with_details("82 of 82");
        let o = answer(
            Command::Add,
            v,
            &body(&AgentResponse::err(e.clone())),
            sock(),
        );
        assert_eq!(o.exit_code, EXIT_FAILURE);
        assert_eq!(
            printed(&o),
            json!({"cniVersion": "1.0.0", "code": 100, "msg": "pool vlan100-ipv4 is exhausted", "details": "82 of 82"})
        );
        assert_eq!(o.error, Some(e));

        // Garbage and other protocols.
        let o = answer(Command::Del, v, b"not json", sock());
        assert_eq!(printed(&o)["code"], 6);
        assert!(printed(&o)["msg"]
            .as_str()
            .unwrap()
            .contains("/run/test/cni.sock"));
        let o = answer(
            Command::Del,
            v,
            json!({"proto": 9, "result": {"Ok": null}})
                .to_string()
                .as_bytes(),
            sock(),
        );
        assert_eq!(printed(&o)["code"], 1);
        assert!(printed(&o)["msg"]
            .as_str()
            .unwrap()
            .contains("spur-agent speaks 9"));
    }

    fn os(kind: io::ErrorKind) -> io::Error {
        io::Error::from(kind)
    }

    #[test]
    fn transport_failures_map_to_codes() {
        let path = PathBuf::from("/run/x/cni.sock");
        let connect = |kind| TransportError::Connect {
            path: path.clone(),
            source: os(kind),
        };
        for kind in [io::ErrorKind::NotFound, io::ErrorKind::ConnectionRefused] {
            for c in [Command::Add, Command::Del, Command::Check, Command::Gc] {
                let e = transport_failure(c, &connect(kind));
                assert_eq!(e.code, 11, "{c} {kind:?}");
                assert!(e.msg.contains("/run/x/cni.sock"), "{e}");
                assert!(
                    e.msg.contains("spur-agent is not running on this node"),
                    "{e}"
                );
            }
            assert_eq!(transport_failure(Command::Status, &connect(kind)).code, 50);
        }
        let denied = connect(io::ErrorKind::PermissionDenied);
        let e = transport_failure(Command::Add, &denied);
        assert_eq!(e.code, 5);
        assert!(!e.msg.contains("not running"), "{e}");
        assert_eq!(transport_failure(Command::Status, &denied).code, 50);

        let slow = TransportError::TimedOut {
            path: path.clone(),
            stage: Stage::Receive,
            timeout: Duration::from_secs(7),
        };
        let e = transport_failure(Command::Add, &slow);
        assert_eq!(e.code, 11);
        assert!(e.msg.contains("7 s"), "{e}");
        assert!(e.msg.contains(TIMEOUT_ENV), "{e}");
        assert!(e.msg.contains("waiting for the answer"), "{e}");

        let cut = TransportError::CutShort {
            path: path.clone(),
            got: 2,
            want: None,
        };
        let e = transport_failure(Command::Del, &cut);
        assert_eq!(e.code, 5);
        assert!(
            e.msg.contains("after 2 bytes of an answer of at least 4"),
            "{e}"
        );
        let cut = TransportError::CutShort {
            path: path.clone(),
            got: 10,
            want: Some(20),
        };
        assert!(transport_failure(Command::Del, &cut)
            .msg
            .contains("after 10 bytes of an answer of 20"));

        let big = TransportError::Oversized {
            path: path.clone(),
            error: frame_body_len([0xff; 4]).unwrap_err(),
        };
        let e = transport_failure(Command::Add, &big);
        assert_eq!(e.code, 6);
        assert!(e.msg.contains("/run/x/cni.sock"), "{e}");

        let io_err = TransportError::Io {
            path,
            stage: Stage::Send,
            source: os(io::ErrorKind::BrokenPipe),
        };
        let e = transport_failure(Command::Add, &io_err);
        assert_eq!(e.code, 5);
        assert!(e.msg.contains("sending the request"), "{e}");
    }

    /// A listener that serves one connection with `serve` on a thread.
    fn serve_one(
        serve: impl FnOnce(UnixStream) + Send + 'static,
    ) -> (tempfile::TempDir, PathBuf, thread::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            serve(s);
        });
        (dir, path, t)
    }

    fn read_request(s: &mut UnixStream) -> Vec<u8> {
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        decode_frame(&all).unwrap().to_vec()
    }

    #[test]
    fn exchange_round_trip_reading_to_end_of_stream() {
        let (_dir, path, t) = serve_one(|mut s| {
            // Works only because the plugin shuts its write half.
            let got = read_request(&mut s);
            assert_eq!(got, b"hello");
            s.write_all(&encode_frame(b"world").unwrap()).unwrap();
        });
        let frame = encode_frame(b"hello").unwrap();
        let answer = exchange(&path, &frame, Duration::from_secs(10)).unwrap();
        assert_eq!(answer, b"world");
        t.join().unwrap();
    }

    #[test]
    fn exchange_failures() {
        let frame = encode_frame(b"{}").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.sock");
        match exchange(&missing, &frame, Duration::from_secs(5)) {
            Err(TransportError::Connect { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::NotFound)
            }
            other => panic!("{other:?}"),
        }
        // A socket file nobody listens on.
        let stale = dir.path().join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        match exchange(&stale, &frame, Duration::from_secs(5)) {
            Err(TransportError::Connect { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused)
            }
            other => panic!("{other:?}"),
        }

        let (_d, path, t) = serve_one(|mut s| {
            read_request(&mut s);
            s.write_all(&[0, 0, 0, 9, b'{']).unwrap();
        });
        match exchange(&path, &frame, Duration::from_secs(10)) {
            Err(TransportError::CutShort { got, want, .. }) => {
                assert_eq!((got, want), (5, Some(13)))
            }
            other => panic!("{other:?}"),
        }
        t.join().unwrap();

        let (_d, path, t) = serve_one(|mut s| {
            read_request(&mut s);
            s.write_all(&[0x7f, 0, 0, 0]).unwrap();
        });
        match exchange(&path, &frame, Duration::from_secs(10)) {
            Err(TransportError::Oversized { error, .. }) => assert_eq!(error.code, 6),
            other => panic!("{other:?}"),
        }
        t.join().unwrap();

        let (done_tx, done_rx) = mpsc::channel::<()>();
        let (_d, path, t) = serve_one(move |mut s| {
            read_request(&mut s);
            // Hold the connection without answering until the plugin gave up.
            let _ = done_rx.recv();
        });
        let start = Instant::now();
        match exchange(&path, &frame, Duration::from_secs(1)) {
            Err(TransportError::TimedOut { stage, .. }) => assert_eq!(stage, Stage::Receive),
            other => panic!("{other:?}"),
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(900), "{took:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");
        done_tx.send(()).unwrap();
        t.join().unwrap();
    }
}
