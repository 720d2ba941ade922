//! The CNI protocol as the `spur` plugin speaks it to runtimes, and the
//! messages the plugin and `spur-agent` exchange.
//!
//! What lives here:
//!
//! - the invocation ([`Invocation::from_env`]): the `CNI_*` environment
//!   variables each verb needs ([`Command`]), `CNI_ARGS` ([`parse_cni_args`],
//!   [`PodRef`]) and the network config on stdin with its `cniVersion`,
//!   `prevResult`, `runtimeConfig` and GC's `cni.dev/valid-attachments`;
//! - the result of ADD ([`CniResult`]): [`CniResult::render`] writes exactly
//!   the shape of each CNI version Spur speaks, [`CniResult::parse`] reads
//!   any of them, [`extend`] and [`CniResult::append`] add one result to
//!   another (as a chained plugin does) keeping every `ips[].interface`
//!   index on its interface, [`CniResult::from_ipam`] turns an
//!   [`IpamResult`] into one;
//! - the error object ([`CniError`], `{cniVersion, code, msg, details}`) and
//!   the VERSION answer ([`version_answer`]);
//! - the plugin ↔ agent messages ([`AgentRequest`], [`AgentResponse`]),
//!   versioned by [`PROTO_VERSION`] ([`check_proto`]), and their framing
//!   (a 4-byte big-endian length, then the JSON body, at most
//!   [`MAX_MESSAGE_BYTES`]: [`encode_frame`], [`decode_frame`],
//!   [`split_frame`]).
//!
//! What does not: reading the environment or stdin, sockets, exit codes
//! and printing (the plugin binary does those and hands this module the
//! bytes), what the verbs do (the agent), and the NAD config of Spur
//! networks ([`crate::nad`]). Everything here is pure.
//!
//! # Versions
//!
//! | version | `ips[].version` | interface `mtu`, `socketPath`, `pciID`; route `mtu`, `advmss`, `priority`, `table`, `scope` | verbs |
//! |---|---|---|---|
//! | 0.3.0, 0.3.1 | `"4"` / `"6"` | no | ADD, DEL, VERSION |
//! | 0.4.0 | `"4"` / `"6"` | no | + CHECK |
//! | 1.0.0 | absent | no | ADD, DEL, CHECK, VERSION |
//! | 1.1.0 | absent | yes | + STATUS, GC |
//!
//! Rendering leaves out what the version does not have, absent optional
//! fields and empty lists, as the reference plugins do (`dns` is always
//! there, `{}` when empty, as they write it). Parsing accepts every field
//! in every version and ignores keys it does not know.
//!
//! ```
//! use spur_core::cni::CniVersion;
//! use spur_core::cniproto::{CniResult, Interface, IpEntry};
//! let mut r = CniResult::new(CniVersion::V1_1_0);
//! let eth1 = r.push_interface(Interface {
//!     mac: Some("ca:fe:00:00:00:01".into()),
//!     sandbox: Some("/var/run/netns/web-0".into()),
//!     ..Interface::new("eth1")
//! });
//! r.ips.push(IpEntry {
//!     address: "10.10.0.5/24".parse().unwrap(),
//!     gateway: Some("10.10.0.254".parse().unwrap()),
//!     interface: Some(eth1),
//! });
//! let old = r.render(CniVersion::V0_4_0);
//! assert_eq!(old["ips"][0]["version"], "4");
//! assert!(r.render(CniVersion::V1_0_0)["ips"][0].get("version").is_none());
//! assert_eq!(CniResult::parse(&old).unwrap(), r.as_version(CniVersion::V0_4_0));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cni::{CniVersion, ErrorCode};
use crate::error::{Invalid, Kind, Subject};
use crate::ipamreq::IpamResult;
use crate::nad::{Dns, Route};
use crate::names::ifname_problem;
use crate::selection::json_type;

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

/// Environment variable: the verb.
pub const CNI_COMMAND: &str = "CNI_COMMAND";
/// Environment variable: the container (sandbox) ID.
pub const CNI_CONTAINERID: &str = "CNI_CONTAINERID";
/// Environment variable: the path of the network namespace.
pub const CNI_NETNS: &str = "CNI_NETNS";
/// Environment variable: the interface name inside the container.
pub const CNI_IFNAME: &str = "CNI_IFNAME";
/// Environment variable: extra arguments, `K=V;K=V`.
pub const CNI_ARGS: &str = "CNI_ARGS";
/// Environment variable: where plugin binaries are, `:`-separated.
pub const CNI_PATH: &str = "CNI_PATH";

/// `CNI_ARGS` key: the Pod's namespace (set by the kubelet's runtime).
pub const K8S_POD_NAMESPACE: &str = "K8S_POD_NAMESPACE";
/// `CNI_ARGS` key: the Pod's name.
pub const K8S_POD_NAME: &str = "K8S_POD_NAME";
/// `CNI_ARGS` key: the ID of the Pod's sandbox (infra) container.
pub const K8S_POD_INFRA_CONTAINER_ID: &str = "K8S_POD_INFRA_CONTAINER_ID";
/// `CNI_ARGS` key: the Pod's UID.
pub const K8S_POD_UID: &str = "K8S_POD_UID";

/// Config key of GC: the attachments that are still valid.
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";
/// The name a draft of the 1.1.0 spec gave [`VALID_ATTACHMENTS_KEY`]; libcni
/// sends both, and Spur reads it when the right one is absent.
pub const ATTACHMENTS_KEY_DRAFT: &str = "cni.dev/attachments";

/// How error messages name the network config read from stdin.
const CONFIG: &str = "network config";
/// How error messages name a result parsed on its own.
const RESULT: &str = "CNI result";

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// The codes [`ErrorCode`] names, to map a number back to one.
const KNOWN_CODES: [ErrorCode; 12] = [
    ErrorCode::IncompatibleVersion,
    ErrorCode::UnsupportedField,
    ErrorCode::UnknownContainer,
    ErrorCode::InvalidEnvironment,
    ErrorCode::Io,
    ErrorCode::Decode,
    ErrorCode::InvalidConfig,
    ErrorCode::TryAgainLater,
    ErrorCode::PluginNotAvailable,
    ErrorCode::LimitedConnectivity,
    ErrorCode::Exhausted,
    ErrorCode::AddressInUse,
];

/// A CNI error: what the plugin prints (with a non-zero exit code) and what
/// the agent answers a request with.
///
/// `code` is a number rather than an [`ErrorCode`] so that codes of other
/// plugins (a delegated plugin's, a newer agent's) pass through unchanged;
/// [`CniError::error_code`] maps it back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CniError {
    /// The error code (1-11 and 50-51 are the spec's, 100+ Spur's own).
    pub code: u32,
    /// A short message: what failed, naming the variable, key or value.
    pub msg: String,
    /// Longer details (left out of the JSON when empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with one of the codes Spur knows.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> CniError {
        CniError::raw(code.code(), msg)
    }

    /// An error with any code (one a delegated plugin returned, say).
    pub fn raw(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// The same error with `details` set.
    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The code as an [`ErrorCode`], when it is one Spur knows.
    pub fn error_code(&self) -> Option<ErrorCode> {
        KNOWN_CODES.into_iter().find(|c| c.code() == self.code)
    }

    /// The error object of `version`:
    /// `{"cniVersion", "code", "msg", "details"}` (`details` left out when
    /// empty, as the reference plugins do).
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), version.as_str().into());
        m.insert("code".into(), self.code.into());
        m.insert("msg".into(), self.msg.as_str().into());
        if !self.details.is_empty() {
            m.insert("details".into(), self.details.as_str().into());
        }
        Value::Object(m)
    }

    /// Code 1: the CNI version (or the agent protocol) is not spoken.
    pub fn incompatible_version(msg: impl Into<String>) -> CniError {
        CniError::new(ErrorCode::IncompatibleVersion, msg)
    }

    /// Code 2: a config field is not supported (the message names the key
    /// and the value).
    pub fn unsupported_field(msg: impl Into<String>) -> CniError {
        CniError::new(ErrorCode::UnsupportedField, msg)
    }

    /// Code 3: the container is unknown or does not exist.
    pub fn unknown_container(msg: impl Into<String>) -> CniError {
        CniError::new(ErrorCode::UnknownContainer, msg)
    }

    /// Code 4: environment variables are missing or invalid (the message
    /// names them).
    pub fn invalid_environment(msg: impl Into<String>) -> CniError {
        CniError::new(ErrorCode::InvalidEnvironment, msg)
    }

    /// Code 5: an I/O failure.
    pub fn io(msg: impl Into<String>) -> CniError {
        CniError::new(ErrorCode::Io, msg)
    }

    /// Code 6: content could not be decoded.
    pub fn decode(msg: impl Into<String>) -> CniError {
        CniError::new(ErrorCode::Decode, msg)
    }

    /// Code 7: the network config is invalid.
    pub fn invalid_config(msg: impl Into<String>) -> CniError {
        CniError::new(ErrorCode::InvalidConfig, msg)
    }

    /// Code 11: a transient condition; the runtime should retry.
    pub fn try_again_later(msg: impl Into<String>) -> CniError {
        CniError::new(ErrorCode::TryAgainLater, msg)
    }

    /// Code 50 (STATUS): the plugin cannot serve ADD now.
    pub fn plugin_not_available(msg: impl Into<String>) -> CniError {
        CniError::new(ErrorCode::PluginNotAvailable, msg)
    }

    /// Code 51 (STATUS): the plugin cannot serve ADD now, and existing
    /// containers may have limited connectivity.
    pub fn limited_connectivity(msg: impl Into<String>) -> CniError {
        CniError::new(ErrorCode::LimitedConnectivity, msg)
    }

    /// Code 100 (Spur's own): a pool or device is exhausted.
    pub fn exhausted(msg: impl Into<String>) -> CniError {
        CniError::new(ErrorCode::Exhausted, msg)
    }

    /// Code 101 (Spur's own): a requested address is held by another owner.
    pub fn address_in_use(msg: impl Into<String>) -> CniError {
        CniError::new(ErrorCode::AddressInUse, msg)
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

impl From<&Invalid> for CniError {
    /// The code of the [`Invalid`]'s [`Kind`] (the mapping of
    /// [`crate::cni`]) and its message, which names object, key and value.
    fn from(e: &Invalid) -> CniError {
        CniError::new(ErrorCode::from(e.kind), e.to_string())
    }
}

impl From<Invalid> for CniError {
    fn from(e: Invalid) -> CniError {
        CniError::from(&e)
    }
}

// ---------------------------------------------------------------------------
// Verbs
// ---------------------------------------------------------------------------

/// A CNI verb (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    /// Attach the container to the network.
    Add,
    /// Detach it (idempotent; must succeed when nothing is left).
    Del,
    /// Verify the attachment (0.4.0 and later).
    Check,
    /// Can the plugin serve ADD now? (1.1.0)
    Status,
    /// Release whatever no valid attachment holds (1.1.0).
    Gc,
    /// Which CNI versions the plugin speaks.
    Version,
}

impl Command {
    /// Every verb.
    pub const ALL: [Command; 6] = [
        Command::Add,
        Command::Del,
        Command::Check,
        Command::Status,
        Command::Gc,
        Command::Version,
    ];

