//! Validating admission webhooks, called as kube-apiserver calls them: the
//! `admissionregistration.k8s.io/v1` ValidatingWebhookConfigurations stored
//! in the server say which requests go to which HTTPS endpoint, and every
//! matching webhook must allow a request before it is stored.
//!
//! Two parts:
//!
//! - pure: [`parse_configurations`] reads the stored configurations into
//!   [`Webhook`]s; [`Webhook::matches`] decides whether one admission
//!   request goes to a webhook (rules, namespaceSelector, objectSelector);
//!   [`review`] builds the AdmissionReview v1 request body; [`interpret`]
//!   reads the answer; [`denied`] and [`call_failed`] word the results as
//!   kube-apiserver does.
//! - I/O: [`call`] POSTs one review over HTTPS (tokio-rustls with the
//!   webhook's caBundle as the only roots, HTTP/1.1 with hyper's client
//!   connection API) within the webhook's timeoutSeconds. A `service`
//!   reference is dialed where the embedder's [`ServiceResolver`] says
//!   (see [`crate::ApiServer::set_service_resolver`]); a `url` directly.
//!
//! How the server uses them (see [`crate::server`]): a write whose resource
//! some webhook matches is first run as a dry run while the admission chain
//! records the admission requests it produces
//! ([`crate::admission::Admission::start_capture`]); the store lock is
//! released, the matching webhooks are called in order, and the request is
//! then run for real while the admission chain checks that it produces the
//! same requests against the same stored objects (or it starts again).
//! A `generateName` create shows the webhooks the name the real create
//! then stores: the dry run's draws from the store's RNG are undone, and
//! a name drawn differently (another request drew in between) makes the
//! request start again. A delete shows the webhooks every object it would
//! cascade to (dependents, a Namespace's contents); a refusal of any of
//! them refuses the whole request, a DELETE of a collection included.
//!
//! Not modelled: `matchPolicy: Equivalent` (a rule matches the request's
//! own group and version only), `matchConditions`, mutating webhooks, and
//! webhooks being called in parallel (they are called one after another,
//! in configuration-name order, then webhook order).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Map, Value};

use crate::admission::{CapturedRequest, Operation};
use crate::error::ApiError;

/// timeoutSeconds when a webhook does not say.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 10;

/// The largest webhook answer read, in bytes.
const MAX_RESPONSE_BYTES: usize = 3 * 1024 * 1024;

/// A webhook's `clientConfig.service`, as handed to the embedder's
/// resolver.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceRef {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The Service port (443 when the configuration names none).
    pub port: u16,
}

impl ServiceRef {
    /// The name the webhook's certificate must carry:
    /// `<name>.<namespace>.svc`.
    pub fn server_name(&self) -> String {
        format!("{}.{}.svc", self.name, self.namespace)
    }
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// Where the embedder says a Service's webhook listens (None: no endpoint).
pub type ServiceResolver = Arc<dyn Fn(&ServiceRef) -> Option<SocketAddr> + Send + Sync>;

/// What happens when a webhook cannot be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// The request fails (500).
    Fail,
    /// The request proceeds (with a warning in the log).
    Ignore,
}

/// Where a webhook listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `clientConfig.url`: dialed directly.
    Url {
        /// Host name or IP address (without brackets).
        host: String,
        /// Port (443 by default).
        port: u16,
        /// Path (with any query), `/` at least.
        path: String,
    },
    /// `clientConfig.service`: dialed where the resolver says.
    Service {
        /// The Service.
        service: ServiceRef,
        /// Path, `/` by default.
        path: String,
    },
}

impl Target {
    /// The TLS server name: the URL's host, or `<name>.<namespace>.svc`.
    pub fn server_name(&self) -> String {
        match self {
            Target::Url { host, .. } => host.clone(),
            Target::Service { service, .. } => service.server_name(),
        }
    }

    /// The `Host` header.
    fn authority(&self) -> String {
        match self {
            Target::Url { host, port, .. } if host.contains(':') => format!("[{host}]:{port}"),
            Target::Url { host, port, .. } => format!("{host}:{port}"),
            Target::Service { service, .. } => {
                format!("{}:{}", service.server_name(), service.port)
            }
        }
    }

    fn path(&self) -> &str {
        match self {
            Target::Url { path, .. } | Target::Service { path, .. } => path,
        }
    }

    /// The URL as error messages show it.
    pub fn url(&self) -> String {
        format!("https://{}{}", self.authority(), self.path())
    }
}

/// Which objects a rule's `scope` admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `*` (the default).
    Any,
    /// Cluster-scoped resources only.
    Cluster,
    /// Namespaced resources only.
    Namespaced,
}

