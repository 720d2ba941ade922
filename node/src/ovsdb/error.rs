//! What can go wrong talking to an OVSDB server: connecting, the
//! connection dropping under a request, the server not answering in time,
//! the server refusing a request, or a transaction aborted by one of its
//! operations (reported with the operation's index and what it was).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

/// An error of the OVSDB client or of the protocol layer.
#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    /// The server's socket cannot be connected to.
    #[error("cannot connect to OVSDB at {}: {source}", path.display())]
    Connect {
        /// The unix socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The connection was lost after the request was sent and before it
    /// was answered: the request may or may not have taken effect.
    #[error("OVSDB connection lost before `{method}` was answered")]
    Disconnected {
        /// The JSON-RPC method of the request.
        method: String,
    },
    /// No answer (or no connection to send on) within the request timeout.
    #[error("OVSDB `{method}` not answered within {timeout:?}")]
    Timeout {
        /// The JSON-RPC method of the request.
        method: String,
        /// The timeout that ran out.
        timeout: Duration,
    },
    /// The server answered the request with a JSON-RPC error.
    #[error("OVSDB server rejected `{method}`: {error}")]
    Rpc {
        /// The JSON-RPC method of the request.
        method: String,
        /// The `error` member of the response, as sent.
        error: Value,
    },
    /// An operation of a transaction failed, so the whole transaction was
    /// aborted and nothing of it was applied.
    #[error("transaction aborted by operation {index} ({op}): {error}{}", details_suffix(.details))]
    OperationFailed {
        /// Index of the failing operation in the transaction (0-based).
        index: usize,
        /// What the operation was, e.g. `insert into Port`.
        op: String,
        /// The server's error string, e.g. `constraint violation`.
        error: String,
        /// The server's explanation, when it gave one.
        details: Option<String>,
    },
    /// Every operation succeeded but the transaction could not be committed
    /// (e.g. a duplicate value in an indexed column, or a dangling
    /// reference): nothing of it was applied.
    #[error("transaction aborted at commit: {error}{}", details_suffix(.details))]
    CommitFailed {
        /// The server's error string, e.g. `constraint violation`.
        error: String,
        /// The server's explanation, when it gave one.
        details: Option<String>,
    },
    /// A message from the server does not have the shape RFC 7047 gives it.
    #[error("malformed OVSDB message: {0}")]
    Malformed(String),
    /// A monitor with this id is already registered on this client.
    #[error("OVSDB monitor id {0:?} is already in use")]
    DuplicateMonitor(String),
    /// The client was shut down.
    #[error("OVSDB client is shut down")]
    Closed,
}

impl OvsdbError {
    /// Whether trying again later may succeed: the connection dropped or
    /// the server did not answer in time. Transactions that failed this way
    /// may have been applied, so only idempotent work should be retried.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            OvsdbError::Disconnected { .. }
                | OvsdbError::Timeout { .. }
                | OvsdbError::Connect { .. }
        )
    }
}

fn details_suffix(details: &Option<String>) -> String {
    match details {
        Some(d) if !d.is_empty() => format!(" ({d})"),
        _ => String::new(),
    }
}