    /// The verb as `CNI_COMMAND` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// The environment variables the verb needs besides `CNI_COMMAND`
    /// (spec 1.1.0): ADD and CHECK need the container ID, the netns and the
    /// interface name; DEL may lack the netns (it is gone when the
    /// container died); STATUS, GC and VERSION need none of them.
    /// `CNI_ARGS` and `CNI_PATH` are optional for every verb.
    pub fn required_env(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => &[CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME],
            Command::Del => &[CNI_CONTAINERID, CNI_IFNAME],
            Command::Status | Command::Gc | Command::Version => &[],
        }
    }

    /// True for the verbs about one attachment (ADD, DEL, CHECK): they take
    /// the container ID, netns, interface name and `CNI_ARGS`.
    pub fn is_attachment_verb(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }

    /// True when the verb exists in CNI `version`.
    pub fn exists_in(self, version: CniVersion) -> bool {
        match self {
            Command::Add | Command::Del | Command::Version => true,
            Command::Check => version.has_check(),
            Command::Status | Command::Gc => version.has_status_and_gc(),
        }
    }

    /// The first CNI version that has the verb.
    pub fn since(self) -> CniVersion {
        CniVersion::ALL
            .into_iter()
            .find(|v| self.exists_in(*v))
            .unwrap_or(CniVersion::LATEST)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Command {
    type Err = CniError;

    /// Code 4 naming the value when it is not a verb (verbs are upper
    /// case, as the spec writes them).
    fn from_str(s: &str) -> Result<Command, CniError> {
        Command::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                CniError::invalid_environment(format!(
                    "{CNI_COMMAND}={} is not a CNI verb (ADD, DEL, CHECK, STATUS, GC or VERSION)",
                    shown(s)
                ))
            })
    }
}

// ---------------------------------------------------------------------------
// CNI_ARGS
// ---------------------------------------------------------------------------

/// Parses `CNI_ARGS`: `K=V` pairs separated by `;`. A value may contain
/// `=` (the first one separates); empty pairs (a trailing `;`) are
/// skipped; a later pair replaces an earlier one with the same key. A pair
/// without `=` or with an empty key is a code 4 error naming it.
pub fn parse_cni_args(s: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for (i, pair) in s.split(';').enumerate() {
        if pair.is_empty() {
            continue;
        }
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            _ => {
                return Err(CniError::invalid_environment(format!(
                    "{CNI_ARGS}: pair {i} {} is not KEY=VALUE (pairs are separated by ';')",
                    shown(pair)
                )))
            }
        }
    }
    Ok(out)
}

/// The Pod an attachment is for, from the `K8S_POD_*` keys of `CNI_ARGS`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodRef {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `K8S_POD_NAME`.
    pub name: String,
    /// `K8S_POD_UID`, when the runtime passes it.
    pub uid: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`, when the runtime passes it.
    pub infra_container_id: Option<String>,
}

impl PodRef {
    /// The Pod named by `args`; `None` unless both `K8S_POD_NAMESPACE` and
    /// `K8S_POD_NAME` are set and non-empty (the runtime is not the
    /// kubelet's then).
    pub fn from_args(args: &BTreeMap<String, String>) -> Option<PodRef> {
        let get = |k: &str| args.get(k).filter(|v| !v.is_empty()).cloned();
        Some(PodRef {
            namespace: get(K8S_POD_NAMESPACE)?,
            name: get(K8S_POD_NAME)?,
            uid: get(K8S_POD_UID),
            infra_container_id: get(K8S_POD_INFRA_CONTAINER_ID),
        })
    }
}

// ---------------------------------------------------------------------------
// Invocation
// ---------------------------------------------------------------------------

/// One attachment GC must keep (an item of `cni.dev/valid-attachments`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    /// `containerID`.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `ifname`.
    pub ifname: String,
}

/// What the runtime asked for: the verb, its environment and the network
/// config, checked as the spec requires for that verb.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// The verb.
    pub command: Command,
    /// `CNI_CONTAINERID` (ADD, DEL, CHECK; `None` for the other verbs).
    pub container_id: Option<String>,
    /// `CNI_NETNS` (ADD and CHECK; DEL when the runtime still has it).
    pub netns: Option<String>,
    /// `CNI_IFNAME` (ADD, DEL, CHECK).
    pub ifname: Option<String>,
    /// `CNI_ARGS`, parsed (ADD, DEL, CHECK; empty for the other verbs).
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`, split at `:` (empty items dropped).
    pub path: Vec<String>,
    /// The config's `cniVersion`: the version to answer in. For VERSION,
    /// the version stdin asked for when Spur speaks it, else the latest.
    pub cni_version: CniVersion,
    /// The config's `name` (always present but for VERSION).
    pub name: Option<String>,
    /// The whole network config (`Null` for VERSION without stdin).
    pub config: Value,
    /// `prevResult`, parsed (whatever version it is in). Required for
    /// CHECK. A DEL whose `prevResult` cannot be read gets `None`: DEL
    /// must release addresses whatever the runtime cached.
    pub prev_result: Option<CniResult>,
    /// GC's `cni.dev/valid-attachments` (required for GC, `None` for the
    /// other verbs).
    pub valid_attachments: Option<Vec<Attachment>>,
    /// `runtimeConfig`, when the config carries one.
    pub runtime_config: Option<Value>,
}

impl Invocation {
    /// Reads an invocation from the environment (`get` returns a
    /// variable's value; empty counts as unset, as in the reference
    /// plugins) and stdin.
    ///
    /// Errors, first one wins:
    /// - code 4: `CNI_COMMAND` unset or not a verb; variables the verb
    ///   needs are unset (all of them named); `CNI_CONTAINERID`,
    ///   `CNI_IFNAME` or `CNI_ARGS` malformed (named with the value);
    /// - code 6: stdin is not a JSON object; `cniVersion`, `prevResult`,
    ///   `runtimeConfig` or the valid attachments have the wrong shape;
    /// - code 1: `cniVersion` absent (CNI reads that as 0.1.0) or not one
    ///   Spur speaks (named), or the verb does not exist in it (CHECK
    ///   before 0.4.0, STATUS and GC before 1.1.0);
    /// - code 7: no `name`; CHECK without `prevResult`; GC without
    ///   `cni.dev/valid-attachments`.
    ///
    /// VERSION never fails on stdin: it may be empty or name a version
    /// Spur does not speak, and the answer is still owed.
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
        stdin: &[u8],
    ) -> Result<Invocation, CniError> {
        let var = |name: &str| get(name).filter(|v| !v.is_empty());
        let command: Command = match var(CNI_COMMAND) {
            Some(c) => c.parse()?,
            None => {
                return Err(CniError::invalid_environment(format!(
                    "{CNI_COMMAND} is not set (one of ADD, DEL, CHECK, STATUS, GC, VERSION)"
                )))
            }
        };
        let path: Vec<String> = var(CNI_PATH)
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if command == Command::Version {
            return Ok(Invocation::version(path, stdin));
        }

        let missing: Vec<&str> = command
            .required_env()
            .iter()
            .copied()
            .filter(|n| var(n).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(CniError::invalid_environment(format!(
                "{command} needs {}, which {} not set",
                missing.join(", "),
                if missing.len() == 1 { "is" } else { "are" }
            )));
        }
        let (mut container_id, mut netns, mut ifname) = (None, None, None);
        let mut args = BTreeMap::new();
        if command.is_attachment_verb() {
            container_id = var(CNI_CONTAINERID);
            if let Some(id) = &container_id {
                if let Some(why) = container_id_problem(id) {
                    return Err(CniError::invalid_environment(format!(
                        "{CNI_CONTAINERID}={}: {why}",
                        shown(id)
                    )));
                }
            }
            netns = var(CNI_NETNS);
            ifname = var(CNI_IFNAME);
            if let Some(name) = &ifname {
                if let Some(why) = ifname_problem(name) {
                    return Err(CniError::invalid_environment(format!(
                        "{CNI_IFNAME}={}: {why}",
                        shown(name)
                    )));
                }
            }
            if let Some(a) = var(CNI_ARGS) {
                args = parse_cni_args(&a)?;
            }
        }

        let subject = Subject::named(CONFIG);
        let config = parse_stdin(stdin)?;
        let obj = config.as_object().ok_or_else(|| {
            CniError::decode(format!(
                "{CONFIG} on stdin must be a JSON object, not {}",
                json_type(&config)
            ))
        })?;
        let cni_version = config_version(obj, &subject)?;
        if !command.exists_in(cni_version) {
            return Err(CniError::incompatible_version(format!(
                "{command} is not part of CNI {cni_version} (the config's cniVersion); it \
                 came in {}",
                command.since()
            )));
        }
        let name = match obj.get("name") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::String(_)) | None => {
                return Err(subject.missing("name").into());
            }
            Some(other) => return Err(wrong_type(&subject, "name", other, "a string").into()),
        };
        let prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v) => match parse_result(v, &subject, "prevResult", Some(cni_version)) {
                Ok(r) => Some(r),
                Err(_) if command == Command::Del => None,
                Err(e) => return Err(e.into()),
            },
        };
        if command == Command::Check && prev_result.is_none() {
            return Err(subject
                .error(
                    Kind::Missing,
                    "prevResult",
                    None,
                    "is required for CHECK (the result of the ADD being checked)",
                )
                .into());
        }
        let runtime_config = match obj.get("runtimeConfig") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                return Err(wrong_type(&subject, "runtimeConfig", other, "an object").into())
            }
        };
        let valid_attachments = if command == Command::Gc {
            Some(valid_attachments(obj, &subject)?)
        } else {
            None
        };
        Ok(Invocation {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
            cni_version,
            name,
            config,
            prev_result,
            valid_attachments,
            runtime_config,
        })
    }

    /// VERSION: whatever stdin says, an answer is owed.
    fn version(path: Vec<String>, stdin: &[u8]) -> Invocation {
        let config = serde_json::from_slice::<Value>(stdin).unwrap_or(Value::Null);
        let cni_version = config
            .get("cniVersion")
            .and_then(Value::as_str)
            .and_then(|v| v.parse().ok())
            .unwrap_or(CniVersion::LATEST);
        Invocation {
            command: Command::Version,
            container_id: None,
            netns: None,
            ifname: None,
            args: BTreeMap::new(),
            path,
            cni_version,
            name: None,
            config,
            prev_result: None,
            valid_attachments: None,
            runtime_config: None,
        }
    }

    /// The network's name (empty for VERSION).
    pub fn network_name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    /// The Pod of the attachment, from `CNI_ARGS`.
    pub fn pod(&self) -> Option<PodRef> {
        PodRef::from_args(&self.args)
    }

    /// The request the plugin sends the agent for this invocation.
    pub fn to_request(&self) -> AgentRequest {
        AgentRequest {
            proto: PROTO_VERSION,
            command: self.command,
            container_id: self.container_id.clone(),
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
            args: self.args.clone(),
            config: self.config.clone(),
            cni_version: self.cni_version,
        }
    }
}

/// Why `id` cannot be a container ID (the spec's rule: an ASCII letter or
/// digit, then letters, digits, `_`, `.` and `-`), or `None`.
fn container_id_problem(id: &str) -> Option<&'static str> {
    let mut bytes = id.bytes();
    match bytes.next() {
        None => Some("container ID must not be empty"),
        Some(b) if !b.is_ascii_alphanumeric() => {
            Some("container ID must start with an ASCII letter or digit")
        }
        _ if !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) => {
            Some("container ID may only contain ASCII letters, digits, '_', '.' and '-'")
        }
        _ => None,
    }
}

fn parse_stdin(stdin: &[u8]) -> Result<Value, CniError> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::decode(format!(
            "no {CONFIG} on stdin (the runtime must pass the plugin's config as JSON)"
        )));
    }
    serde_json::from_slice(stdin)
        .map_err(|e| CniError::decode(format!("{CONFIG} on stdin is not valid JSON: {e}")))
}

fn config_version(obj: &Map<String, Value>, subject: &Subject) -> Result<CniVersion, Invalid> {
    match obj.get("cniVersion") {
        None => Err(subject.error(
            Kind::IncompatibleVersion,
            "cniVersion",
            None,
            "is absent, which CNI reads as 0.1.0; Spur speaks 0.3.0, 0.3.1, 0.4.0, 1.0.0 and \
             1.1.0",
        )),
        Some(Value::String(s)) => s.parse().map_err(|_| {
            subject.error(
                Kind::IncompatibleVersion,
                "cniVersion",
                Some(shown(s)),
                "is not a CNI version Spur speaks (0.3.0, 0.3.1, 0.4.0, 1.0.0 or 1.1.0)",
            )
        }),
        Some(other) => Err(wrong_type(subject, "cniVersion", other, "a string")),
    }
}

