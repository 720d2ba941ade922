//! One persistent OVSDB connection over a unix socket.
//!
//! A [`Client`] (cheap to clone; all clones share the connection) owns a
//! background task that connects, reads the stream, cuts it into JSON
//! texts ([`JsonSplitter`]) and dispatches them:
//!
//! - responses go to the request waiting for their `id` (ids are numbers
//!   that never repeat over the client's life, so an answer to a request
//!   from a dropped connection cannot be mistaken for another);
//! - `echo` requests from the server are answered with the same params;
//! - `update` notifications go to the [`MonitorStream`] of their monitor id.
//!
//! When the connection ends (EOF or an error) the task fails the requests
//! in flight with [`OvsdbError::Disconnected`] (they may or may not have
//! been applied), reconnects with exponential backoff, counts the
//! reconnection ([`Client::reconnects`]), and re-sends every live monitor:
//! its new initial snapshot arrives on the stream as
//! [`MonitorEvent::Resync`], to replace what the consumer knew. Requests
//! made while disconnected wait for the connection, within their timeout.
//!
//! Writes go through one async mutex over the socket's write half; the
//! reader task never waits on it (its echo replies and monitor
//! cancellations are written by spawned tasks), so a slow writer cannot
//! stall reading.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::error::OvsdbError;
use super::proto::{
    monitor_params, parse_table_updates, parse_transact_result, transact_params, Message,
    MonitorRequest, Operation, TableUpdates,
};
use super::split::{JsonSplitter, SplitError};

/// How to reach the server and how patient to be.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The server's unix socket (e.g. `/var/run/openvswitch/db.sock`).
    pub socket: PathBuf,
    /// How long a request may wait for a connection and an answer.
    pub request_timeout: Duration,
    /// First delay before reconnecting after a failed attempt.
    pub backoff_initial: Duration,
    /// Longest delay between reconnection attempts.
    pub backoff_max: Duration,
    /// Longest message accepted from the server; a longer one drops the
    /// connection.
    pub max_message_bytes: usize,
}

impl ClientConfig {
    /// Defaults: 10 s per request, reconnect backoff from 50 ms to 5 s,
    /// messages up to 64 MiB.
    pub fn new(socket: impl Into<PathBuf>) -> ClientConfig {
        ClientConfig {
            socket: socket.into(),
            request_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            max_message_bytes: 64 << 20,
        }
    }
}

/// What a monitor reports after its initial snapshot.
#[derive(Clone, Debug, PartialEq)]
pub enum MonitorEvent {
    /// Rows changed (an `update` notification).
    Update(TableUpdates),
    /// The connection was re-established and the monitor re-sent: this is
    /// the full current contents of the monitored tables, replacing
    /// everything known before (changes during the outage are not reported
    /// one by one).
    Resync(TableUpdates),
}

/// The changes reported by one monitor, in order. Ends (`None`) when the
/// client shuts down or the monitor could not be re-established after a
/// reconnection. Dropping it cancels the monitor on the server.
#[derive(Debug)]
pub struct MonitorStream {
    id: String,
    rx: mpsc::UnboundedReceiver<MonitorEvent>,
    shared: Weak<Shared>,
}

impl MonitorStream {
    /// The monitor id given to [`Client::monitor`].
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next event; `None` when the stream has ended.
    pub async fn next_event(&mut self) -> Option<MonitorEvent> {
        self.rx.recv().await
    }
}

impl futures::Stream for MonitorStream {
    type Item = MonitorEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MonitorEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for MonitorStream {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            if lock(&shared.monitors).remove(&self.id).is_some() {
                cancel_monitor(&shared, self.id.clone());
            }
        }
    }
}

/// A client of one OVSDB server over one persistent unix-socket
/// connection. Clones share the connection; the background task stops
/// when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Client {
    handle: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

#[derive(Debug)]
struct Shared {
    cfg: ClientConfig,
    next_id: AtomicU64,
    reconnects: AtomicU64,
    pending: Mutex<BTreeMap<u64, Pending>>,
    monitors: Mutex<BTreeMap<String, MonitorReg>>,
    writer: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    connected: watch::Sender<bool>,
}