/// One entry of a webhook's `rules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// CREATE, UPDATE, DELETE, CONNECT or `*`.
    pub operations: Vec<String>,
    /// API groups (`""` the core group, `*` any).
    pub api_groups: Vec<String>,
    /// API versions (`*` any).
    pub api_versions: Vec<String>,
    /// Resources: `pods`, `pods/status`, `pods/*`, `*`, `*/status`, `*/*`.
    pub resources: Vec<String>,
    /// Scope.
    pub scope: Scope,
}

/// What an admission request is, for rule matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attributes<'a> {
    /// The operation.
    pub operation: Operation,
    /// API group.
    pub group: &'a str,
    /// API version.
    pub version: &'a str,
    /// Resource plural.
    pub resource: &'a str,
    /// Subresource ("" for none).
    pub subresource: &'a str,
    /// True for namespaced resources.
    pub namespaced: bool,
}

impl<'a> Attributes<'a> {
    /// The attributes of a recorded admission request.
    pub fn of(req: &'a CapturedRequest) -> Attributes<'a> {
        Attributes {
            operation: req.operation,
            group: &req.resource.group,
            version: &req.resource.version,
            resource: &req.resource.plural,
            subresource: req.subresource.as_deref().unwrap_or_default(),
            namespaced: req.resource.namespaced,
        }
    }
}

fn operation_name(op: Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
    }
}

impl Rule {
    /// True when the rule covers the request (CONNECT never occurs here).
    pub fn matches(&self, a: &Attributes<'_>) -> bool {
        let op = operation_name(a.operation);
        let any_or = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
        any_or(&self.operations, op)
            && any_or(&self.api_groups, a.group)
            && any_or(&self.api_versions, a.version)
            && self.resources.iter().any(|r| {
                let (res, sub) = r.split_once('/').unwrap_or((r.as_str(), ""));
                (res == "*" || res == a.resource) && (sub == "*" || sub == a.subresource)
            })
            && match self.scope {
                Scope::Any => true,
                Scope::Cluster => !a.namespaced,
                Scope::Namespaced => a.namespaced,
            }
    }
}

/// One `matchExpressions` requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// The label is present with one of the values.
    In(String, Vec<String>),
    /// The label is absent, or has none of the values.
    NotIn(String, Vec<String>),
    /// The label is present.
    Exists(String),
    /// The label is absent.
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &Map<String, Value>) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        match self {
            Requirement::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|v| !vs.iter().any(|x| x == v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A metav1.LabelSelector (an empty one matches everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// `matchLabels`.
    pub match_labels: BTreeMap<String, String>,
    /// `matchExpressions`.
    pub match_expressions: Vec<Requirement>,
}

impl Selector {
    /// Reads a selector; the error says what is malformed.
    pub fn parse(v: Option<&Value>) -> Result<Selector, String> {
        let mut s = Selector::default();
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(s);
        };
        if let Some(ml) = v.get("matchLabels").filter(|m| !m.is_null()) {
            let ml = ml.as_object().ok_or("matchLabels must be an object")?;
            for (k, val) in ml {
                let val = val
                    .as_str()
                    .ok_or(format!("matchLabels[{k}] must be a string"))?;
                s.match_labels.insert(k.clone(), val.to_string());
            }
        }
        if let Some(me) = v.get("matchExpressions").filter(|m| !m.is_null()) {
            let me = me.as_array().ok_or("matchExpressions must be a list")?;
            for e in me {
                let key = e
                    .get("key")
                    .and_then(Value::as_str)
                    .ok_or("matchExpressions[].key is required")?
                    .to_string();
                let values: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                let op = e.get("operator").and_then(Value::as_str).unwrap_or("");
                let r = match op {
                    "In" | "NotIn" if values.is_empty() => {
                        return Err(format!(
                            "matchExpressions[{key}]: values must be non-empty for {op}"
                        ))
                    }
                    "In" => Requirement::In(key, values),
                    "NotIn" => Requirement::NotIn(key, values),
                    "Exists" => Requirement::Exists(key),
                    "DoesNotExist" => Requirement::DoesNotExist(key),
                    other => {
                        return Err(format!(
                        "matchExpressions[{key}]: {other:?} is not a valid label selector operator"
                    ))
                    }
                };
                s.match_expressions.push(r);
            }
        }
        Ok(s)
    }

    /// True when the selector matches nothing in particular.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether `labels` (a `metadata.labels` object, or None) match.
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        let empty = Map::new();
        let labels = labels.and_then(Value::as_object).unwrap_or(&empty);
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k).and_then(Value::as_str) == Some(v.as_str()))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