fn valid_attachments(
    obj: &Map<String, Value>,
    subject: &Subject,
) -> Result<Vec<Attachment>, Invalid> {
    let (key, list) = match [VALID_ATTACHMENTS_KEY, ATTACHMENTS_KEY_DRAFT]
        .into_iter()
        .find_map(|k| obj.get(k).filter(|v| !v.is_null()).map(|v| (k, v)))
    {
        Some(found) => found,
        None => {
            return Err(subject.error(
                Kind::Missing,
                shown(VALID_ATTACHMENTS_KEY),
                None,
                "is required for GC; without it every attachment of the network would be \
                 released",
            ))
        }
    };
    let key = shown(key);
    let items = list
        .as_array()
        .ok_or_else(|| wrong_type(subject, &key, list, "a list"))?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{key}[{i}]");
        let o = item
            .as_object()
            .ok_or_else(|| wrong_type(subject, &at, item, "an object"))?;
        let field = |k: &str| -> Result<String, Invalid> {
            match o.get(k) {
                Some(Value::String(s)) => Ok(s.clone()),
                None => Err(subject.error(Kind::Decode, format!("{at}.{k}"), None, "is required")),
                Some(other) => Err(wrong_type(subject, &format!("{at}.{k}"), other, "a string")),
            }
        };
        out.push(Attachment {
            container_id: field("containerID")?,
            ifname: field("ifname")?,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// VERSION
// ---------------------------------------------------------------------------

/// The answer to VERSION: `{"cniVersion": <requested, else the latest>,
/// "supportedVersions": [every version Spur speaks]}`.
pub fn version_answer(requested: Option<CniVersion>) -> Value {
    let mut m = Map::new();
    let v = requested.unwrap_or(CniVersion::LATEST);
    m.insert("cniVersion".into(), v.as_str().into());
    let all = CniVersion::ALL.iter().map(|v| Value::from(v.as_str()));
    m.insert("supportedVersions".into(), Value::Array(all.collect()));
    Value::Object(m)
}

// ---------------------------------------------------------------------------
// Result
// ---------------------------------------------------------------------------

/// An interface of a result.
///
/// Optional strings are `None` when absent; `Some("")` is written as an
/// empty string (the reference plugins leave empty ones out, so parsing
/// their output never gives `Some("")`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Interface {
    /// `name`.
    pub name: String,
    /// `mac`: the hardware address; absent where L2 addresses mean nothing
    /// (loopback, L3 devices).
    pub mac: Option<String>,
    /// `mtu` (1.1.0).
    pub mtu: Option<u32>,
    /// `sandbox`: the netns path for a container interface, absent for a
    /// host interface.
    pub sandbox: Option<String>,
    /// `socketPath`: the vhost-user socket (1.1.0).
    pub socket_path: Option<String>,
    /// `pciID`: the PCI address of the device, e.g. an SR-IOV VF (1.1.0).
    pub pci_id: Option<String>,
}

impl Interface {
    /// An interface with only a name.
    pub fn new(name: impl Into<String>) -> Interface {
        Interface {
            name: name.into(),
            ..Interface::default()
        }
    }

    /// True when `other` is the same device: same name in the same sandbox.
    pub fn same_device(&self, other: &Interface) -> bool {
        self.name == other.name && self.sandbox == other.sandbox
    }

    /// Sets the fields this entry lacks from `other`.
    fn fill_from(&mut self, other: Interface) {
        self.mac = self.mac.take().or(other.mac);
        self.mtu = self.mtu.or(other.mtu);
        self.socket_path = self.socket_path.take().or(other.socket_path);
        self.pci_id = self.pci_id.take().or(other.pci_id);
    }
}

/// An address of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpEntry {
    /// `address`: the address with its prefix length (host bits kept).
    pub address: IpNet,
    /// `gateway`.
    pub gateway: Option<IpAddr>,
    /// `interface`: index into the result's `interfaces` (absent in IPAM
    /// results, which know no interfaces).
    pub interface: Option<usize>,
}

/// A route of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteEntry {
    /// `dst` (host bits kept, as written).
    pub dst: IpNet,
    /// `gw`: absent means the default gateway.
    pub gw: Option<IpAddr>,
    /// `mtu` (1.1.0).
    pub mtu: Option<u32>,
    /// `advmss`: advertised MSS (1.1.0).
    pub advmss: Option<u32>,
    /// `priority`: the route's metric (1.1.0).
    pub priority: Option<u32>,
    /// `table`: the routing table (1.1.0).
    pub table: Option<u32>,
    /// `scope`: the route scope, 0-255 as the kernel has it (1.1.0).
    pub scope: Option<u8>,
}

impl RouteEntry {
    /// A route with only a destination and a next hop.
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> RouteEntry {
        RouteEntry {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }

    /// True when the route sets a field of 1.1.0.
    fn has_v1_1_fields(&self) -> bool {
        self.mtu.is_some()
            || self.advmss.is_some()
            || self.priority.is_some()
            || self.table.is_some()
            || self.scope.is_some()
    }
}

impl From<Route> for RouteEntry {
    fn from(r: Route) -> RouteEntry {
        RouteEntry::new(r.dst, r.gw)
    }
}

/// The result of ADD (and `prevResult`), independent of the CNI version it
/// is written in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniResult {
    /// The version the result was parsed from or made for (rendering takes
    /// the version to write explicitly).
    pub cni_version: CniVersion,
    /// `interfaces`.
    pub interfaces: Vec<Interface>,
    /// `ips`.
    pub ips: Vec<IpEntry>,
    /// `routes`.
    pub routes: Vec<RouteEntry>,
    /// `dns`.
    pub dns: Dns,
}

impl CniResult {
    /// An empty result.
    pub fn new(cni_version: CniVersion) -> CniResult {
        CniResult {
            cni_version,
            interfaces: Vec::new(),
            ips: Vec::new(),
            routes: Vec::new(),
            dns: Dns::default(),
        }
    }

    /// The result of `ipam`: its addresses, each on `interface` (`None` for
    /// an IPAM plugin's own answer, which knows no interfaces), its routes
    /// and its DNS settings. With `Some(i)`, interface `i` must be pushed
    /// before the result is rendered ([`CniResult::validate`] reports a
    /// dangling index); [`CniResult::add_ipam`] is the form for a result
    /// that already has its interfaces.
    pub fn from_ipam(
        cni_version: CniVersion,
        ipam: &IpamResult,
        interface: Option<usize>,
    ) -> CniResult {
        let mut r = CniResult::new(cni_version);
        r.add_ipam(ipam, interface);
        r
    }

    /// Adds the addresses of `ipam` on `interface`, its routes (those not
    /// already present) and its DNS settings (merged as in
    /// [`CniResult::append`]).
    pub fn add_ipam(&mut self, ipam: &IpamResult, interface: Option<usize>) {
        for ip in &ipam.ips {
            self.push_ip(IpEntry {
                address: ip.address,
                gateway: ip.gateway,
                interface,
            });
        }
        for r in &ipam.routes {
            self.push_route(RouteEntry::from(*r));
        }
        merge_dns(&mut self.dns, &ipam.dns);
    }

    /// Adds an interface and returns its index for `ips[].interface`.
    pub fn push_interface(&mut self, interface: Interface) -> usize {
        self.interfaces.push(interface);
        self.interfaces.len() - 1
    }

    /// Adds an address unless the same entry is already there.
    pub fn push_ip(&mut self, ip: IpEntry) {
        if !self.ips.contains(&ip) {
            self.ips.push(ip);
        }
    }

    /// Adds a route unless the same route is already there.
    pub fn push_route(&mut self, route: RouteEntry) {
        if !self.routes.contains(&route) {
            self.routes.push(route);
        }
    }

    /// Adds `more` to this result, as a chained plugin extends the result
    /// it was handed:
    ///
    /// - interfaces of `more` follow this result's, except one that is the
    ///   same device (same name and sandbox) as an interface already here,
    ///   which is merged into it (fields it lacks are filled in);
    /// - addresses of `more` follow, their `interface` index renumbered to
    ///   where their interface now is (an index that pointed at no
    ///   interface of `more` becomes `None` rather than pointing at the
    ///   wrong one); exact duplicates are dropped;
    /// - routes of `more` that are not already here follow;
    /// - DNS: name servers, search domains and options of `more` not
    ///   already listed are appended; `domain` is kept, or taken from
    ///   `more` when this result has none.
    ///
    /// The version stays this result's.
    pub fn append(&mut self, more: CniResult) {
        let mut moved = Vec::with_capacity(more.interfaces.len());
        for iface in more.interfaces {
            match self.interfaces.iter().position(|p| p.same_device(&iface)) {
                Some(i) => {
                    self.interfaces[i].fill_from(iface);
                    moved.push(i);
                }
                None => moved.push(self.push_interface(iface)),
            }
        }
        for mut ip in more.ips {
            ip.interface = ip.interface.and_then(|i| moved.get(i).copied());
            self.push_ip(ip);
        }
        for r in more.routes {
            self.push_route(r);
        }
        merge_dns(&mut self.dns, &more.dns);
    }

    /// Checks that every `ips[].interface` points at an interface.
    pub fn validate(&self) -> Result<(), CniError> {
        self.check_indices(&Subject::named(RESULT), "")
            .map_err(CniError::from)
    }

    fn check_indices(&self, subject: &Subject, prefix: &str) -> Result<(), Invalid> {
        for (i, ip) in self.ips.iter().enumerate() {
            if let Some(n) = ip.interface {
                if n >= self.interfaces.len() {
                    return Err(subject.error(
                        Kind::Decode,
                        format!("{}[{i}].interface", join(prefix, "ips")),
                        Some(n.to_string()),
                        match self.interfaces.len() {
                            0 => "points at no interface (the result has none)".to_string(),
                            1 => "points at no interface (the result has 1, index 0)".to_string(),
                            n => format!(
                                "points at no interface (the result has {n}, indices 0-{})",
                                n - 1
                            ),
                        },
                    ));
                }
            }
        }
        Ok(())
    }

    /// What [`CniResult::render`] can write in `version`: this result with
    /// that version and without the fields the version lacks (interface
    /// `mtu`, `socketPath`, `pciID` and the route attributes before
    /// 1.1.0). `CniResult::parse(&r.render(v)) == Ok(r.as_version(v))`.
    pub fn as_version(&self, version: CniVersion) -> CniResult {
        let mut r = self.clone();
        r.cni_version = version;
        if !has_v1_1_fields(version) {
            for i in &mut r.interfaces {
                i.mtu = None;
                i.socket_path = None;
                i.pci_id = None;
            }
            for route in &mut r.routes {
                *route = RouteEntry::new(route.dst, route.gw);
            }
        }
        r
    }

    /// True when the result sets fields that `version` cannot carry (they
    /// would be left out by [`CniResult::render`]).
    pub fn loses_fields_in(&self, version: CniVersion) -> bool {
        !has_v1_1_fields(version)
            && (self
                .interfaces
                .iter()
                .any(|i| i.mtu.is_some() || i.socket_path.is_some() || i.pci_id.is_some())
                || self.routes.iter().any(RouteEntry::has_v1_1_fields))
    }

