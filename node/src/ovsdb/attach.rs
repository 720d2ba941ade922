//! The switch daemon's verdict on each interface, followed with an OVSDB
//! `monitor` of the Interface table's `name`, `ofport` and `error`.
//!
//! Adding a port writes a row; `ovs-vswitchd` then attaches the interface
//! and writes its OpenFlow port number (`ofport`), or `-1` and an `error`
//! when it cannot. [`AttachWatch`] keeps that state for every interface,
//! updated by the server's notifications (no polling, no read per
//! question), and logs each interface that fails to attach, so a port the
//! datapath refused is in the agent's log the moment it happens.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::client::{Client, MonitorEvent};
use super::error::OvsdbError;
use super::proto::{MonitorRequest, Row, TableUpdates, Uuid};
use super::switch::OVS_DB;

/// Where an interface stands with the switch daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attach {
    /// Not attached yet (no `ofport` written).
    Pending,
    /// Attached with this OpenFlow port number.
    Attached(i64),
    /// The daemon could not attach it; its `error` column.
    Failed(String),
}

#[derive(Debug, Default, Clone)]
struct State {
    by_uuid: BTreeMap<Uuid, (String, Attach)>,
}

impl State {
    fn apply(&mut self, updates: &TableUpdates, replace: bool) -> Vec<(String, String)> {
        if replace {
            self.by_uuid.clear();
        }
        let mut failed = Vec::new();
        let Some(rows) = updates.get("Interface") else {
            return failed;
        };
        for (uuid, update) in rows {
            match &update.new {
                None => {
                    self.by_uuid.remove(uuid);
                }
                Some(row) => {
                    let prev = self.by_uuid.get(uuid).cloned();
                    let name = row
                        .get("name")
                        .and_then(|d| d.as_str())
                        .map(str::to_owned)
                        .or_else(|| prev.as_ref().map(|p| p.0.clone()))
                        .unwrap_or_default();
                    let attach = merged(row, prev.as_ref().map(|p| &p.1));
                    if let Attach::Failed(e) = &attach {
                        if prev.as_ref().map(|p| &p.1) != Some(&attach) {
                            failed.push((name.clone(), e.clone()));
                        }
                    }
                    self.by_uuid.insert(uuid.clone(), (name, attach));
                }
            }
        }
        failed
    }

    fn get(&self, name: &str) -> Option<Attach> {
        self.by_uuid
            .values()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.clone())
    }
}

/// The state a row says, with the columns an update did not carry taken
/// from the previous state.
fn merged(row: &Row, prev: Option<&Attach>) -> Attach {
    let ofport = match row.get("ofport") {
        Some(d) => d.as_optional_integer(),
        None => match prev {
            Some(Attach::Attached(n)) => Some(*n),
            Some(Attach::Failed(_)) => Some(-1),
            _ => None,
        },
    };
    let error = match row.get("error") {
        Some(d) => d.as_str().map(str::to_owned),
        None => match prev {
            Some(Attach::Failed(e)) => Some(e.clone()),
            _ => None,
        },
    };
    match ofport {
        Some(n) if n > 0 => Attach::Attached(n),
        Some(_) => Attach::Failed(error.unwrap_or_else(|| "ofport -1".to_owned())),
        None => Attach::Pending,
    }
}

/// The attachment state of every interface of the switch.
#[derive(Debug, Clone)]
pub struct AttachWatch {
    rx: watch::Receiver<State>,
    _task: Arc<AbortOnDrop>,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl AttachWatch {
    /// Starts the monitor (id `spur-attach`) on `client`'s connection; it
    /// follows reconnections (a resync replaces the state).
    pub async fn start(client: &Client) -> Result<AttachWatch, OvsdbError> {
        let requests = BTreeMap::from([(
            "Interface".to_owned(),
            MonitorRequest::columns(&["name", "ofport", "error"]),
        )]);
        let (initial, mut stream) = client.monitor(OVS_DB, "spur-attach", requests).await?;
        let mut state = State::default();
        for (name, error) in state.apply(&initial, true) {
            tracing::warn!(interface = %name, %error, "ovs-vswitchd could not attach the interface");
        }
        let (tx, rx) = watch::channel(state);
        let task = tokio::spawn(async move {
            while let Some(ev) = stream.next_event().await {
                let (updates, replace) = match &ev {
                    MonitorEvent::Update(u) => (u, false),
                    MonitorEvent::Resync(u) => (u, true),
                };
                let mut failed = Vec::new();
                tx.send_modify(|s| failed = s.apply(updates, replace));
                for (name, error) in failed {
                    tracing::warn!(interface = %name, %error, "ovs-vswitchd could not attach the interface");
                }
            }
        });
        Ok(AttachWatch {
            rx,
            _task: Arc::new(AbortOnDrop(task.abort_handle())),
        })
    }

    /// The state of interface `name`; `None` when there is no such row.
    pub fn get(&self, name: &str) -> Option<Attach> {
        self.rx.borrow().get(name)
    }

    /// Waits until interface `name` is attached (its ofport) or failed
    /// (its error), at most `timeout`.
    pub async fn wait(&self, name: &str, timeout: Duration) -> Result<i64, String> {
        let mut rx = self.rx.clone();
        let done = async {
            rx.wait_for(|s| matches!(s.get(name), Some(Attach::Attached(_) | Attach::Failed(_))))
                .await
                .map(|s| s.get(name))
        };
        match tokio::time::timeout(timeout, done).await {
            Ok(Ok(state)) => match state {
                Some(Attach::Attached(n)) => Ok(n),
                Some(Attach::Failed(e)) => Err(e),
                _ => Err(format!("interface {name} is gone")),
            },
            Ok(Err(_)) => Err("the OVSDB monitor ended".to_owned()),
            Err(_) => Err(format!(
                "ovs-vswitchd did not attach interface {name} within {timeout:?}"
            )),
        }
    }
}