#[derive(Debug)]
enum Pending {
    /// A caller waits for the answer.
    Caller {
        method: String,
        /// The monitor this request creates, to forget if it fails.
        monitor: Option<String>,
        tx: oneshot::Sender<Result<Value, OvsdbError>>,
    },
    /// A monitor re-sent after reconnecting: its answer goes to the stream.
    Resync { monitor: String },
    /// Nobody waits (e.g. `monitor_cancel`).
    Ignore,
}

#[derive(Debug)]
struct MonitorReg {
    db: String,
    requests: BTreeMap<String, MonitorRequest>,
    tx: mpsc::UnboundedSender<MonitorEvent>,
}

impl Client {
    /// Connects to the server at `cfg.socket`. Fails if that first
    /// connection cannot be made; later losses are repaired in the
    /// background.
    pub async fn connect(cfg: ClientConfig) -> Result<Client, OvsdbError> {
        let stream =
            UnixStream::connect(&cfg.socket)
                .await
                .map_err(|source| OvsdbError::Connect {
                    path: cfg.socket.clone(),
                    source,
                })?;
        info!(socket = %cfg.socket.display(), "connected to OVSDB");
        let (connected, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            cfg,
            next_id: AtomicU64::new(1),
            reconnects: AtomicU64::new(0),
            pending: Mutex::new(BTreeMap::new()),
            monitors: Mutex::new(BTreeMap::new()),
            writer: tokio::sync::Mutex::new(None),
            connected,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(supervise(shared.clone(), stream, shutdown_rx));
        Ok(Client {
            handle: Arc::new(Handle { shared, shutdown }),
        })
    }

    /// How many times the connection was lost and re-established.
    pub fn reconnects(&self) -> u64 {
        self.handle.shared.reconnects.load(Ordering::Relaxed)
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        *self.handle.shared.connected.borrow()
    }

    /// Sends any request and returns its `result`.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        request(&self.handle.shared, method, params, None).await
    }

    /// The databases the server holds (`list_dbs`).
    pub async fn list_dbs(&self) -> Result<Vec<String>, OvsdbError> {
        let result = self.call("list_dbs", json!([])).await?;
        result
            .as_array()
            .map(|dbs| {
                dbs.iter()
                    .filter_map(|d| d.as_str().map(str::to_owned))
                    .collect()
            })
            .ok_or_else(|| {
                OvsdbError::Malformed(format!("list_dbs result is not an array: {result}"))
            })
    }

    /// The schema of `db` (`get_schema`), as JSON.
    pub async fn get_schema(&self, db: &str) -> Result<Value, OvsdbError> {
        self.call("get_schema", json!([db])).await
    }

    /// Asks the server to echo `params` back (a liveness check).
    pub async fn echo(&self, params: Value) -> Result<Value, OvsdbError> {
        self.call("echo", params).await
    }

    /// Runs `ops` as one transaction on `db`: all of them apply or none.
    /// Returns one result per operation; a failing operation aborts the
    /// transaction and is reported with its index
    /// ([`OvsdbError::OperationFailed`]), a failing commit as
    /// [`OvsdbError::CommitFailed`].
    pub async fn transact(&self, db: &str, ops: &[Operation]) -> Result<Vec<Value>, OvsdbError> {
        debug!(db, ops = ops.len(), "OVSDB transact");
        let result = self.call("transact", transact_params(db, ops)).await?;
        parse_transact_result(ops, &result)
    }