/// One webhook of a ValidatingWebhookConfiguration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// The webhook's name (`ippools.spur.dev`).
    pub name: String,
    /// The configuration it comes from.
    pub configuration: String,
    /// Its rules (a request matching none is not sent).
    pub rules: Vec<Rule>,
    /// namespaceSelector.
    pub namespace_selector: Selector,
    /// objectSelector.
    pub object_selector: Selector,
    /// failurePolicy (Fail by default).
    pub failure_policy: FailurePolicy,
    /// timeoutSeconds (10 by default).
    pub timeout: Duration,
    /// sideEffects (`None`, `NoneOnDryRun`, `Some`, `Unknown`).
    pub side_effects: String,
    /// Where it listens (None when `problem` says why not).
    pub target: Option<Target>,
    /// The CA certificates (PEM) its serving certificate must chain to.
    pub ca_bundle: Vec<u8>,
    /// What makes the webhook uncallable (bad clientConfig or caBundle, no
    /// `v1` in admissionReviewVersions, a malformed selector): a call
    /// failure under failurePolicy whenever its rules match.
    pub problem: Option<String>,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Reads `https://host[:port][/path]`.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or(format!("url {url:?}: the scheme must be https"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or(format!("url {url:?}: unclosed ["))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("url {url:?}: bad host")),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("url {url:?}: no host"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("url {url:?}: bad port {p:?}"))?,
        None => 443,
    };
    Ok(Target::Url {
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

fn parse_client_config(cc: Option<&Value>) -> Result<(Target, Vec<u8>), String> {
    let cc = cc.ok_or("clientConfig is required")?;
    let ca_bundle = match cc.get("caBundle").and_then(Value::as_str) {
        Some(b) if !b.is_empty() => base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .map_err(|e| format!("clientConfig.caBundle is not base64: {e}"))?,
        _ => Vec::new(),
    };
    let target = match (
        cc.get("url").and_then(Value::as_str),
        cc.get("service").filter(|s| !s.is_null()),
    ) {
        (Some(url), None) => parse_url(url)?,
        (None, Some(svc)) => {
            let field = |k: &str| {
                svc.get(k)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .ok_or(format!("clientConfig.service.{k} is required"))
            };
            let port = match svc.get("port") {
                None | Some(Value::Null) => 443,
                Some(p) => p
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p > 0)
                    .ok_or(format!("clientConfig.service.port {p} is not a port"))?,
            };
            let path = svc
                .get("path")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
                .unwrap_or("/");
            Target::Service {
                service: ServiceRef {
                    namespace: field("namespace")?,
                    name: field("name")?,
                    port,
                },
                path: if path.starts_with('/') {
                    path.to_string()
                } else {
                    format!("/{path}")
                },
            }
        }
        _ => return Err("clientConfig needs exactly one of url and service".into()),
    };
    Ok((target, ca_bundle))
}

fn parse_scope(v: Option<&Value>) -> Scope {
    match v.and_then(Value::as_str) {
        Some("Cluster") => Scope::Cluster,
        Some("Namespaced") => Scope::Namespaced,
        _ => Scope::Any,
    }
}

/// Reads one entry of `webhooks`.
pub fn parse_webhook(configuration: &str, v: &Value) -> Webhook {
    let mut problems = Vec::new();
    let rules = v
        .get("rules")
        .and_then(Value::as_array)
        .map(|rs| {
            rs.iter()
                .map(|r| Rule {
                    operations: strings(r.get("operations")),
                    api_groups: strings(r.get("apiGroups")),
                    api_versions: strings(r.get("apiVersions")),
                    resources: strings(r.get("resources")),
                    scope: parse_scope(r.get("scope")),
                })
                .collect()
        })
        .unwrap_or_default();
    let mut selector = |key: &str| {
        Selector::parse(v.get(key)).unwrap_or_else(|e| {
            problems.push(format!("{key}: {e}"));
            // A selector that cannot be read must not silently match
            // everything: the webhook fails as its problem says.
            Selector::default()
        })
    };
    let namespace_selector = selector("namespaceSelector");
    let object_selector = selector("objectSelector");
    let failure_policy = match v.get("failurePolicy").and_then(Value::as_str) {
        Some("Ignore") => FailurePolicy::Ignore,
        _ => FailurePolicy::Fail,
    };
    let timeout = Duration::from_secs(
        v.get("timeoutSeconds")
            .and_then(Value::as_u64)
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_TIMEOUT_SECONDS),
    );
    let (target, ca_bundle) = match parse_client_config(v.get("clientConfig")) {
        Ok((t, ca)) => (Some(t), ca),
        Err(e) => {
            problems.push(e);
            (None, Vec::new())
        }
    };
    let versions = strings(v.get("admissionReviewVersions"));
    if !versions.iter().any(|x| x == "v1") {
        problems.push(format!(
            "admissionReviewVersions {versions:?} has no version this server sends (v1)"
        ));
    }
    Webhook {
        name: v
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        configuration: configuration.to_string(),
        rules,
        namespace_selector,
        object_selector,
        failure_policy,
        timeout,
        side_effects: v
            .get("sideEffects")
            .and_then(Value::as_str)
            .unwrap_or("Unknown")
            .to_string(),
        target,
        ca_bundle,
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
    }
}