    /// The result as JSON of `version`, exactly that version's shape:
    /// `ips[].version` (`"4"`/`"6"`) before 1.0.0, the 1.1.0 interface and
    /// route fields only in 1.1.0, absent fields and empty lists left out,
    /// `dns` always present.
    pub fn render(&self, version: CniVersion) -> Value {
        let v11 = has_v1_1_fields(version);
        let mut m = Map::new();
        m.insert("cniVersion".into(), version.as_str().into());
        if !self.interfaces.is_empty() {
            let list = self.interfaces.iter().map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), i.name.as_str().into());
                put_str(&mut o, "mac", &i.mac);
                put_str(&mut o, "sandbox", &i.sandbox);
                if v11 {
                    put_num(&mut o, "mtu", i.mtu);
                    put_str(&mut o, "socketPath", &i.socket_path);
                    put_str(&mut o, "pciID", &i.pci_id);
                }
                Value::Object(o)
            });
            m.insert("interfaces".into(), Value::Array(list.collect()));
        }
        if !self.ips.is_empty() {
            let list = self.ips.iter().map(|ip| {
                let mut o = Map::new();
                if version < CniVersion::V1_0_0 {
                    let family = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    o.insert("version".into(), family.into());
                }
                o.insert("address".into(), ip.address.to_string().into());
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), gw.to_string().into());
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), i.into());
                }
                Value::Object(o)
            });
            m.insert("ips".into(), Value::Array(list.collect()));
        }
        if !self.routes.is_empty() {
            let list = self.routes.iter().map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), r.dst.to_string().into());
                if let Some(gw) = r.gw {
                    o.insert("gw".into(), gw.to_string().into());
                }
                if v11 {
                    put_num(&mut o, "mtu", r.mtu);
                    put_num(&mut o, "advmss", r.advmss);
                    put_num(&mut o, "priority", r.priority);
                    put_num(&mut o, "table", r.table);
                    put_num(&mut o, "scope", r.scope.map(u32::from));
                }
                Value::Object(o)
            });
            m.insert("routes".into(), Value::Array(list.collect()));
        }
        m.insert("dns".into(), self.dns.to_value());
        Value::Object(m)
    }

    /// Reads a result of any version Spur speaks (its `cniVersion` is
    /// required). Keys it does not know are ignored; `ips[].version` is
    /// optional and, when present, must match the address. Errors are
    /// code 6 naming the key and value (code 1 for a version Spur does not
    /// speak), including an `ips[].interface` that points at no
    /// interface.
    pub fn parse(value: &Value) -> Result<CniResult, CniError> {
        parse_result(value, &Subject::named(RESULT), "", None).map_err(CniError::from)
    }
}

/// `prev` extended with `more` (see [`CniResult::append`]).
pub fn extend(prev: CniResult, more: CniResult) -> CniResult {
    let mut out = prev;
    out.append(more);
    out
}

fn has_v1_1_fields(version: CniVersion) -> bool {
    version >= CniVersion::V1_1_0
}

fn merge_dns(into: &mut Dns, more: &Dns) {
    for ns in &more.nameservers {
        if !into.nameservers.contains(ns) {
            into.nameservers.push(*ns);
        }
    }
    if into.domain.is_none() {
        into.domain.clone_from(&more.domain);
    }
    for (list, add) in [
        (&mut into.search, &more.search),
        (&mut into.options, &more.options),
    ] {
        for s in add {
            if !list.contains(s) {
                list.push(s.clone());
            }
        }
    }
}

fn put_str(o: &mut Map<String, Value>, key: &str, v: &Option<String>) {
    if let Some(s) = v {
        o.insert(key.into(), s.as_str().into());
    }
}

fn put_num(o: &mut Map<String, Value>, key: &str, v: Option<u32>) {
    if let Some(n) = v {
        o.insert(key.into(), n.into());
    }
}

// ---------------------------------------------------------------------------
// Result parsing
// ---------------------------------------------------------------------------

/// Reads a result at `prefix` of `subject`; `default_version` applies when
/// it has no `cniVersion` (a `prevResult` is in the config's version).
fn parse_result(
    value: &Value,
    subject: &Subject,
    prefix: &str,
    default_version: Option<CniVersion>,
) -> Result<CniResult, Invalid> {
    let p = Json { subject, prefix };
    let obj = p.object(value, prefix)?;
    let cni_version = match (obj.get("cniVersion"), default_version) {
        (None, Some(v)) => v,
        (None, None) => return Err(p.missing("cniVersion")),
        (Some(Value::String(s)), _) => s.parse().map_err(|_| {
            subject.error(
                Kind::IncompatibleVersion,
                join(prefix, "cniVersion"),
                Some(shown(s)),
                "is not a CNI version Spur speaks (0.3.0, 0.3.1, 0.4.0, 1.0.0 or 1.1.0)",
            )
        })?,
        (Some(other), _) => {
            return Err(wrong_type(
                subject,
                &join(prefix, "cniVersion"),
                other,
                "a string",
            ))
        }
    };
    let mut r = CniResult::new(cni_version);
    for (i, item) in p.list(obj, "interfaces")?.iter().enumerate() {
        let at = format!("{}[{i}]", join(prefix, "interfaces"));
        let o = p.object(item, &at)?;
        let q = Json {
            subject,
            prefix: &at,
        };
        r.interfaces.push(Interface {
            name: q.string(o, "name")?.ok_or_else(|| q.missing("name"))?,
            mac: q.string(o, "mac")?,
            mtu: q.uint(o, "mtu", u32::MAX.into())?.map(|n| n as u32),
            sandbox: q.string(o, "sandbox")?,
            socket_path: q.string(o, "socketPath")?,
            pci_id: q.string(o, "pciID")?,
        });
    }
    for (i, item) in p.list(obj, "ips")?.iter().enumerate() {
        let at = format!("{}[{i}]", join(prefix, "ips"));
        let o = p.object(item, &at)?;
        let q = Json {
            subject,
            prefix: &at,
        };
        let address = q.net(o, "address")?.ok_or_else(|| q.missing("address"))?;
        if let Some(v) = q.string(o, "version")? {
            let fits = match v.as_str() {
                "4" => address.addr().is_ipv4() || is_v4_mapped(address.addr()),
                "6" => address.addr().is_ipv6(),
                _ => false,
            };
            if !fits {
                return Err(subject.error(
                    Kind::Decode,
                    join(&at, "version"),
                    Some(shown(&v)),
                    format!(
                        "does not match address {address} (must be \"4\" or \"6\", its family)"
                    ),
                ));
            }
        }
        r.ips.push(IpEntry {
            address,
            gateway: q.ip(o, "gateway")?,
            interface: q
                .uint(o, "interface", usize::MAX as u64)?
                .map(|n| n as usize),
        });
    }
    for (i, item) in p.list(obj, "routes")?.iter().enumerate() {
        let at = format!("{}[{i}]", join(prefix, "routes"));
        let o = p.object(item, &at)?;
        let q = Json {
            subject,
            prefix: &at,
        };
        let u32_field = |k: &str| -> Result<Option<u32>, Invalid> {
            Ok(q.uint(o, k, u32::MAX.into())?.map(|n| n as u32))
        };
        r.routes.push(RouteEntry {
            dst: q.net(o, "dst")?.ok_or_else(|| q.missing("dst"))?,
            gw: q.ip(o, "gw")?,
            mtu: u32_field("mtu")?,
            advmss: u32_field("advmss")?,
            priority: u32_field("priority")?,
            table: u32_field("table")?,
            scope: q.uint(o, "scope", u8::MAX.into())?.map(|n| n as u8),
        });
    }
    match obj.get("dns") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let at = join(prefix, "dns");
            let o = p.object(v, &at)?;
            let q = Json {
                subject,
                prefix: &at,
            };
            for (i, s) in q.strings(o, "nameservers")?.into_iter().enumerate() {
                let ip = s.parse().map_err(|_| {
                    subject.error(
                        Kind::Decode,
                        format!("{}[{i}]", join(&at, "nameservers")),
                        Some(shown(&s)),
                        "must be an IPv4 or IPv6 address",
                    )
                })?;
                r.dns.nameservers.push(ip);
            }
            r.dns.domain = q.string(o, "domain")?;
            r.dns.search = q.strings(o, "search")?;
            r.dns.options = q.strings(o, "options")?;
        }
    }
    r.check_indices(subject, prefix)?;
    Ok(r)
}

fn is_v4_mapped(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
        IpAddr::V4(_) => false,
    }
}

/// Reads typed fields of JSON objects, naming `prefix.key` in errors.
struct Json<'a> {
    subject: &'a Subject,
    prefix: &'a str,
}

impl Json<'_> {
    fn key(&self, k: &str) -> String {
        join(self.prefix, k)
    }

    fn missing(&self, k: &str) -> Invalid {
        self.subject
            .error(Kind::Decode, self.key(k), None, "is required")
    }

    fn object<'v>(&self, v: &'v Value, at: &str) -> Result<&'v Map<String, Value>, Invalid> {
        v.as_object().ok_or_else(|| {
            wrong_type(
                self.subject,
                if at.is_empty() { "(top)" } else { at },
                v,
                "an object",
            )
        })
    }

    /// An optional list (null reads as empty).
    fn list<'v>(&self, o: &'v Map<String, Value>, k: &str) -> Result<&'v [Value], Invalid> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(other) => Err(wrong_type(self.subject, &self.key(k), other, "a list")),
        }
    }

    fn string(&self, o: &Map<String, Value>, k: &str) -> Result<Option<String>, Invalid> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(wrong_type(self.subject, &self.key(k), other, "a string")),
        }
    }

    fn strings(&self, o: &Map<String, Value>, k: &str) -> Result<Vec<String>, Invalid> {
        let mut out = Vec::new();
        for (i, item) in self.list(o, k)?.iter().enumerate() {
            match item {
                Value::String(s) => out.push(s.clone()),
                other => {
                    return Err(wrong_type(
                        self.subject,
                        &format!("{}[{i}]", self.key(k)),
                        other,
                        "a string",
                    ))
                }
            }
        }
        Ok(out)
    }

    fn uint(&self, o: &Map<String, Value>, k: &str, max: u64) -> Result<Option<u64>, Invalid> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => Ok(Some(n)),
                _ => Err(self.subject.error(
                    Kind::Decode,
                    self.key(k),
                    Some(excerpt(v)),
                    format!("must be an integer from 0 to {max}"),
                )),
            },
        }
    }

    fn net(&self, o: &Map<String, Value>, k: &str) -> Result<Option<IpNet>, Invalid> {
        let Some(s) = self.string(o, k)? else {
            return Ok(None);
        };
        s.parse().map(Some).map_err(|_| {
            self.subject.error(
                Kind::Decode,
                self.key(k),
                Some(shown(&s)),
                "must be an address with prefix length (CIDR, e.g. 10.10.0.5/24)",
            )
        })
    }

    fn ip(&self, o: &Map<String, Value>, k: &str) -> Result<Option<IpAddr>, Invalid> {
        let Some(s) = self.string(o, k)? else {
            return Ok(None);
        };
        s.parse().map(Some).map_err(|_| {
            self.subject.error(
                Kind::Decode,
                self.key(k),
                Some(shown(&s)),
                "must be an IPv4 or IPv6 address",
            )
        })
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn wrong_type(subject: &Subject, key: &str, v: &Value, want: &str) -> Invalid {
    subject.error(
        Kind::Decode,
        key,
        Some(excerpt(v)),
        format!("must be {want}, not {}", json_type(v)),
    )
}

/// A value as messages show it: quoted, as written.
fn shown(s: &str) -> String {
    format!("{s:?}")
}

/// A JSON value as messages show it, cut after 60 characters.
fn excerpt(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

// ---------------------------------------------------------------------------
// Plugin <-> agent messages
// ---------------------------------------------------------------------------

/// The version of the plugin ↔ agent protocol this build speaks. Bumped on
/// any change of [`AgentRequest`] or [`AgentResponse`] that the other
/// side would misread.
pub const PROTO_VERSION: u32 = 1;

/// The largest message body either side sends or accepts (1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// What the plugin asks the agent: one CNI invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRequest {
    /// The sender's [`PROTO_VERSION`].
    pub proto: u32,
    /// The verb.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    #[serde(default)]
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    #[serde(default)]
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    #[serde(default)]
    pub ifname: Option<String>,
    /// `CNI_ARGS`, parsed.
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    /// The network config from stdin, as the runtime sent it.
    pub config: Value,
    /// The version to answer in.
    pub cni_version: CniVersion,
}

impl AgentRequest {
    /// The Pod of the attachment, from `args`.
    pub fn pod(&self) -> Option<PodRef> {
        PodRef::from_args(&self.args)
    }

    /// The request as a frame (length + JSON).
    pub fn encode(&self) -> Result<Vec<u8>, CniError> {
        encode_message(self)
    }

    /// Reads a request body (the frame's payload, see [`decode_frame`]).
    /// The protocol version is checked first, so a plugin of another
    /// version gets an error naming both versions rather than a decode
    /// error about a field.
    pub fn decode(body: &[u8]) -> Result<AgentRequest, CniError> {
        decode_message(body, "request", |peer| check_proto(peer, PROTO_VERSION))
    }
}

/// What the agent answers: the rendered result (or the VERSION, STATUS,
/// GC answer; `Null` when there is nothing to print, as for DEL, CHECK,
/// STATUS and GC), or the error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentResponse {
    /// The sender's [`PROTO_VERSION`].
    pub proto: u32,
    /// The answer.
    pub result: Result<Value, CniError>,
}

