//! Spur's own OVSDB client (RFC 7047), to drive the node's secondary Open
//! vSwitch bridge.
//!
//! There is no maintained Rust OVSDB client to build on, so this is ours,
//! kept to what the agent needs. Shelling out to `ovs-vsctl` is not an
//! option at scale: every call reads the whole database, so adding a port
//! costs more with each port already there, whereas one persistent
//! connection sending `transact`s stays flat.
//!
//! - [`proto`]: the wire format, pure (messages, value encodings,
//!   operations and a transaction builder, result parsing).
//! - [`split`]: cutting the socket's byte stream into JSON texts (OVSDB
//!   concatenates them without framing).
//! - [`client`]: [`Client`], one persistent unix-socket connection with a
//!   reader task, request timeouts, automatic `echo` replies, monitors and
//!   reconnection with backoff.
//! - [`switch`]: the [`Switch`] trait the agent (and a simulator) uses,
//!   implemented for [`Client`] with one transaction per change.
//! - [`attach`]: [`attach::AttachWatch`], a monitor of every interface's
//!   `ofport` and `error`: whether `ovs-vswitchd` attached it.
//!
//! Errors are [`OvsdbError`] (protocol and connection) and [`SwitchError`]
//! (switch operations).

pub mod attach;
pub mod client;
pub mod error;
pub mod proto;
pub mod split;
pub mod switch;

pub use client::{Client, ClientConfig, MonitorEvent, MonitorStream};
pub use error::OvsdbError;
pub use switch::{BridgeSpec, PortInfo, Switch, SwitchError};