/// Reads stored ValidatingWebhookConfigurations into their webhooks, in
/// the order they are called: by configuration name, then as listed.
pub fn parse_configurations<'a>(configs: impl IntoIterator<Item = &'a Value>) -> Vec<Webhook> {
    let mut configs: Vec<&Value> = configs.into_iter().collect();
    configs.sort_by_key(|c| c.pointer("/metadata/name").and_then(Value::as_str));
    let mut out = Vec::new();
    for c in configs {
        let name = c
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        for w in c
            .get("webhooks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.push(parse_webhook(name, w));
        }
    }
    out
}

/// True when the resources kube-apiserver never sends to webhooks (the
/// webhook configurations themselves).
pub fn exempt(group: &str, plural: &str) -> bool {
    group == "admissionregistration.k8s.io"
        && matches!(
            plural,
            "validatingwebhookconfigurations" | "mutatingwebhookconfigurations"
        )
}

impl Webhook {
    /// True when one of the rules covers the request.
    pub fn matches_rules(&self, a: &Attributes<'_>) -> bool {
        !exempt(a.group, a.resource) && self.rules.iter().any(|r| r.matches(a))
    }

    /// Whether the request goes to this webhook: rules, then
    /// namespaceSelector (`namespace_labels` answers a Namespace's
    /// `metadata.labels`; cluster-scoped objects other than Namespaces are
    /// not subject to it), then objectSelector (the new or the old object).
    pub fn matches(
        &self,
        req: &CapturedRequest,
        namespace_labels: &dyn Fn(&str) -> Option<Value>,
    ) -> bool {
        if !self.matches_rules(&Attributes::of(req)) {
            return false;
        }
        let labels_of = |o: &Option<Value>| {
            o.as_ref()
                .and_then(|o| o.pointer("/metadata/labels"))
                .cloned()
        };
        let either = |sel: &Selector, labels: &dyn Fn(&Option<Value>) -> Option<Value>| {
            sel.is_empty()
                || [&req.object, &req.old_object]
                    .into_iter()
                    .filter(|o| o.is_some())
                    .any(|o| sel.matches(labels(o).as_ref()))
        };
        let is_namespace = req.resource.group.is_empty() && req.resource.plural == "namespaces";
        let ns_ok = if is_namespace {
            either(&self.namespace_selector, &labels_of)
        } else if !req.resource.namespaced || self.namespace_selector.is_empty() {
            true
        } else {
            self.namespace_selector
                .matches(namespace_labels(&req.namespace).as_ref())
        };
        ns_ok && either(&self.object_selector, &labels_of)
    }
}

/// The AdmissionReview v1 request body for one admission request.
pub fn review(uid: &str, req: &CapturedRequest, dry_run: bool) -> Value {
    let r = &req.resource;
    let options_kind = match req.operation {
        Operation::Create => "CreateOptions",
        Operation::Update => "UpdateOptions",
        Operation::Delete => "DeleteOptions",
    };
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let gvr = json!({"group": r.group, "version": r.version, "resource": r.plural});
    let mut request = json!({
        "uid": uid,
        "kind": gvk,
        "resource": gvr,
        "requestKind": gvk,
        "requestResource": gvr,
        "name": req.name,
        "operation": operation_name(req.operation),
        "userInfo": {"username": "system:admin", "groups": ["system:masters", "system:authenticated"]},
        "object": req.object.clone().unwrap_or(Value::Null),
        "oldObject": req.old_object.clone().unwrap_or(Value::Null),
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": options_kind},
    });
    if let Some(s) = &req.subresource {
        request["subResource"] = json!(s);
    }
    if !req.namespace.is_empty() {
        request["namespace"] = json!(req.namespace);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

/// Why a webhook could not be called, or answered nonsense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The configuration makes the webhook uncallable.
    #[error("{0}")]
    Config(String),
    /// The resolver has no address for the Service.
    #[error("service {0} has no endpoint")]
    NoEndpoint(ServiceRef),
    /// Dialing, TLS or HTTP failed.
    #[error("Post \"{url}\": {cause}")]
    Transport {
        /// The URL posted to.
        url: String,
        /// What failed.
        cause: String,
    },
    /// No answer within timeoutSeconds.
    #[error("Post \"{url}\": context deadline exceeded")]
    Timeout {
        /// The URL posted to.
        url: String,
    },
    /// An HTTP status other than 2xx.
    #[error("the server responded with HTTP {code}: {body}")]
    Status {
        /// HTTP status code.
        code: u16,
        /// The start of the body.
        body: String,
    },
    /// An answer that is not an AdmissionReview v1 response for this
    /// request.
    #[error("received invalid webhook response: {0}")]
    BadResponse(String),
}

/// A webhook's decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The request may go on.
    Allowed,
    /// The request is refused with this error.
    Denied(ApiError),
}