impl AgentResponse {
    /// A success of this protocol version.
    pub fn ok(value: Value) -> AgentResponse {
        AgentResponse {
            proto: PROTO_VERSION,
            result: Ok(value),
        }
    }

    /// A failure of this protocol version.
    pub fn err(error: CniError) -> AgentResponse {
        AgentResponse {
            proto: PROTO_VERSION,
            result: Err(error),
        }
    }

    /// The response as a frame (length + JSON).
    pub fn encode(&self) -> Result<Vec<u8>, CniError> {
        encode_message(self)
    }

    /// Reads a response body; the agent's protocol version is checked
    /// first (see [`AgentRequest::decode`]).
    pub fn decode(body: &[u8]) -> Result<AgentResponse, CniError> {
        decode_message(body, "response", |peer| check_proto(PROTO_VERSION, peer))
    }
}

/// Refuses a plugin and an agent of different protocol versions: code 1,
/// naming both.
pub fn check_proto(plugin: u32, agent: u32) -> Result<(), CniError> {
    if plugin == agent {
        return Ok(());
    }
    Err(CniError::incompatible_version(format!(
        "the spur plugin speaks agent protocol {plugin} and spur-agent speaks {agent}: the \
         plugin binary on the node and the spur-agent must come from the same Spur release"
    )))
}

fn encode_message<T: Serialize>(msg: &T) -> Result<Vec<u8>, CniError> {
    let body = serde_json::to_vec(msg)
        .map_err(|e| CniError::io(format!("cannot encode the agent message: {e}")))?;
    encode_frame(&body)
}

fn decode_message<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
    check: impl Fn(u32) -> Result<(), CniError>,
) -> Result<T, CniError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| CniError::decode(format!("agent {what} is not JSON: {e}")))?;
    let proto = value.get("proto").and_then(Value::as_u64);
    match proto.and_then(|p| u32::try_from(p).ok()) {
        Some(p) => check(p)?,
        None => {
            return Err(CniError::incompatible_version(format!(
                "agent {what} carries no protocol version (this side speaks agent protocol \
                 {PROTO_VERSION})"
            )))
        }
    }
    serde_json::from_value(value)
        .map_err(|e| CniError::decode(format!("agent {what} cannot be decoded: {e}")))
}

// ---------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------

/// Bytes of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

/// `body` framed: its length as a big-endian `u32`, then the body. Code 5
/// when the body exceeds [`MAX_MESSAGE_BYTES`].
pub fn encode_frame(body: &[u8]) -> Result<Vec<u8>, CniError> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|_| body.len() <= MAX_MESSAGE_BYTES)
        .ok_or_else(|| {
            CniError::io(format!(
                "cannot send a message of {} bytes: the agent protocol carries at most \
                 {MAX_MESSAGE_BYTES}",
                body.len()
            ))
        })?;
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// The body length a header announces; code 6 when it exceeds
/// [`MAX_MESSAGE_BYTES`] (read no further then).
pub fn frame_body_len(header: [u8; FRAME_HEADER_BYTES]) -> Result<usize, CniError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(CniError::decode(format!(
            "agent message announces {len} bytes, more than the {MAX_MESSAGE_BYTES} the \
             protocol allows"
        )));
    }
    Ok(len)
}

/// Splits the first frame off `buf`, for a reader that collects bytes as
/// they arrive: `Ok(None)` while the frame is incomplete, else its body
/// and the number of bytes it took. Code 6 for an oversized header.
pub fn split_frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, CniError> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_BYTES>() else {
        return Ok(None);
    };
    let len = frame_body_len(*header)?;
    let end = FRAME_HEADER_BYTES + len;
    Ok(buf.get(FRAME_HEADER_BYTES..end).map(|body| (body, end)))
}

