//! The Kubernetes REST protocol over the store: paths, verbs, query
//! parameters, discovery, tables and watch streams.
//!
//! [`handle`] is a pure function of the store and one request; the
//! transport (an in-process `tower::Service` or a real socket) lives in
//! [`crate::server`].

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::patch::{apply_patch, PatchError, PatchType};
use crate::resources::Resource;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{DeleteOptions, ListOptions, Store, WatchEvent, WatchSpec};
use crate::table;

/// The Kubernetes version the server claims to be.
pub const SERVER_VERSION: (&str, &str) = ("1", "32");

/// One HTTP request, already read.
#[derive(Debug, Clone, Default)]
pub struct ApiRequest {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Decoded query parameters.
    pub query: Vec<(String, String)>,
    /// `Accept` header.
    pub accept: String,
    /// `Content-Type` header.
    pub content_type: String,
    /// Body.
    pub body: Vec<u8>,
}

impl ApiRequest {
    /// Builds a request from a method, a path with query string, and a body.
    pub fn new(method: &str, path_and_query: &str, body: Vec<u8>) -> ApiRequest {
        let (path, q) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        ApiRequest {
            method: method.to_ascii_uppercase(),
            path: path.to_string(),
            query: parse_query(q),
            body,
            ..ApiRequest::default()
        }
    }

    fn param(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.param(k), Some("true") | Some("1"))
    }

    fn wants_table(&self) -> bool {
        self.accept.contains("as=Table")
    }

    fn dry_run(&self) -> bool {
        self.param("dryRun").is_some_and(|v| v == "All")
    }
}

/// How a watch stream renders its events.
#[derive(Debug, Clone)]
pub struct WatchFormat {
    /// Render each object as a one-row Table (`kubectl get -w`).
    pub table: Option<Vec<table::Column>>,
    /// The watched resource.
    pub resource: Resource,
}

/// The answer to a request.
#[derive(Debug)]
pub enum Reply {
    /// A JSON body with a status code.
    Json(u16, Value),
    /// A plain-text body with a status code.
    Text(u16, String),
    /// A stream of watch events.
    Watch {
        /// The watch's id in the store.
        id: u64,
        /// Events.
        events: mpsc::UnboundedReceiver<WatchEvent>,
        /// Rendering.
        format: Box<WatchFormat>,
    },
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Reply {
        Reply::Json(e.code, e.to_status())
    }
}

/// Decodes `a=b&c=d` with percent-escapes and `+` for spaces.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a request points.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_target(segs: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => (String::new(), v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, more @ ..] if *plural != "status" && *plural != "finalize" => {
            (Some(ns.to_string()), {
                let mut v = vec![*plural];
                v.extend_from_slice(more);
                v
            })
        }
        other => (None, other.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (p.to_string(), None, None),
        [p, n] => (p.to_string(), Some(n.to_string()), None),
        [p, n, s] => (p.to_string(), Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    Some(Target {
        group,
        version,
        namespace,
        plural,
        name,
        subresource: sub,
    })
}

/// The resource plural a request path points at (`pods`, `ipamblocks`),
/// if it points at one.
pub fn resource_of_path(path: &str) -> Option<String> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    parse_target(&segs).map(|t| t.plural)
}

/// Where a write request goes, for the admission webhook pre-check.
#[derive(Debug, Clone)]
pub(crate) struct WriteTarget {
    /// The resource.
    pub resource: Resource,
    /// Namespace on the path.
    pub namespace: Option<String>,
    /// Name on the path (None: the collection).
    pub name: Option<String>,
    /// Subresource on the path.
    pub subresource: Option<String>,
}

/// The target of a POST, PUT, PATCH or DELETE on a served resource.
pub(crate) fn write_target(store: &Store, req: &ApiRequest) -> Option<WriteTarget> {
    if !matches!(req.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE") {
        return None;
    }
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let t = parse_target(&segs)?;
    let resource = store
        .registry()
        .get(&t.group, &t.version, &t.plural)
        .cloned()?;
    Some(WriteTarget {
        resource,
        namespace: t.namespace,
        name: t.name,
        subresource: t.subresource,
    })
}