/// Reads a webhook's answer (`status`: HTTP status code, `body`: its body)
/// to the review with `uid`.
pub fn interpret(hook: &str, uid: &str, status: u16, body: &[u8]) -> Result<Verdict, CallError> {
    if !(200..300).contains(&status) {
        let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
        return Err(CallError::Status {
            code: status,
            body: text,
        });
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| CallError::BadResponse(format!("the body is not JSON: {e}")))?;
    if v.get("apiVersion").and_then(Value::as_str) != Some("admission.k8s.io/v1")
        || v.get("kind").and_then(Value::as_str) != Some("AdmissionReview")
    {
        return Err(CallError::BadResponse(format!(
            "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {}, Kind={}",
            v.get("apiVersion").and_then(Value::as_str).unwrap_or_default(),
            v.get("kind").and_then(Value::as_str).unwrap_or_default()
        )));
    }
    let r = v
        .get("response")
        .filter(|r| r.is_object())
        .ok_or_else(|| CallError::BadResponse("webhook response was absent".into()))?;
    let got = r.get("uid").and_then(Value::as_str).unwrap_or_default();
    if got != uid {
        return Err(CallError::BadResponse(format!(
            "expected response.uid={uid:?}, got {got:?}"
        )));
    }
    if r.get("allowed").and_then(Value::as_bool) == Some(true) {
        return Ok(Verdict::Allowed);
    }
    let status = r.get("status").unwrap_or(&Value::Null);
    let code = status.get("code").and_then(Value::as_u64).unwrap_or(0);
    let message = status
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let reason = status
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Ok(Verdict::Denied(denied(
        hook,
        u16::try_from(code).unwrap_or(0),
        reason,
        message,
    )))
}

/// The Kubernetes reason for an HTTP code.
pub fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Gone",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    }
}

/// A refusal, worded as kube-apiserver words it: the webhook's code (403
/// when below 400), its reason (or the code's), and `admission webhook
/// "<name>" denied the request: <message>`.
pub fn denied(hook: &str, code: u16, reason: &str, message: &str) -> ApiError {
    let code = if code < 400 { 403 } else { code };
    let by = format!("admission webhook {hook:?} denied the request");
    let message = if !message.is_empty() {
        format!("{by}: {message}")
    } else if !reason.is_empty() {
        format!("{by}: {reason}")
    } else {
        format!("{by} without explanation")
    };
    let reason = if reason.is_empty() {
        reason_for(code)
    } else {
        reason
    };
    ApiError::new(code, reason, message)
}

/// A call failure under failurePolicy Fail: 500 `Internal error occurred:
/// failed calling webhook "<name>": failed to call webhook: <cause>`.
pub fn call_failed(hook: &str, cause: &CallError) -> ApiError {
    ApiError::new(
        500,
        "InternalError",
        format!("Internal error occurred: failed calling webhook {hook:?}: failed to call webhook: {cause}"),
    )
}

/// A dry run sent to a webhook that may have side effects: 400, as
/// kube-apiserver answers.
pub fn dry_run_unsupported(hook: &str) -> ApiError {
    ApiError::bad_request(format!(
        "admission webhook {hook:?} does not support dry run"
    ))
}

/// True when the webhook may be sent dry runs (sideEffects None or
/// NoneOnDryRun).
pub fn supports_dry_run(hook: &Webhook) -> bool {
    matches!(hook.side_effects.as_str(), "None" | "NoneOnDryRun")
}