/// The body of `buf`, which must hold exactly one whole frame (what one
/// side sent before closing): code 5 when it is cut short, code 6 when it
/// is oversized or followed by more bytes.
pub fn decode_frame(buf: &[u8]) -> Result<&[u8], CniError> {
    match split_frame(buf)? {
        None => {
            let (want, got) = match buf.first_chunk::<FRAME_HEADER_BYTES>() {
                Some(h) => (
                    format!("{} bytes of body", u32::from_be_bytes(*h)),
                    buf.len() - FRAME_HEADER_BYTES,
                ),
                None => (format!("a {FRAME_HEADER_BYTES}-byte length"), buf.len()),
            };
            Err(CniError::io(format!(
                "agent message cut short: expected {want}, got {got} bytes"
            )))
        }
        Some((body, used)) if used == buf.len() => Ok(body),
        Some((_, used)) => Err(CniError::decode(format!(
            "agent message followed by {} unexpected bytes",
            buf.len() - used
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipamreq::IpConfig;
    use proptest::prelude::*;
    use serde_json::json;

    // -- helpers ----------------------------------------------------------

    const FULL_ENV: [(&str, &str); 6] = [
        (CNI_COMMAND, "ADD"),
        (CNI_CONTAINERID, "3f6940ab5ab4"),
        (CNI_NETNS, "/var/run/netns/cni-1234"),
        (CNI_IFNAME, "net1"),
        (
            CNI_ARGS,
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=3f6940ab5ab4;K8S_POD_UID=1c2d",
        ),
        (CNI_PATH, "/opt/cni/bin::/usr/libexec/cni"),
    ];

    fn env(command: Command, without: &[&str]) -> BTreeMap<String, String> {
        FULL_ENV
            .iter()
            .filter(|(k, _)| !without.contains(k))
            .map(|(k, v)| {
                let v = if *k == CNI_COMMAND {
                    command.as_str()
                } else {
                    v
                };
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn invoke(env: &BTreeMap<String, String>, stdin: &Value) -> Result<Invocation, CniError> {
        let text = serde_json::to_vec(stdin).unwrap();
        Invocation::from_env(|k| env.get(k).cloned(), &text)
    }

    /// A config every verb accepts (CHECK needs prevResult, GC the valid
    /// attachments).
    fn config_for(command: Command) -> Value {
        let mut c = json!({"cniVersion": "1.1.0", "name": "vlan100", "type": "spur"});
        if command == Command::Check {
            c["prevResult"] = rich().render(CniVersion::V1_1_0);
        }
        if command == Command::Gc {
            c[VALID_ATTACHMENTS_KEY] = json!([{"containerID": "3f6940ab5ab4", "ifname": "net1"}]);
        }
        c
    }

    fn err(env: &BTreeMap<String, String>, stdin: &Value) -> CniError {
        match invoke(env, stdin) {
            Ok(inv) => panic!("expected an error, got {inv:?}"),
            Err(e) => e,
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A result using every field.
    fn rich() -> CniResult {
        let mut r = CniResult::new(CniVersion::V1_1_0);
        let host = r.push_interface(Interface {
            mac: Some("8e:5a:1c:22:00:01".into()),
            ..Interface::new("veth3f6940ab")
        });
        let pod = r.push_interface(Interface {
            mac: Some("ca:fe:00:00:00:01".into()),
            mtu: Some(9000),
            sandbox: Some("/var/run/netns/cni-1234".into()),
            pci_id: Some("0000:3b:02.1".into()),
            ..Interface::new("net1")
        });
        r.push_interface(Interface {
            sandbox: Some("/var/run/netns/cni-1234".into()),
            socket_path: Some("/var/lib/spur/vhost/net2.sock".into()),
            ..Interface::new("net2")
        });
        r.ips = vec![
            IpEntry {
                address: net("10.10.0.5/24"),
                gateway: Some(ip("10.10.0.254")),
                interface: Some(pod),
            },
            IpEntry {
                address: net("fd00:10::5/64"),
                gateway: Some(ip("fd00:10::1")),
                interface: Some(pod),
            },
            IpEntry {
                address: net("169.254.1.1/32"),
                gateway: None,
                interface: Some(host),
            },
            IpEntry {
                address: net("10.20.0.9/16"),
                gateway: None,
                interface: None,
            },
        ];
        r.routes = vec![
            RouteEntry {
                mtu: Some(1400),
                advmss: Some(1360),
                priority: Some(100),
                table: Some(254),
                scope: Some(0),
                ..RouteEntry::new(net("0.0.0.0/0"), Some(ip("10.10.0.254")))
            },
            RouteEntry::new(net("192.168.0.0/16"), Some(ip("10.10.5.1"))),
            RouteEntry::new(net("::/0"), None),
        ];
        r.dns = Dns {
            nameservers: vec![ip("10.10.0.53"), ip("fd00:10::53")],
            domain: Some("example.com".into()),
            search: vec!["example.com".into(), "svc.example.com".into()],
            options: vec!["ndots:2".into()],
        };
        r
    }

    // -- environment ------------------------------------------------------

    #[test]
    fn every_verb_accepts_its_full_environment() {
        for command in Command::ALL {
            let inv = invoke(&env(command, &[]), &config_for(command)).unwrap();
            assert_eq!(inv.command, command);
            assert_eq!(inv.path, ["/opt/cni/bin", "/usr/libexec/cni"]);
            if command.is_attachment_verb() {
                assert_eq!(inv.container_id.as_deref(), Some("3f6940ab5ab4"));
                assert_eq!(inv.netns.as_deref(), Some("/var/run/netns/cni-1234"));
                assert_eq!(inv.ifname.as_deref(), Some("net1"));
                assert_eq!(inv.network_name(), "vlan100");
                let pod = inv.pod().unwrap();
                assert_eq!(
                    (pod.namespace.as_str(), pod.name.as_str()),
                    ("default", "web-0")
                );
                assert_eq!(pod.uid.as_deref(), Some("1c2d"));
                assert_eq!(pod.infra_container_id.as_deref(), Some("3f6940ab5ab4"));
                assert_eq!(inv.args.get("IgnoreUnknown").map(String::as_str), Some("1"));
            } else {
                // STATUS, GC and VERSION are not about one attachment.
                assert_eq!(inv.container_id, None);
                assert_eq!(inv.netns, None);
                assert_eq!(inv.ifname, None);
                assert!(inv.args.is_empty());
                assert_eq!(inv.pod(), None);
            }
        }
    }

    #[test]
    fn each_verb_needs_exactly_its_variables() {
        let optional = [CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH];
        let needs = |c: Command| -> Vec<&str> {
            match c {
                Command::Add | Command::Check => vec![CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME],
                Command::Del => vec![CNI_CONTAINERID, CNI_IFNAME],
                Command::Status | Command::Gc | Command::Version => vec![],
            }
        };
        for command in Command::ALL {
            assert_eq!(command.required_env(), needs(command).as_slice());
            for var in optional {
                // Unset and empty are the same.
                let unset = env(command, &[var]);
                let mut empty = env(command, &[]);
                empty.insert(var.to_string(), String::new());
                for e in [unset, empty] {
                    let out = invoke(&e, &config_for(command));
                    if needs(command).contains(&var) {
                        let e = out.unwrap_err();
                        assert_eq!(e.error_code(), Some(ErrorCode::InvalidEnvironment), "{e}");
                        assert!(e.msg.contains(var), "{command} without {var}: {e}");
                        assert!(e.msg.contains(command.as_str()), "{e}");
                    } else {
                        let inv = out.unwrap_or_else(|e| panic!("{command} without {var}: {e}"));
                        if var == CNI_NETNS && command == Command::Del {
                            assert_eq!(inv.netns, None);
                        }
                    }
                }
            }
        }
        // Every missing variable is named at once.
        let e = err(
            &env(Command::Add, &[CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME]),
            &config_for(Command::Add),
        );
        assert_eq!(
            e.msg,
            "ADD needs CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, which are not set"
        );
    }

    #[test]
    fn command_must_be_a_verb() {
        let mut e = env(Command::Add, &[CNI_COMMAND]);
        let x = err(&e, &config_for(Command::Add));
        assert_eq!(x.code, 4);
        assert!(x.msg.starts_with("CNI_COMMAND is not set"), "{x}");
        e.insert(CNI_COMMAND.into(), "add".into());
        let x = err(&e, &config_for(Command::Add));
        assert_eq!(x.code, 4);
        assert!(x.msg.contains("CNI_COMMAND=\"add\""), "{x}");
        for c in Command::ALL {
            assert_eq!(c.as_str().parse::<Command>().unwrap(), c);
            let j = serde_json::to_value(c).unwrap();
            assert_eq!(j, c.as_str());
            assert_eq!(serde_json::from_value::<Command>(j).unwrap(), c);
        }
    }

    #[test]
    fn version_needs_nothing_and_never_fails_on_stdin() {
        let only = |stdin: &[u8]| {
            Invocation::from_env(|k| (k == CNI_COMMAND).then(|| "VERSION".to_string()), stdin)
                .unwrap()
        };
        assert_eq!(only(b"").cni_version, CniVersion::LATEST);
        assert_eq!(only(b"").config, Value::Null);
        assert_eq!(
            only(br#"{"cniVersion":"0.4.0"}"#).cni_version,
            CniVersion::V0_4_0
        );
        assert_eq!(
            only(br#"{"cniVersion":"0.2.0"}"#).cni_version,
            CniVersion::LATEST
        );
        assert_eq!(only(b"\xff garbage").cni_version, CniVersion::LATEST);
        let inv = only(br#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(
            version_answer(Some(inv.cni_version)),
            json!({"cniVersion": "1.0.0",
                   "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
        assert_eq!(version_answer(None)["cniVersion"], "1.1.0");
    }

    #[test]
    fn container_id_and_ifname_are_checked() {
        let mut e = env(Command::Add, &[]);
        e.insert(CNI_CONTAINERID.into(), "-bad".into());
        let x = err(&e, &config_for(Command::Add));
        assert_eq!(x.code, 4);
        assert!(x.msg.contains("CNI_CONTAINERID=\"-bad\""), "{x}");
        e.insert(CNI_CONTAINERID.into(), "ok_1.2-3".into());
        e.insert(CNI_IFNAME.into(), "this-name-is-too-long".into());
        let x = err(&e, &config_for(Command::Add));
        assert_eq!(x.code, 4);
        assert!(
            x.msg.contains("CNI_IFNAME=\"this-name-is-too-long\""),
            "{x}"
        );
        assert!(x.msg.contains("15 characters"), "{x}");
        e.insert(CNI_IFNAME.into(), "net1".into());
        e.insert(CNI_CONTAINERID.into(), "ab$c".into());
        assert_eq!(err(&e, &config_for(Command::Add)).code, 4);
    }

    #[test]
    fn cni_args() {
        let a = parse_cni_args("A=1;B=x=y;;C=;A=2;").unwrap();
        assert_eq!(
            a.into_iter().collect::<Vec<_>>(),
            [
                ("A".to_string(), "2".to_string()),
                ("B".into(), "x=y".into()),
                ("C".into(), String::new())
            ]
        );
        assert!(parse_cni_args("").unwrap().is_empty());
        for bad in ["A", "A=1;B", "=1"] {
            let e = parse_cni_args(bad).unwrap_err();
            assert_eq!(e.code, 4);
            assert!(e.msg.starts_with("CNI_ARGS: pair"), "{e}");
        }
        let mut e = env(Command::Del, &[]);
        e.insert(CNI_ARGS.into(), "K8S_POD_NAME".into());
        assert_eq!(err(&e, &config_for(Command::Del)).code, 4);
        // Not the Pod's without both namespace and name.
        let only_name = parse_cni_args("K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=").unwrap();
        assert_eq!(PodRef::from_args(&only_name), None);
    }

    // -- stdin ------------------------------------------------------------

    #[test]
    fn config_errors_have_their_codes() {
        let add = env(Command::Add, &[]);
        let run = |command: Command, stdin: &[u8]| {
            Invocation::from_env(|k| env(command, &[]).get(k).cloned(), stdin).unwrap_err()
        };
        assert_eq!(run(Command::Add, b"").code, 6);
        assert_eq!(run(Command::Add, b"  \n").code, 6);
        assert_eq!(run(Command::Add, b"{\"cniVersion\":").code, 6);
        assert_eq!(run(Command::Add, b"[1]").code, 6);
        let cases: Vec<(Command, Value, u32, &str)> = vec![
            (Command::Add, json!({"name": "n"}), 1, "cniVersion"),
            (
                Command::Add,
                json!({"cniVersion": "0.2.0", "name": "n"}),
                1,
                "\"0.2.0\"",
            ),
            (
                Command::Add,
                json!({"cniVersion": 1, "name": "n"}),
                6,
                "cniVersion = 1",
            ),
            (
                Command::Check,
                json!({"cniVersion": "0.3.1", "name": "n"}),
                1,
                "came in 0.4.0",
            ),
            (
                Command::Status,
                json!({"cniVersion": "1.0.0", "name": "n"}),
                1,
                "came in 1.1.0",
            ),
            (
                Command::Gc,
                json!({"cniVersion": "1.0.0", "name": "n"}),
                1,
                "GC is not part",
            ),
            (Command::Add, json!({"cniVersion": "1.0.0"}), 7, "name"),
            (
                Command::Add,
                json!({"cniVersion": "1.0.0", "name": ""}),
                7,
                "name",
            ),
            (
                Command::Add,
                json!({"cniVersion": "1.0.0", "name": 3}),
                6,
                "name",
            ),
            (
                Command::Check,
                json!({"cniVersion": "1.0.0", "name": "n"}),
                7,
                "prevResult",
            ),
            (
                Command::Gc,
                json!({"cniVersion": "1.1.0", "name": "n"}),
                7,
                "valid-attachments",
            ),
            (
                Command::Gc,
                json!({"cniVersion": "1.1.0", "name": "n", "cni.dev/valid-attachments": {}}),
                6,
                "must be a list",
            ),
            (
                Command::Gc,
                json!({"cniVersion": "1.1.0", "name": "n",
                       "cni.dev/valid-attachments": [{"containerID": "a"}]}),
                6,
                "[0].ifname",
            ),
            (
                Command::Add,
                json!({"cniVersion": "1.0.0", "name": "n", "runtimeConfig": []}),
                6,
                "runtimeConfig",
            ),
            (
                Command::Add,
                json!({"cniVersion": "1.0.0", "name": "n",
                       "prevResult": {"ips": [{"address": "10.0.0.1"}]}}),
                6,
                "prevResult.ips[0].address = \"10.0.0.1\"",
            ),
        ];
        for (command, stdin, code, needle) in cases {
            let e = err(&env(command, &[]), &stdin);
            assert_eq!(e.code, code, "{command} {stdin}: {e}");
            assert!(e.msg.contains(needle), "{command} {stdin}: {e}");
        }
        let _ = add;
    }

    #[test]
    fn config_parts_are_read() {
        let prev = rich().render(CniVersion::V0_4_0);
        let mut prev_without_version = prev.clone();
        prev_without_version
            .as_object_mut()
            .unwrap()
            .remove("cniVersion");
        let stdin = json!({
            "cniVersion": "0.4.0", "name": "vlan100", "type": "spur",
            "runtimeConfig": {"mac": "ca:fe:00:00:00:02"},
            "prevResult": prev_without_version,
        });
        let inv = invoke(&env(Command::Check, &[]), &stdin).unwrap();
        assert_eq!(inv.cni_version, CniVersion::V0_4_0);
        // prevResult without cniVersion is in the config's version.
        assert_eq!(inv.prev_result, Some(rich().as_version(CniVersion::V0_4_0)));
        assert_eq!(
            inv.runtime_config,
            Some(json!({"mac": "ca:fe:00:00:00:02"}))
        );
        assert_eq!(inv.config, stdin);
        assert_eq!(inv.valid_attachments, None);

        // A prevResult of another version than the config's.
        let stdin = json!({"cniVersion": "1.1.0", "name": "n", "prevResult": prev});
        let inv = invoke(&env(Command::Add, &[]), &stdin).unwrap();
        assert_eq!(inv.prev_result.unwrap().cni_version, CniVersion::V0_4_0);

        // GC reads the draft key when the right one is absent.
        let stdin = json!({"cniVersion": "1.1.0", "name": "n",
                           "cni.dev/attachments": [{"containerID": "c1", "ifname": "eth1"}]});
        let inv = invoke(&env(Command::Gc, &[]), &stdin).unwrap();
        assert_eq!(
            inv.valid_attachments,
            Some(vec![Attachment {
                container_id: "c1".into(),
                ifname: "eth1".into()
            }])
        );
        // An empty list is a real answer: nothing is valid any more.
        let stdin = json!({"cniVersion": "1.1.0", "name": "n", "cni.dev/valid-attachments": []});
        let inv = invoke(&env(Command::Gc, &[]), &stdin).unwrap();
        assert_eq!(inv.valid_attachments, Some(vec![]));
    }

    #[test]
    fn del_survives_an_unreadable_prev_result() {
        let stdin = json!({"cniVersion": "1.0.0", "name": "n",
                           "prevResult": {"cniVersion": "1.0.0", "ips": "nope"}});
        let inv = invoke(&env(Command::Del, &[CNI_NETNS]), &stdin).unwrap();
        assert_eq!(inv.prev_result, None);
        assert_eq!(err(&env(Command::Add, &[]), &stdin).code, 6);
    }

    #[test]
    fn invocation_error_messages() {
        let mut lines = Vec::new();
        let mut show = |label: &str, e: CniError| {
            lines.push(format!("{label}: {}", e.to_json(CniVersion::V1_1_0)));
        };
        show(
            "no command",
            err(&env(Command::Add, &[CNI_COMMAND]), &json!({})),
        );
        show(
            "del without ifname",
            err(&env(Command::Del, &[CNI_IFNAME]), &json!({})),
        );
        show(
            "bad args",
            parse_cni_args("K8S_POD_NAME=a;oops").unwrap_err(),
        );
        show(
            "old version",
            err(
                &env(Command::Add, &[]),
                &json!({"cniVersion": "0.2.0", "name": "n"}),
            ),
        );
        show(
            "status in 1.0.0",
            err(
                &env(Command::Status, &[]),
                &json!({"cniVersion": "1.0.0", "name": "n"}),
            ),
        );
        show(
            "gc without attachments",
            err(
                &env(Command::Gc, &[]),
                &json!({"cniVersion": "1.1.0", "name": "n"}),
            ),
        );
        show(
            "bad prevResult",
            err(
                &env(Command::Check, &[]),
                &json!({"cniVersion": "1.0.0", "name": "n", "prevResult": {
                    "interfaces": [{"name": "eth0"}],
                    "ips": [{"address": "10.0.0.1/24", "interface": 1}]}}),
            ),
        );
        insta::assert_snapshot!("invocation_errors", lines.join("\n"));
    }

    // -- results ----------------------------------------------------------

    #[test]
    fn result_shapes_of_every_version() {
        let r = rich();
        for v in CniVersion::ALL {
            let name = format!("result_{}", v.as_str().replace('.', "_"));
            insta::assert_json_snapshot!(name, r.render(v));
        }
    }

    #[test]
    fn version_specific_fields() {
        let r = rich();
        for v in CniVersion::ALL {
            let j = r.render(v);
            let old = v < CniVersion::V1_0_0;
            for entry in j["ips"].as_array().unwrap() {
                assert_eq!(entry.get("version").is_some(), old, "{v}");
            }
            assert_eq!(
                j["interfaces"][1].get("mtu").is_some(),
                v == CniVersion::V1_1_0
            );
            assert_eq!(
                j["interfaces"][1].get("pciID").is_some(),
                v == CniVersion::V1_1_0
            );
            assert_eq!(
                j["routes"][0].get("table").is_some(),
                v == CniVersion::V1_1_0
            );
            assert_eq!(r.loses_fields_in(v), v != CniVersion::V1_1_0);
        }
        // Empty parts are left out; dns stays, as the reference plugins
        // write it.
        assert_eq!(
            CniResult::new(CniVersion::V1_0_0).render(CniVersion::V1_0_0),
            json!({"cniVersion": "1.0.0", "dns": {}})
        );
    }

    #[test]
    fn parses_what_reference_plugins_write() {
        // bridge + host-local, 0.4.0 and 1.0.0 shapes.
        let v040 = json!({
            "cniVersion": "0.4.0",
            "interfaces": [
                {"name": "cni0", "mac": "0a:58:0a:f4:00:01"},
                {"name": "veth1", "mac": "0a:58:0a:f4:00:02"},
                {"name": "eth0", "mac": "0a:58:0a:f4:00:05", "sandbox": "/var/run/netns/x"}
            ],
            "ips": [{"version": "4", "interface": 2, "address": "10.244.0.5/24",
                     "gateway": "10.244.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        });
        let r = CniResult::parse(&v040).unwrap();
        assert_eq!(r.cni_version, CniVersion::V0_4_0);
        assert_eq!(r.interfaces[2].sandbox.as_deref(), Some("/var/run/netns/x"));
        assert_eq!(r.ips[0].interface, Some(2));
        assert_eq!(r.routes, [RouteEntry::new(net("0.0.0.0/0"), None)]);
        assert_eq!(r.render(CniVersion::V0_4_0), v040);

        // 1.x needs no `version`, and extra keys are ignored.
        let v100 = json!({
            "cniVersion": "1.0.0",
            "ips": [{"address": "fd00::5/64", "gateway": "fd00::1", "x-vendor": true}],
            "dns": {"nameservers": ["fd00::53"]},
            "x-vendor": {}
        });
        let r = CniResult::parse(&v100).unwrap();
        assert_eq!(r.ips[0].interface, None);
        assert_eq!(r.dns.nameservers, [ip("fd00::53")]);
    }

    #[test]
    fn parse_errors() {
        let cases = [
            (json!([]), 6, "must be an object"),
            (json!({"ips": []}), 6, "cniVersion: is required"),
            (json!({"cniVersion": "0.2.0", "ip4": {}}), 1, "\"0.2.0\""),
            (
                json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24", "interface": 0}]}),
                6,
                "ips[0].interface = 0: points at no interface (the result has none)",
            ),
            (
                json!({"cniVersion": "0.4.0", "ips": [{"version": "6", "address": "10.0.0.1/24"}]}),
                6,
                "ips[0].version = \"6\"",
            ),
            (
                json!({"cniVersion": "0.4.0", "ips": [{"version": 4, "address": "10.0.0.1/24"}]}),
                6,
                "ips[0].version = 4: must be a string",
            ),
            (
                json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24", "interface": -1}]}),
                6,
                "ips[0].interface = -1",
            ),
            (
                json!({"cniVersion": "1.0.0", "ips": [{}]}),
                6,
                "ips[0].address: is required",
            ),
            (
                json!({"cniVersion": "1.0.0", "interfaces": [{}]}),
                6,
                "interfaces[0].name",
            ),
            (
                json!({"cniVersion": "1.1.0", "interfaces": [{"name": "a", "mtu": 1.5}]}),
                6,
                "interfaces[0].mtu = 1.5",
            ),
            (
                json!({"cniVersion": "1.1.0", "routes": [{"dst": "0.0.0.0/0", "scope": 300}]}),
                6,
                "routes[0].scope = 300: must be an integer from 0 to 255",
            ),
            (
                json!({"cniVersion": "1.1.0", "routes": [{"gw": "10.0.0.1"}]}),
                6,
                "routes[0].dst",
            ),
            (
                json!({"cniVersion": "1.1.0", "routes": [{"dst": "0.0.0.0/0", "gw": "x"}]}),
                6,
                "routes[0].gw = \"x\"",
            ),
            (
                json!({"cniVersion": "1.1.0", "dns": {"nameservers": ["ns1.example.com"]}}),
                6,
                "dns.nameservers[0] = \"ns1.example.com\"",
            ),
            (
                json!({"cniVersion": "1.1.0", "dns": {"search": [1]}}),
                6,
                "dns.search[0]",
            ),
        ];
        for (value, code, needle) in cases {
            let e = CniResult::parse(&value).unwrap_err();
            assert_eq!(e.code, code, "{value}: {e}");
            assert!(e.msg.contains(needle), "{value}: {e}");
            assert!(e.msg.starts_with("CNI result: "), "{e}");
        }
        // An IPv4-mapped IPv6 address may be written as version 4, as Go
        // does.
        let mapped = json!({"cniVersion": "0.3.1",
                            "ips": [{"version": "4", "address": "::ffff:10.0.0.1/120"}]});
        assert!(CniResult::parse(&mapped).is_ok());
    }

    #[test]
    fn from_ipam_and_add_ipam() {
        let ipam = IpamResult {
            ips: vec![
                IpConfig {
                    address: net("10.10.0.5/24"),
                    gateway: Some(ip("10.10.0.254")),
                },
                IpConfig {
                    address: net("fd00:10::5/64"),
                    gateway: None,
                },
            ],
            routes: vec![Route {
                dst: net("0.0.0.0/0"),
                gw: None,
            }],
            dns: Dns {
                nameservers: vec![ip("10.10.0.53")],
                ..Dns::default()
            },
        };
        // The IPAM plugin's own answer: no interfaces, no indices.
        let own = CniResult::from_ipam(CniVersion::V1_0_0, &ipam, None);
        assert!(own.interfaces.is_empty());
        assert!(own.ips.iter().all(|i| i.interface.is_none()));
        assert_eq!(
            own.render(CniVersion::V1_0_0),
            json!({"cniVersion": "1.0.0",
                   "ips": [{"address": "10.10.0.5/24", "gateway": "10.10.0.254"},
                           {"address": "fd00:10::5/64"}],
                   "routes": [{"dst": "0.0.0.0/0"}],
                   "dns": {"nameservers": ["10.10.0.53"]}})
        );
        // The main plugin's: addresses on the interface it made.
        let mut r = CniResult::new(CniVersion::V1_1_0);
        let i = r.push_interface(Interface::new("net1"));
        r.add_ipam(&ipam, Some(i));
        assert!(r.ips.iter().all(|e| e.interface == Some(0)));
        r.validate().unwrap();
        // An index set before its interface exists is reported.
        let dangling = CniResult::from_ipam(CniVersion::V1_1_0, &ipam, Some(0));
        assert_eq!(dangling.validate().unwrap_err().code, 6);
    }

    #[test]
    fn extend_renumbers_interfaces() {
        // The primary plugin's result: host veth and eth0 in the Pod.
        let sandbox = Some("/var/run/netns/x".to_string());
        let mut prev = CniResult::new(CniVersion::V1_0_0);
        prev.push_interface(Interface::new("veth1"));
        let eth0 = prev.push_interface(Interface {
            sandbox: sandbox.clone(),
            ..Interface::new("eth0")
        });
        prev.ips.push(IpEntry {
            address: net("10.244.0.5/24"),
            gateway: None,
            interface: Some(eth0),
        });
        prev.dns.nameservers.push(ip("10.96.0.10"));
        // Spur's: net1 in the Pod, plus an address on eth0 (same device).
        let mut more = CniResult::new(CniVersion::V1_0_0);
        let net1 = more.push_interface(Interface {
            sandbox: sandbox.clone(),
            mac: Some("ca:fe:00:00:00:01".into()),
            ..Interface::new("net1")
        });
        let eth0_again = more.push_interface(Interface {
            sandbox: sandbox.clone(),
            mac: Some("0a:58:0a:f4:00:05".into()),
            ..Interface::new("eth0")
        });
        more.ips = vec![
            IpEntry {
                address: net("10.10.0.5/24"),
                gateway: None,
                interface: Some(net1),
            },
            IpEntry {
                address: net("fd00::5/64"),
                gateway: None,
                interface: Some(eth0_again),
            },
            IpEntry {
                address: net("10.244.0.5/24"),
                gateway: None,
                interface: Some(eth0_again),
            },
            IpEntry {
                address: net("10.30.0.5/24"),
                gateway: None,
                interface: Some(7),
            },
        ];
        more.dns.nameservers = vec![ip("10.96.0.10"), ip("10.10.0.53")];
        more.dns.domain = Some("example.com".into());
        let out = extend(prev, more);
        let names: Vec<&str> = out.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["veth1", "eth0", "net1"]);
        // eth0 learnt its MAC from the second result.
        assert_eq!(out.interfaces[1].mac.as_deref(), Some("0a:58:0a:f4:00:05"));
        let on: Vec<(String, Option<usize>)> = out
            .ips
            .iter()
            .map(|e| (e.address.to_string(), e.interface))
            .collect();
        assert_eq!(
            on,
            [
                ("10.244.0.5/24".to_string(), Some(1)),
                ("10.10.0.5/24".into(), Some(2)),
                ("fd00::5/64".into(), Some(1)),
                ("10.30.0.5/24".into(), None),
            ]
        );
        assert_eq!(out.dns.nameservers, [ip("10.96.0.10"), ip("10.10.0.53")]);
        assert_eq!(out.dns.domain.as_deref(), Some("example.com"));
        out.validate().unwrap();
    }

    // -- errors -----------------------------------------------------------

    #[test]
    fn error_objects() {
        let e = CniError::exhausted("IPPool vlan100-ipv4 has no free address");
        assert_eq!(
            e.to_json(CniVersion::V0_4_0),
            json!({"cniVersion": "0.4.0", "code": 100,
                   "msg": "IPPool vlan100-ipv4 has no free address"})
        );
        let e = e.with_details("10.10.0.0/24: 253 of 253 used");
        assert_eq!(
            e.to_json(CniVersion::V1_1_0)["details"],
            "10.10.0.0/24: 253 of 253 used"
        );
        assert_eq!(e.error_code(), Some(ErrorCode::Exhausted));
        assert_eq!(CniError::raw(42, "x").error_code(), None);
        // What a plugin prints reads back (cniVersion is ignored).
        let back: CniError = serde_json::from_value(e.to_json(CniVersion::V1_1_0)).unwrap();
        assert_eq!(back, e);
        for (make, code) in [
            (CniError::incompatible_version as fn(String) -> CniError, 1),
            (CniError::unsupported_field, 2),
            (CniError::unknown_container, 3),
            (CniError::invalid_environment, 4),
            (CniError::io, 5),
            (CniError::decode, 6),
            (CniError::invalid_config, 7),
            (CniError::try_again_later, 11),
            (CniError::plugin_not_available, 50),
            (CniError::limited_connectivity, 51),
            (CniError::exhausted, 100),
            (CniError::address_in_use, 101),
        ] {
            let e = make("m".to_string());
            assert_eq!(e.code, code);
            assert_eq!(e.error_code().map(ErrorCode::code), Some(code));
        }
    }

    #[test]
    fn invalid_maps_to_codes() {
        let s = Subject::new("NetworkAttachmentDefinition", Some("default"), "vlan100");
        let cases = [
            (Kind::Decode, 6),
            (Kind::Invalid, 7),
            (Kind::Missing, 7),
            (Kind::Unsupported, 2),
            (Kind::IncompatibleVersion, 1),
            (Kind::Conflict, 7),
            (Kind::InUse, 7),
        ];
        for (kind, code) in cases {
            let inv = s.error(kind, "spec.config.vlan", Some("5000".into()), "why");
            let e = CniError::from(&inv);
            assert_eq!(e.code, code, "{kind:?}");
            assert_eq!(
                e.msg,
                "NetworkAttachmentDefinition default/vlan100: spec.config.vlan = 5000: why"
            );
        }
    }

    // -- agent protocol ---------------------------------------------------

    #[test]
    fn agent_messages_round_trip() {
        let inv = invoke(&env(Command::Add, &[]), &config_for(Command::Add)).unwrap();
        let req = inv.to_request();
        assert_eq!(req.proto, PROTO_VERSION);
        assert_eq!(req.pod().unwrap().name, "web-0");
        let framed = req.encode().unwrap();
        let back = AgentRequest::decode(decode_frame(&framed).unwrap()).unwrap();
        assert_eq!(back, req);

        for resp in [
            AgentResponse::ok(rich().render(CniVersion::V1_1_0)),
            AgentResponse::ok(Value::Null),
            AgentResponse::err(CniError::try_again_later("agent starting").with_details("d")),
        ] {
            let framed = resp.encode().unwrap();
            let back = AgentResponse::decode(decode_frame(&framed).unwrap()).unwrap();
            assert_eq!(back, resp);
        }
    }

    #[test]
    fn mismatched_protocols_are_refused_naming_both() {
        let inv = invoke(&env(Command::Del, &[]), &config_for(Command::Del)).unwrap();
        let mut req = serde_json::to_value(inv.to_request()).unwrap();
        // A newer plugin whose request the agent could not read anyway.
        req["proto"] = json!(2);
        req["command"] = json!("FUTURE");
        let e = AgentRequest::decode(req.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.code, 1);
        assert!(e.msg.contains("plugin speaks agent protocol 2"), "{e}");
        assert!(e.msg.contains("spur-agent speaks 1"), "{e}");

        let resp = json!({"proto": 7, "result": {"Ok": null}});
        let e = AgentResponse::decode(resp.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.code, 1);
        assert!(e.msg.contains("plugin speaks agent protocol 1"), "{e}");
        assert!(e.msg.contains("spur-agent speaks 7"), "{e}");

        let e = AgentResponse::decode(br#"{"result": {"Ok": null}}"#).unwrap_err();
        assert_eq!(e.code, 1);
        assert!(e.msg.contains("no protocol version"), "{e}");
        assert_eq!(AgentResponse::decode(b"not json").unwrap_err().code, 6);
        let e = AgentResponse::decode(br#"{"proto": 1, "result": 5}"#).unwrap_err();
        assert_eq!(e.code, 6);
        assert!(check_proto(1, 1).is_ok());
    }

    #[test]
    fn framing() {
        let framed = encode_frame(b"{}").unwrap();
        assert_eq!(framed, [0, 0, 0, 2, b'{', b'}']);
        assert_eq!(decode_frame(&framed).unwrap(), b"{}");
        // Arriving byte by byte.
        for cut in 0..framed.len() {
            assert_eq!(split_frame(&framed[..cut]).unwrap(), None);
            let e = decode_frame(&framed[..cut]).unwrap_err();
            assert_eq!(e.code, 5, "{e}");
            assert!(e.msg.contains("cut short"), "{e}");
        }
        let mut two = framed.clone();
        two.extend_from_slice(&framed);
        assert_eq!(split_frame(&two).unwrap(), Some((&b"{}"[..], 6)));
        let e = decode_frame(&two).unwrap_err();
        assert_eq!(e.code, 6);
        assert!(e.msg.contains("followed by 6 unexpected bytes"), "{e}");

        // The limit holds both ways.
        let max = vec![b' '; MAX_MESSAGE_BYTES];
        assert_eq!(encode_frame(&max).unwrap().len(), MAX_MESSAGE_BYTES + 4);
        let e = encode_frame(&vec![b' '; MAX_MESSAGE_BYTES + 1]).unwrap_err();
        assert_eq!(e.code, 5);
        assert!(e.msg.contains("1048577 bytes"), "{e}");
        let huge = u32::MAX.to_be_bytes();
        let e = split_frame(&huge).unwrap_err();
        assert_eq!(e.code, 6);
        assert!(e.msg.contains("4294967295 bytes"), "{e}");
        assert_eq!(decode_frame(&huge).unwrap_err().code, 6);
        assert_eq!(frame_body_len([0, 0x10, 0, 0]).unwrap(), MAX_MESSAGE_BYTES);
        assert!(frame_body_len([0, 0x10, 0, 1]).is_err());
    }

    // -- properties -------------------------------------------------------

    fn arb_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ]
    }

    fn arb_net() -> impl Strategy<Value = IpNet> {
        (arb_ip(), any::<u8>()).prop_map(|(a, p)| {
            let max = if a.is_ipv4() { 32 } else { 128 };
            IpNet::new(a, p % (max + 1)).unwrap()
        })
    }

    fn arb_text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-z0-9:./-]{1,16}", any::<String>(),]
    }

    fn arb_interface() -> impl Strategy<Value = Interface> {
        (
            prop::sample::select(vec!["eth0", "net1", "net2", "lo", "veth1"]),
            proptest::option::of(arb_text()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(prop::sample::select(vec![
                "/var/run/netns/a",
                "/proc/1/ns/net",
            ])),
            proptest::option::of(arb_text()),
            proptest::option::of(arb_text()),
        )
            .prop_map(|(name, mac, mtu, sandbox, socket_path, pci_id)| Interface {
                name: name.to_string(),
                mac,
                mtu,
                sandbox: sandbox.map(str::to_string),
                socket_path,
                pci_id,
            })
    }

    fn arb_route() -> impl Strategy<Value = RouteEntry> {
        (
            arb_net(),
            proptest::option::of(arb_ip()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u8>()),
        )
            .prop_map(
                |(dst, gw, mtu, advmss, priority, table, scope)| RouteEntry {
                    dst,
                    gw,
                    mtu,
                    advmss,
                    priority,
                    table,
                    scope,
                },
            )
    }

    fn arb_dns() -> impl Strategy<Value = Dns> {
        (
            prop::collection::vec(arb_ip(), 0..3),
            proptest::option::of(arb_text()),
            prop::collection::vec(arb_text(), 0..3),
            prop::collection::vec(arb_text(), 0..3),
        )
            .prop_map(|(nameservers, domain, search, options)| Dns {
                nameservers,
                domain,
                search,
                options,
            })
    }

    /// Results whose indices all point at an interface.
    fn arb_result() -> impl Strategy<Value = CniResult> {
        (
            prop::sample::select(CniVersion::ALL.to_vec()),
            prop::collection::vec(arb_interface(), 0..4),
            prop::collection::vec(
                (arb_net(), proptest::option::of(arb_ip()), any::<u8>()),
                0..6,
            ),
            prop::collection::vec(arb_route(), 0..4),
            arb_dns(),
        )
            .prop_map(|(cni_version, interfaces, ips, routes, dns)| {
                let n = interfaces.len();
                let ips = ips
                    .into_iter()
                    .map(|(address, gateway, k)| IpEntry {
                        address,
                        gateway,
                        interface: (n > 0 && k % 3 != 0).then(|| usize::from(k) % n),
                    })
                    .collect();
                CniResult {
                    cni_version,
                    interfaces,
                    ips,
                    routes,
                    dns,
                }
            })
    }

    fn arb_env() -> impl Strategy<Value = BTreeMap<String, String>> {
        let names = vec![
            CNI_COMMAND,
            CNI_CONTAINERID,
            CNI_NETNS,
            CNI_IFNAME,
            CNI_ARGS,
            CNI_PATH,
        ];
        let value = prop_oneof![
            prop::sample::select(vec![
                "ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "abc", "eth0", "A=1;B",
            ])
            .prop_map(str::to_string),
            any::<String>(),
        ];
        prop::collection::btree_map(
            prop::sample::select(names).prop_map(str::to_string),
            value,
            0..7,
        )
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            prop::sample::select(vec!["1.1.0", "0.4.0", "0.2.0", "10.0.0.1/24", "x"])
                .prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ];
        let keys = prop::sample::select(vec![
            "cniVersion",
            "name",
            "prevResult",
            "runtimeConfig",
            "cni.dev/valid-attachments",
            "interfaces",
            "ips",
            "routes",
            "dns",
            "address",
            "interface",
            "version",
            "containerID",
            "ifname",
            "dst",
        ])
        .prop_map(str::to_string);
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(keys.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn render_then_parse_is_identity(r in arb_result()) {
            prop_assert!(r.validate().is_ok());
            for v in CniVersion::ALL {
                let json = r.render(v);
                let back = CniResult::parse(&json);
                prop_assert_eq!(back.as_ref(), Ok(&r.as_version(v)), "{}", v);
                let back = back.unwrap();
                prop_assert_eq!(back.render(v), json.clone());
                // Through text, as it crosses processes.
                let text = serde_json::to_string(&json).unwrap();
                let again: Value = serde_json::from_str(&text).unwrap();
                prop_assert_eq!(CniResult::parse(&again).unwrap(), back);
                // 0.x carries `version`, 1.x does not need it.
                if v < CniVersion::V1_0_0 {
                    let mut stripped = json.clone();
                    for ip in stripped["ips"].as_array_mut().into_iter().flatten() {
                        ip.as_object_mut().unwrap().remove("version");
                    }
                    prop_assert_eq!(CniResult::parse(&stripped).unwrap(), r.as_version(v));
                }
            }
        }

        #[test]
        fn extend_keeps_every_index_on_its_interface(prev in arb_result(), more in arb_result()) {
            let out = extend(prev.clone(), more.clone());
            prop_assert!(out.validate().is_ok());
            prop_assert_eq!(out.cni_version, prev.cni_version);
            // prev is untouched at the front (interfaces may only gain
            // fields they lacked).
            prop_assert_eq!(&out.ips[..prev.ips.len()], &prev.ips[..]);
            for (a, b) in prev.interfaces.iter().zip(&out.interfaces) {
                prop_assert!(a.same_device(b));
                prop_assert!(a.mac.is_none() || a.mac == b.mac);
            }
            // Every address of `more` is there, on the same device.
            for ip in &more.ips {
                let want = ip.interface.map(|i| &more.interfaces[i]);
                let found = out.ips.iter().any(|o| {
                    o.address == ip.address
                        && o.gateway == ip.gateway
                        && match (o.interface, want) {
                            (Some(j), Some(w)) => out.interfaces[j].same_device(w),
                            (None, None) => true,
                            _ => false,
                        }
                });
                prop_assert!(found, "{:?} lost", ip);
            }
            // No device twice, unless prev already had it twice.
            for (j, iface) in out.interfaces.iter().enumerate().skip(prev.interfaces.len()) {
                prop_assert!(!out.interfaces[..j].iter().any(|o| o.same_device(iface)));
            }
            for r in &more.routes {
                prop_assert!(out.routes.contains(r));
            }
        }

        #[test]
        fn from_env_never_panics(
            env in arb_env(),
            stdin in prop::collection::vec(any::<u8>(), 0..64),
            json in arb_json(),
        ) {
            let _ = Invocation::from_env(|k| env.get(k).cloned(), &stdin);
            let text = serde_json::to_vec(&json).unwrap();
            if let Ok(inv) = Invocation::from_env(|k| env.get(k).cloned(), &text) {
                let _ = inv.to_request().encode();
            }
            let _ = CniResult::parse(&json);
        }

        #[test]
        fn from_env_valid_verbs_with_any_config(command in prop::sample::select(Command::ALL.to_vec()), json in arb_json()) {
            let e = env(command, &[]);
            let mut config = json;
            if let Value::Object(m) = &mut config {
                m.entry("cniVersion").or_insert_with(|| "1.1.0".into());
                m.entry("name").or_insert_with(|| "n".into());
            }
            let _ = invoke(&e, &config);
        }

        #[test]
        fn framing_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode_frame(&bytes);
            let _ = split_frame(&bytes);
            let _ = AgentRequest::decode(&bytes);
            let _ = AgentResponse::decode(&bytes);
            if let Ok(Some((body, used))) = split_frame(&bytes) {
                prop_assert_eq!(used, body.len() + FRAME_HEADER_BYTES);
            }
        }

        #[test]
        fn frames_round_trip(body in prop::collection::vec(any::<u8>(), 0..300)) {
            let framed = encode_frame(&body).unwrap();
            prop_assert_eq!(decode_frame(&framed).unwrap(), &body[..]);
        }

        #[test]
        fn agent_json_never_panics(json in arb_json()) {
            let text = json.to_string();
            let _ = AgentRequest::decode(text.as_bytes());
            let _ = AgentResponse::decode(text.as_bytes());
        }
    }
}