impl ApiRequest {
    /// True when the request asks for a dry run (query, or a DELETE's
    /// DeleteOptions body).
    pub(crate) fn is_dry_run(&self) -> bool {
        if self.dry_run() {
            return true;
        }
        self.method == "DELETE"
            && !self.body.is_empty()
            && serde_json::from_slice::<Value>(&self.body)
                .ok()
                .and_then(|b| b.get("dryRun").and_then(Value::as_array).cloned())
                .is_some_and(|a| a.iter().any(|v| v == "All"))
    }

    /// True for a server-side apply patch (which may create).
    pub(crate) fn is_apply(&self) -> bool {
        self.method == "PATCH"
            && PatchType::from_content_type(&self.content_type) == Some(PatchType::Apply)
    }

    /// The same request as a dry run.
    pub(crate) fn as_dry_run(&self) -> ApiRequest {
        let mut r = self.clone();
        r.query.retain(|(k, _)| k != "dryRun");
        r.query.push(("dryRun".into(), "All".into()));
        r
    }
}

/// Serves one request.
pub fn handle(store: &mut Store, req: &ApiRequest) -> Reply {
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["healthz"] | ["readyz"] | ["livez"]) => return Reply::Text(200, "ok".into()),
        ("GET", ["healthz" | "readyz" | "livez", _]) => return Reply::Text(200, "ok".into()),
        ("GET", ["version"]) => return Reply::Json(200, version()),
        ("GET", ["openapi", "v3"]) => return Reply::Json(200, json!({"paths": {}})),
        ("GET", ["api"]) => {
            return Reply::Json(
                200,
                json!({"kind": "APIVersions", "versions": ["v1"],
                       "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}),
            )
        }
        ("GET", ["apis"]) => return Reply::Json(200, group_list(store)),
        ("GET", ["apis", g]) => {
            return match group_entry(store, g) {
                Some(v) => Reply::Json(200, v),
                None => not_found_path(),
            }
        }
        ("GET", ["api", v]) => return resource_list(store, "", v),
        ("GET", ["apis", g, v]) => return resource_list(store, g, v),
        _ => {}
    }
    let Some(t) = parse_target(&segs) else {
        return not_found_path();
    };
    let Some(res) = store
        .registry()
        .get(&t.group, &t.version, &t.plural)
        .cloned()
    else {
        return not_found_path();
    };
    if !res.namespaced && t.namespace.is_some() {
        return not_found_path();
    }
    match serve(store, req, &t, &res) {
        Ok(r) => r,
        Err(e) => e.into(),
    }
}