    /// Starts monitor `id` on `db` for `requests` (table name to what to
    /// watch): returns the initial contents and the stream of later
    /// changes. `id` must not be in use by another live monitor of this
    /// client.
    pub async fn monitor(
        &self,
        db: &str,
        id: &str,
        requests: BTreeMap<String, MonitorRequest>,
    ) -> Result<(TableUpdates, MonitorStream), OvsdbError> {
        let shared = &self.handle.shared;
        let (tx, rx) = mpsc::unbounded_channel();
        let ours = tx.clone();
        let params = monitor_params(db, id, &requests);
        let reg = MonitorReg {
            db: db.to_owned(),
            requests,
            tx,
        };
        let result = match request(shared, "monitor", params, Some((id.to_owned(), reg))).await {
            Ok(result) => result,
            Err(e) => {
                // Forget the registration if it is still ours (never a
                // live monitor's that had the same id).
                let mut monitors = lock(&shared.monitors);
                if monitors
                    .get(id)
                    .is_some_and(|reg| reg.tx.same_channel(&ours))
                {
                    monitors.remove(id);
                    drop(monitors);
                    if matches!(e, OvsdbError::Timeout { .. }) {
                        cancel_monitor(shared, id.to_owned());
                    }
                }
                return Err(e);
            }
        };
        drop(ours);
        let stream = MonitorStream {
            id: id.to_owned(),
            rx,
            shared: Arc::downgrade(shared),
        };
        let initial = parse_table_updates(&result)?; // dropping `stream` cancels
        Ok((initial, stream))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends one request and waits for its answer; `monitor` is registered
/// under the writer lock, just before the request is written.
async fn request(
    shared: &Arc<Shared>,
    method: &str,
    params: Value,
    mut monitor: Option<(String, MonitorReg)>,
) -> Result<Value, OvsdbError> {
    let timeout = shared.cfg.request_timeout;
    let deadline = Instant::now() + timeout;
    let timed_out = || OvsdbError::Timeout {
        method: method.to_owned(),
        timeout,
    };
    let mut connected = shared.connected.subscribe();
    loop {
        match tokio::time::timeout_at(deadline, connected.wait_for(|up| *up)).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(_)) => return Err(OvsdbError::Closed),
            Ok(Ok(_)) => {}
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let text = Message::Request {
            id: json!(id),
            method: method.to_owned(),
            params: params.clone(),
        }
        .to_json()
        .to_string();
        let (tx, rx) = oneshot::channel();
        {
            let mut writer = match tokio::time::timeout_at(deadline, shared.writer.lock()).await {
                Ok(w) => w,
                Err(_) => return Err(timed_out()),
            };
            let Some(w) = writer.as_mut() else {
                continue; // lost between the wait and the lock: wait again
            };
            let monitor_id = match monitor.take() {
                Some((mid, reg)) => {
                    let mut monitors = lock(&shared.monitors);
                    if monitors.contains_key(&mid) {
                        return Err(OvsdbError::DuplicateMonitor(mid));
                    }
                    monitors.insert(mid.clone(), reg);
                    Some(mid)
                }
                None => None,
            };
            {
                let mut pending = lock(&shared.pending);
                if pending.len() >= 64 {
                    pending
                        .retain(|_, p| !matches!(p, Pending::Caller { tx, .. } if tx.is_closed()));
                }
                pending.insert(
                    id,
                    Pending::Caller {
                        method: method.to_owned(),
                        monitor: monitor_id.clone(),
                        tx,
                    },
                );
            }
            let written = tokio::time::timeout_at(deadline, w.write_all(text.as_bytes())).await;
            if !matches!(written, Ok(Ok(()))) {
                lock(&shared.pending).remove(&id);
                if let Some(mid) = monitor_id {
                    lock(&shared.monitors).remove(&mid);
                }
                return Err(match written {
                    Err(_) => timed_out(),
                    _ => OvsdbError::Disconnected {
                        method: method.to_owned(),
                    },
                });
            }
        }
        return match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(OvsdbError::Disconnected {
                method: method.to_owned(),
            }),
            Err(_) => {
                // A late answer is dropped; a monitor's registration is
                // dealt with by `Client::monitor`.
                lock(&shared.pending).remove(&id);
                Err(timed_out())
            }
        };
    }
}