/// The TLS client configuration whose only roots are `ca_pem`'s
/// certificates.
pub fn client_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, CallError> {
    let mut roots = rustls::RootCertStore::empty();
    if !ca_pem.is_empty() {
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert =
                cert.map_err(|e| CallError::Config(format!("clientConfig.caBundle: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| CallError::Config(format!("clientConfig.caBundle: {e}")))?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| CallError::Config(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Where to dial a webhook.
async fn address(
    target: &Target,
    resolver: Option<&ServiceResolver>,
) -> Result<SocketAddr, CallError> {
    match target {
        Target::Service { service, .. } => resolver
            .and_then(|r| r(service))
            .ok_or_else(|| CallError::NoEndpoint(service.clone())),
        Target::Url { host, port, .. } => {
            if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                return Ok(SocketAddr::new(ip, *port));
            }
            let transport = |cause: String| CallError::Transport {
                url: target.url(),
                cause,
            };
            tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|e| transport(format!("dial tcp: lookup {host}: {e}")))?
                .next()
                .ok_or_else(|| transport(format!("dial tcp: lookup {host}: no such host")))
        }
    }
}

/// POSTs `body` to the webhook over HTTPS; its HTTP status and body.
async fn post(
    hook: &Webhook,
    target: &Target,
    resolver: Option<&ServiceResolver>,
    body: Vec<u8>,
) -> Result<(u16, Bytes), CallError> {
    let addr = address(target, resolver).await?;
    let url = format!("{}?timeout={}s", target.url(), hook.timeout.as_secs());
    let transport = |cause: String| CallError::Transport {
        url: url.clone(),
        cause,
    };
    let config = client_config(&hook.ca_bundle)?;
    let server_name = ServerName::try_from(target.server_name())
        .map_err(|e| CallError::Config(format!("server name {:?}: {e}", target.server_name())))?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| transport(format!("dial tcp {addr}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| transport(format!("tls: {e}")))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| transport(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "webhook connection ended with an error");
        }
    });
    let path = format!("{}?timeout={}s", target.path(), hook.timeout.as_secs());
    let req = http::Request::post(path)
        .header(http::header::HOST, target.authority())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| transport(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| transport(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| transport(format!("reading the answer: {e}")))?
        .to_bytes();
    Ok((status, body))
}

/// Calls one webhook with one review (whose `request.uid` is `uid`) within
/// its timeoutSeconds, and reads its decision.
pub async fn call(
    hook: &Webhook,
    resolver: Option<&ServiceResolver>,
    uid: &str,
    review: &Value,
) -> Result<Verdict, CallError> {
    if let Some(p) = &hook.problem {
        return Err(CallError::Config(p.clone()));
    }
    let target = hook
        .target
        .as_ref()
        .ok_or_else(|| CallError::Config("clientConfig is required".into()))?;
    let body = serde_json::to_vec(review).map_err(|e| CallError::Config(e.to_string()))?;
    let (status, answer) = tokio::time::timeout(hook.timeout, post(hook, target, resolver, body))
        .await
        .map_err(|_| CallError::Timeout {
            url: format!("{}?timeout={}s", target.url(), hook.timeout.as_secs()),
        })??;
    interpret(&hook.name, uid, status, &answer)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::resources::Registry;

    fn res(group: &str, version: &str, plural: &str) -> crate::resources::Resource {
        Registry::builtin()
            .get(group, version, plural)
            .cloned()
            .unwrap()
    }

    fn captured(op: Operation, plural: &str, ns: &str, obj: Value) -> CapturedRequest {
        CapturedRequest {
            operation: op,
            resource: res("", "v1", plural),
            namespace: ns.into(),
            name: "x".into(),
            subresource: None,
            object: (op != Operation::Delete).then(|| obj.clone()),
            old_object: (op != Operation::Create).then_some(obj),
        }
    }

    fn config(webhooks: Value) -> Vec<Webhook> {
        let c = json!({"metadata": {"name": "c"}, "webhooks": webhooks});
        parse_configurations([&c])
    }

    fn hook(extra: Value) -> Webhook {
        let mut w = json!({
            "name": "h.example.com", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "clientConfig": {"service": {"namespace": "default", "name": "hook"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}],
        });
        for (k, v) in extra.as_object().unwrap() {
            w[k] = v.clone();
        }
        config(json!([w])).remove(0)
    }

    fn attrs<'a>(
        op: Operation,
        group: &'a str,
        res: &'a str,
        sub: &'a str,
        ns: bool,
    ) -> Attributes<'a> {
        Attributes {
            operation: op,
            group,
            version: "v1",
            resource: res,
            subresource: sub,
            namespaced: ns,
        }
    }

    #[test]
    fn defaults_are_read() {
        let h = hook(json!({}));
        assert_eq!(h.failure_policy, FailurePolicy::Fail);
        assert_eq!(h.timeout, Duration::from_secs(10));
        assert_eq!(h.problem, None);
        assert_eq!(
            h.target,
            Some(Target::Service {
                service: ServiceRef {
                    namespace: "default".into(),
                    name: "hook".into(),
                    port: 443
                },
                path: "/".into()
            })
        );
        assert_eq!(h.target.unwrap().server_name(), "hook.default.svc");
        let h = hook(json!({"failurePolicy": "Ignore", "timeoutSeconds": 3,
            "clientConfig": {"url": "https://127.0.0.1:8443/v", "caBundle": "aGVsbG8="}}));
        assert_eq!(h.failure_policy, FailurePolicy::Ignore);
        assert_eq!(h.timeout, Duration::from_secs(3));
        assert_eq!(h.ca_bundle, b"hello");
        assert_eq!(h.target.unwrap().url(), "https://127.0.0.1:8443/v");
    }

    #[test]
    fn problems_are_recorded() {
        assert!(hook(json!({"admissionReviewVersions": ["v1beta1"]}))
            .problem
            .unwrap()
            .contains("v1beta1"));
        assert!(hook(json!({"clientConfig": {"url": "http://x/"}}))
            .problem
            .is_some());
        assert!(hook(json!({"clientConfig": {}})).problem.is_some());
        assert!(
            hook(json!({"clientConfig": {"url": "https://x", "caBundle": "!!"}}))
                .problem
                .is_some()
        );
        assert!(hook(
            json!({"objectSelector": {"matchExpressions": [{"key": "a", "operator": "Has"}]}})
        )
        .problem
        .is_some());
    }

    #[test]
    fn urls_are_parsed() {
        assert_eq!(
            parse_url("https://[::1]:9443/a?b=c").unwrap(),
            Target::Url {
                host: "::1".into(),
                port: 9443,
                path: "/a?b=c".into()
            }
        );
        assert_eq!(
            parse_url("https://hook.example").unwrap(),
            Target::Url {
                host: "hook.example".into(),
                port: 443,
                path: "/".into()
            }
        );
        assert!(parse_url("https://h:x/").is_err());
    }

    #[test]
    fn rules_match_operations_groups_resources_and_scope() {
        let rule = |ops: &[&str], res: &[&str], scope: Scope| Rule {
            operations: ops.iter().map(|s| s.to_string()).collect(),
            api_groups: vec!["".into()],
            api_versions: vec!["*".into()],
            resources: res.iter().map(|s| s.to_string()).collect(),
            scope,
        };
        let c = Operation::Create;
        let u = Operation::Update;
        let r = rule(&["CREATE"], &["configmaps"], Scope::Any);
        assert!(r.matches(&attrs(c, "", "configmaps", "", true)));
        assert!(!r.matches(&attrs(u, "", "configmaps", "", true)));
        assert!(!r.matches(&attrs(c, "", "secrets", "", true)));
        assert!(!r.matches(&attrs(c, "apps", "configmaps", "", true)));
        assert!(!r.matches(&attrs(c, "", "configmaps", "status", true)));
        let r = rule(&["*"], &["*"], Scope::Any);
        assert!(r.matches(&attrs(u, "", "pods", "", true)));
        assert!(!r.matches(&attrs(u, "", "pods", "status", true)));
        let r = rule(&["UPDATE"], &["pods/status"], Scope::Any);
        assert!(r.matches(&attrs(u, "", "pods", "status", true)));
        assert!(!r.matches(&attrs(u, "", "pods", "", true)));
        let r = rule(&["UPDATE"], &["*/*"], Scope::Any);
        assert!(r.matches(&attrs(u, "", "pods", "status", true)));
        assert!(r.matches(&attrs(u, "", "pods", "", true)));
        let r = rule(&["UPDATE"], &["*/status"], Scope::Any);
        assert!(r.matches(&attrs(u, "", "nodes", "status", false)));
        assert!(!r.matches(&attrs(u, "", "nodes", "", false)));
        let r = rule(&["CREATE"], &["*"], Scope::Cluster);
        assert!(r.matches(&attrs(c, "", "nodes", "", false)));
        assert!(!r.matches(&attrs(c, "", "pods", "", true)));
        let r = rule(&["CREATE"], &["*"], Scope::Namespaced);
        assert!(!r.matches(&attrs(c, "", "nodes", "", false)));
        assert!(r.matches(&attrs(c, "", "pods", "", true)));
        let r = rule(&["CONNECT"], &["*"], Scope::Any);
        assert!(!r.matches(&attrs(c, "", "pods", "", true)));
    }

    #[test]
    fn webhook_configurations_are_never_sent() {
        let h = hook(
            json!({"rules": [{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}]}),
        );
        assert!(!h.matches_rules(&attrs(
            Operation::Create,
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
            "",
            false
        )));
        assert!(h.matches_rules(&attrs(Operation::Create, "", "configmaps", "", true)));
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let s = Selector::parse(Some(&json!({
            "matchLabels": {"a": "1"},
            "matchExpressions": [
                {"key": "b", "operator": "In", "values": ["x", "y"]},
                {"key": "c", "operator": "NotIn", "values": ["z"]},
                {"key": "d", "operator": "Exists"},
                {"key": "e", "operator": "DoesNotExist"},
            ]
        })))
        .unwrap();
        assert!(s.matches(Some(&json!({"a": "1", "b": "x", "d": ""}))));
        assert!(s.matches(Some(&json!({"a": "1", "b": "y", "c": "q", "d": "v"}))));
        assert!(!s.matches(Some(&json!({"a": "2", "b": "x", "d": ""}))));
        assert!(!s.matches(Some(&json!({"a": "1", "b": "w", "d": ""}))));
        assert!(!s.matches(Some(&json!({"a": "1", "b": "x", "c": "z", "d": ""}))));
        assert!(!s.matches(Some(&json!({"a": "1", "b": "x"}))));
        assert!(!s.matches(Some(&json!({"a": "1", "b": "x", "d": "", "e": ""}))));
        assert!(!s.matches(None));
        assert!(Selector::parse(None).unwrap().matches(None));
        assert!(Selector::parse(Some(&json!({}))).unwrap().is_empty());
    }

    #[test]
    fn namespace_and_object_selectors_apply() {
        let h = hook(json!({
            "namespaceSelector": {"matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]},
            "objectSelector": {"matchLabels": {"check": "yes"}},
            "rules": [{"operations": ["*"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps", "namespaces", "nodes"]}],
        }));
        let ns_labels = |ns: &str| match ns {
            "skipped" => Some(json!({"skip": "1"})),
            _ => None,
        };
        let obj = json!({"metadata": {"labels": {"check": "yes"}}});
        let plain = json!({"metadata": {}});
        assert!(h.matches(
            &captured(Operation::Create, "configmaps", "default", obj.clone()),
            &ns_labels
        ));
        assert!(!h.matches(
            &captured(Operation::Create, "configmaps", "skipped", obj.clone()),
            &ns_labels
        ));
        assert!(!h.matches(
            &captured(Operation::Create, "configmaps", "default", plain.clone()),
            &ns_labels
        ));
        // The old object's labels count too.
        let mut upd = captured(Operation::Update, "configmaps", "default", obj.clone());
        upd.object = Some(plain.clone());
        assert!(h.matches(&upd, &ns_labels));
        assert!(h.matches(
            &captured(Operation::Delete, "configmaps", "default", obj.clone()),
            &ns_labels
        ));
        // Cluster-scoped objects ignore namespaceSelector; a Namespace is
        // judged by its own labels.
        assert!(h.matches(
            &captured(Operation::Create, "nodes", "", obj.clone()),
            &ns_labels
        ));
        let skipped_ns = json!({"metadata": {"labels": {"check": "yes", "skip": "1"}}});
        assert!(!h.matches(
            &captured(Operation::Create, "namespaces", "", skipped_ns),
            &ns_labels
        ));
        assert!(h.matches(
            &captured(Operation::Create, "namespaces", "", obj),
            &ns_labels
        ));
    }

    #[test]
    fn reviews_carry_the_request() {
        let mut req = captured(
            Operation::Update,
            "pods",
            "default",
            json!({"metadata": {"name": "x"}}),
        );
        req.subresource = Some("status".into());
        let r = review("u-1", &req, true);
        assert_eq!(r["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(r["kind"], "AdmissionReview");
        let q = &r["request"];
        assert_eq!(q["uid"], "u-1");
        assert_eq!(
            q["kind"],
            json!({"group": "", "version": "v1", "kind": "Pod"})
        );
        assert_eq!(
            q["resource"],
            json!({"group": "", "version": "v1", "resource": "pods"})
        );
        assert_eq!(q["requestResource"], q["resource"]);
        assert_eq!(q["subResource"], "status");
        assert_eq!(q["operation"], "UPDATE");
        assert_eq!(q["namespace"], "default");
        assert_eq!(q["name"], "x");
        assert_eq!(q["userInfo"]["username"], "system:admin");
        assert_eq!(q["dryRun"], true);
        assert_eq!(q["options"]["kind"], "UpdateOptions");
        assert!(q["oldObject"].is_object() && q["object"].is_object());
        let d = review(
            "u-2",
            &captured(Operation::Delete, "configmaps", "default", json!({})),
            false,
        );
        assert_eq!(d["request"]["object"], Value::Null);
        assert_eq!(d["request"]["options"]["kind"], "DeleteOptions");
    }

    #[test]
    fn answers_are_interpreted() {
        let answer = |resp: Value| {
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp})).unwrap()
        };
        assert_eq!(
            interpret("h", "u", 200, &answer(json!({"uid": "u", "allowed": true}))).unwrap(),
            Verdict::Allowed
        );
        let Verdict::Denied(e) = interpret(
            "h",
            "u",
            200,
            &answer(json!({"uid": "u", "allowed": false, "status": {"code": 400, "message": "overlaps"}})),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"));
        assert_eq!(
            e.message,
            "admission webhook \"h\" denied the request: overlaps"
        );
        let Verdict::Denied(e) = interpret(
            "h",
            "u",
            200,
            &answer(json!({"uid": "u", "allowed": false})),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
        assert_eq!(
            e.message,
            "admission webhook \"h\" denied the request without explanation"
        );
        assert!(matches!(
            interpret("h", "u", 200, &answer(json!({"uid": "v", "allowed": true}))),
            Err(CallError::BadResponse(m)) if m.contains("expected response.uid")
        ));
        assert!(matches!(
            interpret("h", "u", 500, b"oops"),
            Err(CallError::Status { code: 500, .. })
        ));
        assert!(interpret("h", "u", 200, b"{}").is_err());
        let e = call_failed(
            "h",
            &CallError::NoEndpoint(ServiceRef {
                namespace: "ns".into(),
                name: "s".into(),
                port: 443,
            }),
        );
        assert_eq!((e.code, e.reason.as_str()), (500, "InternalError"));
        assert_eq!(
            e.message,
            "Internal error occurred: failed calling webhook \"h\": failed to call webhook: service ns/s:443 has no endpoint"
        );
    }

    #[test]
    fn bad_ca_bundles_are_refused() {
        assert!(
            client_config(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        assert!(client_config(b"").is_ok());
    }
}