fn serve(
    store: &mut Store,
    req: &ApiRequest,
    t: &Target,
    res: &Resource,
) -> Result<Reply, ApiError> {
    let ns = t.namespace.as_deref();
    let sub = t.subresource.as_deref();
    if let Some(s) = sub {
        if s != "status" || !res.status_subresource {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!(
                    "the server could not find the requested resource ({} {s})",
                    res.qualified()
                ),
            ));
        }
    }
    match (req.method.as_str(), &t.name) {
        ("GET", None) => {
            let labels = LabelSelector::parse(req.param("labelSelector").unwrap_or(""))
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let fields = FieldSelector::parse(req.param("fieldSelector").unwrap_or(""))
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            if req.flag("watch") {
                let spec = WatchSpec {
                    resource: res.clone(),
                    namespace: ns.map(str::to_string),
                    labels,
                    fields,
                    bookmarks: req.flag("allowWatchBookmarks"),
                };
                let (id, events) = store.watch(
                    spec,
                    req.param("resourceVersion"),
                    req.flag("sendInitialEvents"),
                )?;
                let table = req.wants_table().then(|| columns(res));
                return Ok(Reply::Watch {
                    id,
                    events,
                    format: Box::new(WatchFormat {
                        table,
                        resource: res.clone(),
                    }),
                });
            }
            let opts = ListOptions {
                labels,
                fields,
                limit: req.param("limit").and_then(|l| l.parse().ok()).unwrap_or(0),
                continue_token: req
                    .param("continue")
                    .filter(|c| !c.is_empty())
                    .map(str::to_string),
            };
            let page = store.list(res, ns, &opts)?;
            let mut meta = json!({"resourceVersion": page.resource_version.to_string()});
            if let Some(c) = &page.continue_token {
                meta["continue"] = json!(c);
            }
            if let Some(r) = page.remaining {
                meta["remainingItemCount"] = json!(r);
            }
            if req.wants_table() {
                let include = table::IncludeObject::from_param(req.param("includeObject"));
                return Ok(Reply::Json(
                    200,
                    table::render_table(
                        &columns(res),
                        &page.items,
                        store.now_unix(),
                        include,
                        meta,
                    ),
                ));
            }
            Ok(Reply::Json(
                200,
                json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(),
                       "metadata": meta, "items": page.items}),
            ))
        }
        ("GET", Some(name)) => {
            let obj = store.get(res, ns, name)?;
            if req.wants_table() {
                let include = table::IncludeObject::from_param(req.param("includeObject"));
                let meta = json!({"resourceVersion": store.resource_version().to_string()});
                return Ok(Reply::Json(
                    200,
                    table::render_table(&columns(res), &[obj], store.now_unix(), include, meta),
                ));
            }
            Ok(Reply::Json(200, obj))
        }
        ("POST", None) => {
            let body = json_body(req)?;
            let obj = store.create(res, ns, body, req.dry_run())?;
            Ok(Reply::Json(201, obj))
        }
        ("PUT", Some(name)) => {
            let body = json_body(req)?;
            let obj = store.update(res, ns, name, body, sub, req.dry_run())?;
            Ok(Reply::Json(200, obj))
        }
        ("PATCH", Some(name)) => {
            let ptype = PatchType::from_content_type(&req.content_type).ok_or_else(|| {
                ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unknown format ({:?}); accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json", req.content_type),
                )
            })?;
            let body = req.body.clone();
            let kind = res.kind.clone();
            let is_custom = res.custom;
            let create = ptype == PatchType::Apply;
            let obj = store.patch(res, ns, name, sub, req.dry_run(), create, |current| {
                let k = (!is_custom).then_some(kind.as_str());
                apply_patch(k, current, ptype, &body).map_err(|e| match e {
                    PatchError::Decode { .. } => ApiError::bad_request(e.to_string()),
                    _ => ApiError::new(
                        422,
                        "Invalid",
                        format!("the patch could not be applied: {e}"),
                    ),
                })
            })?;
            Ok(Reply::Json(200, obj))
        }
        ("DELETE", Some(name)) => {
            let opts = delete_options(req)?;
            let obj = store.delete(res, ns, name, &opts)?;
            Ok(Reply::Json(200, obj))
        }
        ("DELETE", None) => {
            let labels = LabelSelector::parse(req.param("labelSelector").unwrap_or(""))
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let fields = FieldSelector::parse(req.param("fieldSelector").unwrap_or(""))
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let opts = delete_options(req)?;
            let page = store.list(
                res,
                ns,
                &ListOptions {
                    labels,
                    fields,
                    ..ListOptions::default()
                },
            )?;
            let mut deleted = Vec::new();
            for item in page.items {
                let name = crate::store::name_of(&item);
                let ins = crate::store::namespace_of(&item);
                let ins = (!ins.is_empty()).then_some(ins);
                match store.delete(res, ins.as_deref(), &name, &opts) {
                    Ok(o) => deleted.push(o),
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(Reply::Json(
                200,
                json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(),
                       "metadata": {"resourceVersion": store.resource_version().to_string()}, "items": deleted}),
            ))
        }
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({m} {})",
            req.path
        ))),
    }
}

fn columns(res: &Resource) -> Vec<table::Column> {
    table::columns_for(&res.kind, &res.group, &res.printer_columns)
}