/// The connection's life: read until it ends, then reconnect, until the
/// client is dropped.
async fn supervise(shared: Arc<Shared>, first: UnixStream, mut shutdown: watch::Receiver<bool>) {
    let mut stream = Some(first);
    loop {
        let conn = match stream.take() {
            Some(s) => s,
            None => match reconnect(&shared, &mut shutdown).await {
                Some(s) => s,
                None => break,
            },
        };
        let (rd, wr) = conn.into_split();
        {
            let mut writer = shared.writer.lock().await;
            let mut wr = wr;
            resubscribe(&shared, &mut wr).await;
            *writer = Some(wr);
        }
        shared.connected.send_replace(true);
        // A shutdown wins over what the connection has to say.
        let reason = tokio::select! {
            biased;
            _ = shutdown.changed() => {
                teardown(&shared, false).await;
                break;
            }
            reason = read_loop(&shared, rd) => reason,
        };
        warn!(socket = %shared.cfg.socket.display(), %reason, "OVSDB connection lost; reconnecting");
        teardown(&shared, true).await;
    }
    // Shut down: end every monitor stream.
    lock(&shared.monitors).clear();
    debug!("OVSDB client stopped");
}

/// Marks the connection down, drops the write half and fails the requests
/// in flight (`lost`: the connection ended; otherwise the client shut
/// down).
async fn teardown(shared: &Shared, lost: bool) {
    shared.connected.send_replace(false);
    *shared.writer.lock().await = None;
    let pending: Vec<Pending> = std::mem::take(&mut *lock(&shared.pending))
        .into_values()
        .collect();
    for p in pending {
        if let Pending::Caller { method, tx, .. } = p {
            let err = if lost {
                OvsdbError::Disconnected { method }
            } else {
                OvsdbError::Closed
            };
            let _ = tx.send(Err(err));
        }
    }
}

/// Connects again, with exponential backoff; `None` when shut down first.
async fn reconnect(shared: &Shared, shutdown: &mut watch::Receiver<bool>) -> Option<UnixStream> {
    let mut backoff = shared.cfg.backoff_initial;
    let mut attempts = 0u64;
    loop {
        if *shutdown.borrow() {
            return None;
        }
        attempts += 1;
        match UnixStream::connect(&shared.cfg.socket).await {
            Ok(s) => {
                let n = shared.reconnects.fetch_add(1, Ordering::Relaxed) + 1;
                info!(socket = %shared.cfg.socket.display(), attempts, reconnects = n, "reconnected to OVSDB");
                return Some(s);
            }
            Err(e) => {
                debug!(socket = %shared.cfg.socket.display(), error = %e, ?backoff, "OVSDB reconnect failed");
                if attempts == 10 {
                    warn!(socket = %shared.cfg.socket.display(), error = %e, "OVSDB still unreachable; retrying");
                }
            }
        }
        // A shutdown wins over the retry timer.
        tokio::select! {
            biased;
            changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { return None },
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(shared.cfg.backoff_max);
    }
}

/// Re-sends every registered monitor on a new connection (before anyone
/// else can write on it); the answers become [`MonitorEvent::Resync`].
async fn resubscribe(shared: &Shared, wr: &mut OwnedWriteHalf) {
    let monitors: Vec<(String, String, Value)> = lock(&shared.monitors)
        .iter()
        .map(|(id, reg)| {
            (
                id.clone(),
                reg.db.clone(),
                monitor_params(&reg.db, id, &reg.requests),
            )
        })
        .collect();
    for (monitor, db, params) in monitors {
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&shared.pending).insert(
            id,
            Pending::Resync {
                monitor: monitor.clone(),
            },
        );
        let text = json!({"method": "monitor", "params": params, "id": id}).to_string();
        debug!(monitor, db, "re-sending OVSDB monitor");
        if let Err(e) = wr.write_all(text.as_bytes()).await {
            // The reader will see the connection end and start over.
            warn!(error = %e, "writing to OVSDB failed while re-sending monitors");
            return;
        }
    }
}

/// Reads and dispatches until the connection ends; returns why.
async fn read_loop(shared: &Arc<Shared>, mut rd: OwnedReadHalf) -> String {
    let mut splitter = JsonSplitter::new(shared.cfg.max_message_bytes);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) => return "end of stream".to_owned(),
            Ok(n) => n,
            Err(e) => return e.to_string(),
        };
        splitter.push(&buf[..n]);
        while let Some(item) = splitter.next_value() {
            match item {
                Ok(value) => dispatch(shared, value),
                Err(e @ SplitError::TooLarge { .. }) => return e.to_string(),
                Err(e) => warn!(error = %e, "skipping unreadable data from OVSDB"),
            }
        }
    }
}