fn json_body(req: &ApiRequest) -> Result<Value, ApiError> {
    if req.content_type.contains("yaml") {
        return serde_yaml::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid YAML: {e}")));
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

fn delete_options(req: &ApiRequest) -> Result<DeleteOptions, ApiError> {
    let mut opts = DeleteOptions {
        dry_run: req.dry_run(),
        orphan: req.param("propagationPolicy") == Some("Orphan")
            || req.param("orphanDependents") == Some("true"),
        grace_period_seconds: req.param("gracePeriodSeconds").and_then(|g| g.parse().ok()),
        ..DeleteOptions::default()
    };
    if !req.body.is_empty() {
        let body: Value = serde_json::from_slice(&req.body).map_err(|e| {
            ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {e}"))
        })?;
        if let Some(p) = body.get("preconditions") {
            opts.uid = p.get("uid").and_then(Value::as_str).map(str::to_string);
            opts.resource_version = p
                .get("resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        if let Some(g) = body.get("gracePeriodSeconds").and_then(Value::as_i64) {
            opts.grace_period_seconds = Some(g);
        }
        if body.get("propagationPolicy").and_then(Value::as_str) == Some("Orphan")
            || body.get("orphanDependents").and_then(Value::as_bool) == Some(true)
        {
            opts.orphan = true;
        }
        if body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"))
        {
            opts.dry_run = true;
        }
    }
    Ok(opts)
}

fn not_found_path() -> Reply {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource".into(),
    )
    .into()
}

fn version() -> Value {
    let (major, minor) = SERVER_VERSION;
    json!({
        "major": major, "minor": minor,
        "gitVersion": format!("v{major}.{minor}.0-spur"),
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "n/a", "compiler": "rustc", "platform": "linux/amd64"
    })
}

fn group_entry(store: &Store, group: &str) -> Option<Value> {
    let versions = store.registry().groups().remove(group)?;
    let list: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    let preferred = list.first().cloned().unwrap_or(Value::Null);
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": list, "preferredVersion": preferred}),
    )
}

fn group_list(store: &Store) -> Value {
    let groups: Vec<Value> = store
        .registry()
        .groups()
        .keys()
        .filter_map(|g| group_entry(store, g))
        .map(|mut g| {
            if let Some(o) = g.as_object_mut() {
                o.remove("kind");
                o.remove("apiVersion");
            }
            g
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(store: &Store, group: &str, version: &str) -> Reply {
    let mut resources = Vec::new();
    for r in store
        .registry()
        .all()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(r.discovery_entry());
        if let Some(s) = r.status_discovery_entry() {
            resources.push(s);
        }
    }
    if resources.is_empty() {
        return not_found_path();
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Reply::Json(
        200,
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// Renders one watch event as a line of the watch stream.
pub fn render_event(ev: &WatchEvent, format: &WatchFormat, now_unix: i64) -> Vec<u8> {
    use crate::store::EventType;
    let head = format!("{{\"type\":\"{}\",\"object\":", ev.type_.as_str());
    let mut line = head.into_bytes();
    match (&format.table, ev.type_) {
        (Some(cols), EventType::Added | EventType::Modified | EventType::Deleted) => {
            let rv = ev
                .object
                .value
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(Value::Null);
            let table = table::render_table(
                cols,
                std::slice::from_ref(&ev.object.value),
                now_unix,
                table::IncludeObject::Metadata,
                json!({ "resourceVersion": rv }),
            );
            line.extend(serde_json::to_vec(&table).unwrap_or_default());
        }
        // The plain form is serialized once and shared by every watcher.
        _ => line.extend_from_slice(ev.object.json()),
    }
    line.extend_from_slice(b"}\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_parsed() {
        let t = |p: &str| parse_target(&p.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>());
        let pods = t("/api/v1/namespaces/default/pods/web-0").unwrap();
        assert_eq!(
            (
                pods.namespace.as_deref(),
                pods.plural.as_str(),
                pods.name.as_deref()
            ),
            (Some("default"), "pods", Some("web-0"))
        );
        let ns_status = t("/api/v1/namespaces/default/status").unwrap();
        assert_eq!(
            (
                ns_status.plural.as_str(),
                ns_status.name.as_deref(),
                ns_status.subresource.as_deref()
            ),
            ("namespaces", Some("default"), Some("status"))
        );
        let ipp = t("/apis/spur.dev/v1beta1/ippools/a/status").unwrap();
        assert_eq!(
            (ipp.group.as_str(), ipp.subresource.as_deref()),
            ("spur.dev", Some("status"))
        );
        assert!(t("/apis/spur.dev").is_none());
    }

    #[test]
    fn queries_are_decoded() {
        assert_eq!(
            parse_query("labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=1&x"),
            vec![
                ("labelSelector".into(), "app=web,tier in (a)".into()),
                ("watch".into(), "1".into()),
                ("x".into(), "".into())
            ]
        );
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