fn dispatch(shared: &Arc<Shared>, value: Value) {
    let msg = match Message::from_json(value) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "ignoring OVSDB message");
            return;
        }
    };
    match msg {
        Message::Response { id, result } => {
            let Some(id) = id.as_u64() else {
                debug!(%id, "OVSDB response to an id we never sent");
                return;
            };
            let Some(pending) = lock(&shared.pending).remove(&id) else {
                debug!(id, "OVSDB response nobody waits for");
                return;
            };
            match pending {
                Pending::Caller {
                    method,
                    monitor,
                    tx,
                } => {
                    let answer = result.map_err(|error| OvsdbError::Rpc { method, error });
                    if answer.is_err() {
                        if let Some(mid) = monitor {
                            lock(&shared.monitors).remove(&mid);
                        }
                    }
                    let _ = tx.send(answer);
                }
                Pending::Resync { monitor } => {
                    let updates = result
                        .map_err(|e| e.to_string())
                        .and_then(|r| parse_table_updates(&r).map_err(|e| e.to_string()));
                    let mut monitors = lock(&shared.monitors);
                    match updates {
                        Ok(u) => {
                            let delivered = monitors
                                .get(&monitor)
                                .is_some_and(|reg| reg.tx.send(MonitorEvent::Resync(u)).is_ok());
                            if !delivered {
                                // Nobody listens any more: stop it on the server.
                                monitors.remove(&monitor);
                                drop(monitors);
                                cancel_monitor(shared, monitor);
                            }
                        }
                        Err(e) => {
                            warn!(monitor, error = %e, "OVSDB monitor could not be re-established; ending its stream");
                            monitors.remove(&monitor);
                        }
                    }
                }
                Pending::Ignore => {}
            }
        }
        Message::Request { id, method, params } => {
            let reply = if method == "echo" {
                Message::Response {
                    id,
                    result: Ok(params),
                }
            } else {
                debug!(method, "OVSDB server called an unknown method");
                Message::Response {
                    id,
                    result: Err(json!("unknown method")),
                }
            };
            spawn_write(shared, reply.to_json().to_string());
        }
        Message::Notification { method, params } => {
            if method != "update" {
                debug!(method, "ignoring OVSDB notification");
                return;
            }
            let (Some(mid), Some(updates)) = (params.get(0).and_then(Value::as_str), params.get(1))
            else {
                warn!("malformed OVSDB update notification");
                return;
            };
            let updates = match parse_table_updates(updates) {
                Ok(u) => u,
                Err(e) => {
                    warn!(monitor = mid, error = %e, "malformed OVSDB update notification");
                    return;
                }
            };
            let mut monitors = lock(&shared.monitors);
            let gone = match monitors.get(mid) {
                Some(reg) => reg.tx.send(MonitorEvent::Update(updates)).is_err(),
                None => false,
            };
            if gone {
                monitors.remove(mid);
                drop(monitors);
                cancel_monitor(shared, mid.to_owned());
            }
        }
    }
}

/// Tells the server to stop monitor `id` (fire and forget).
fn cancel_monitor(shared: &Arc<Shared>, id: String) {
    let rid = shared.next_id.fetch_add(1, Ordering::Relaxed);
    lock(&shared.pending).insert(rid, Pending::Ignore);
    debug!(monitor = id, "cancelling OVSDB monitor");
    spawn_write(
        shared,
        json!({"method": "monitor_cancel", "params": [id], "id": rid}).to_string(),
    );
}

/// Writes `text` from a separate task, so the reader never waits on the
/// writer lock. Dropped silently when disconnected or outside a runtime.
fn spawn_write(shared: &Arc<Shared>, text: String) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let shared = shared.clone();
    rt.spawn(async move {
        let mut writer = shared.writer.lock().await;
        if let Some(w) = writer.as_mut() {
            if let Err(e) = w.write_all(text.as_bytes()).await {
                debug!(error = %e, "OVSDB write failed");
            }
        }
    });
}
