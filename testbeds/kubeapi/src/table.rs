//! Server-side printing: the `meta.k8s.io/v1` `Table` answer to
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`, which is what
//! `kubectl get` asks for. Holds the column sets of the built-in kinds
//! (Pod, Node, Deployment, ...), the columns of custom resources (their
//! `additionalPrinterColumns`, evaluated as simple JSONPaths), and the
//! helpers kubectl's output depends on: human-readable ages
//! ([`human_duration`]) and RFC 3339 timestamps ([`parse_rfc3339`],
//! [`format_rfc3339`]).

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::resources::PrinterColumn;

/// Where the cell of a column comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CellSource {
    /// A JSONPath (`.status.usage.total`) of a custom resource column; the
    /// cell is converted by the column type (`date` becomes an age), and a
    /// missing value gives a `null` cell.
    JsonPath(String),
    /// `metadata.name`.
    Name,
    /// Age since `metadata.creationTimestamp` (`<unknown>` without one).
    Age,
    /// `metadata.creationTimestamp` as an RFC 3339 string.
    CreatedAt,
    /// Pod: ready containers / containers, e.g. `1/2`.
    PodReady,
    /// Pod: the status kubectl shows (phase, container reasons,
    /// `Terminating`).
    PodStatus,
    /// Pod: restarts, e.g. `3 (5m ago)`.
    PodRestarts,
    /// Pod: `status.podIP` or `<none>`.
    PodIp,
    /// Pod: `spec.nodeName` or `<none>`.
    PodNode,
    /// Pod: `status.nominatedNodeName` or `<none>`.
    PodNominatedNode,
    /// Pod: readiness gates met / declared, or `<none>`.
    PodReadinessGates,
    /// Node: `Ready`, `NotReady` or `Unknown`, plus `SchedulingDisabled`.
    NodeStatus,
    /// Node: roles from `node-role.kubernetes.io/<role>` labels, or
    /// `<none>`.
    NodeRoles,
    /// Workloads: `status.readyReplicas` / `spec.replicas`.
    ReadyOfDesired,
    /// An integer at a JSON pointer (0 when missing).
    Integer(&'static str),
    /// A string at a JSON pointer, with a default when missing or empty.
    Text {
        /// JSON pointer, e.g. `/status/phase`.
        pointer: &'static str,
        /// Shown when the value is missing or empty.
        default: &'static str,
    },
    /// ConfigMap/Secret: number of keys in `data` and `binaryData`.
    DataCount,
    /// Service: external IPs, `<pending>` or `<none>`.
    ServiceExternalIp,
    /// Service: ports as `80/TCP` or `80:30080/TCP`.
    ServicePorts,
    /// Service: the selector as `k=v,...`, or `<none>`.
    ServiceSelector,
    /// DaemonSet: the pod template's node selector as `k=v,...`.
    NodeSelector,
    /// Event: age of the last occurrence.
    EventLastSeen,
    /// Event: `kind/name` of the object the event is about.
    EventObject,
    /// Event: the message (or `note` of `events.k8s.io` events).
    EventMessage,
}

/// One column of a Table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Header, e.g. `Name`.
    pub name: String,
    /// `integer`, `number`, `string`, `boolean` or `date`.
    pub type_: String,
    /// Format hint, e.g. `name` for the name column.
    pub format: String,
    /// Human description.
    pub description: String,
    /// 0 is shown by default, higher only with `-o wide`.
    pub priority: i64,
    /// How the cell is computed.
    pub source: CellSource,
}

impl Column {
    fn new(name: &str, type_: &str, priority: i64, description: &str, source: CellSource) -> Self {
        Column {
            name: name.to_string(),
            type_: type_.to_string(),
            format: String::new(),
            description: description.to_string(),
            priority,
            source,
        }
    }

    /// The JSONPath of a custom-resource column.
    pub fn json_path(&self) -> Option<&str> {
        match &self.source {
            CellSource::JsonPath(p) => Some(p),
            _ => None,
        }
    }

    /// The `columnDefinitions` entry of this column.
    pub fn definition(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.type_,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }

    /// The cell of this column for `object`, with ages relative to
    /// `now_unix_seconds`.
    pub fn cell(&self, object: &Value, now_unix_seconds: i64) -> Value {
        cell(&self.source, &self.type_, object, now_unix_seconds)
    }
}

fn name_column() -> Column {
    let mut c = Column::new(
        "Name",
        "string",
        0,
        "Name of the object, unique within its namespace.",
        CellSource::Name,
    );
    c.format = "name".to_string();
    c
}

fn age_column() -> Column {
    Column::new(
        "Age",
        "string",
        0,
        "Time since the object was created (metadata.creationTimestamp).",
        CellSource::Age,
    )
}

fn text(pointer: &'static str, default: &'static str) -> CellSource {
    CellSource::Text { pointer, default }
}

/// The columns of `kind` in `group`. Non-empty `printer_columns` (a CRD's
/// `additionalPrinterColumns`) give Name plus those columns; custom kinds
/// without them give Name and Age; built-in kinds get the columns kubectl
/// shows for them; other built-ins get Name and Age.
pub fn columns_for(kind: &str, group: &str, printer_columns: &[PrinterColumn]) -> Vec<Column> {
    if !printer_columns.is_empty() {
        let mut cols = vec![name_column()];
        cols.extend(printer_columns.iter().map(|p| {
            Column::new(
                &p.name,
                &p.type_,
                p.priority,
                &p.description,
                CellSource::JsonPath(p.json_path.clone()),
            )
        }));
        return cols;
    }
    use CellSource as S;
    let c = Column::new;
    match (group, kind) {
        ("", "Pod") => vec![
            name_column(),
            c(
                "Ready",
                "string",
                0,
                "Ready containers / containers.",
                S::PodReady,
            ),
            c(
                "Status",
                "string",
                0,
                "Aggregate status of the containers in this pod.",
                S::PodStatus,
            ),
            c(
                "Restarts",
                "string",
                0,
                "Container restarts, and how long ago the last one was.",
                S::PodRestarts,
            ),
            age_column(),
            c(
                "IP",
                "string",
                1,
                "IP address allocated to the pod.",
                S::PodIp,
            ),
            c(
                "Node",
                "string",
                1,
                "Name of the node the pod is bound to.",
                S::PodNode,
            ),
            c(
                "Nominated Node",
                "string",
                1,
                "Node nominated for the pod by preemption.",
                S::PodNominatedNode,
            ),
            c(
                "Readiness Gates",
                "string",
                1,
                "Readiness gates met / declared.",
                S::PodReadinessGates,
            ),
        ],
        ("", "Namespace") => vec![
            name_column(),
            c(
                "Status",
                "string",
                0,
                "The phase of the namespace.",
                text("/status/phase", "Active"),
            ),
            age_column(),
        ],
        ("", "Node") => vec![
            name_column(),
            c(
                "Status",
                "string",
                0,
                "The readiness of the node.",
                S::NodeStatus,
            ),
            c("Roles", "string", 0, "The roles of the node.", S::NodeRoles),
            age_column(),
            c(
                "Version",
                "string",
                0,
                "Kubelet version reported by the node.",
                text("/status/nodeInfo/kubeletVersion", ""),
            ),
        ],
        ("apps", "Deployment") => vec![
            name_column(),
            c(
                "Ready",
                "string",
                0,
                "Ready replicas / desired replicas.",
                S::ReadyOfDesired,
            ),
            c(
                "Up-to-date",
                "integer",
                0,
                "Replicas running the current template.",
                S::Integer("/status/updatedReplicas"),
            ),
            c(
                "Available",
                "integer",
                0,
                "Replicas available to serve.",
                S::Integer("/status/availableReplicas"),
            ),
            age_column(),
        ],
        ("apps", "ReplicaSet") => vec![
            name_column(),
            c(
                "Desired",
                "integer",
                0,
                "Desired replicas.",
                S::Integer("/spec/replicas"),
            ),
            c(
                "Current",
                "integer",
                0,
                "Current replicas.",
                S::Integer("/status/replicas"),
            ),
            c(
                "Ready",
                "integer",
                0,
                "Ready replicas.",
                S::Integer("/status/readyReplicas"),
            ),
            age_column(),
        ],
        ("apps", "StatefulSet") => vec![
            name_column(),
            c(
                "Ready",
                "string",
                0,
                "Ready replicas / desired replicas.",
                S::ReadyOfDesired,
            ),
            age_column(),
        ],
        ("apps", "DaemonSet") => vec![
            name_column(),
            c(
                "Desired",
                "integer",
                0,
                "Nodes that should run the daemon pod.",
                S::Integer("/status/desiredNumberScheduled"),
            ),
            c(
                "Current",
                "integer",
                0,
                "Nodes running the daemon pod.",
                S::Integer("/status/currentNumberScheduled"),
            ),
            c(
                "Ready",
                "integer",
                0,
                "Nodes with a ready daemon pod.",
                S::Integer("/status/numberReady"),
            ),
            c(
                "Up-to-date",
                "integer",
                0,
                "Nodes running the current template.",
                S::Integer("/status/updatedNumberScheduled"),
            ),
            c(
                "Available",
                "integer",
                0,
                "Nodes with an available daemon pod.",
                S::Integer("/status/numberAvailable"),
            ),
            c(
                "Node Selector",
                "string",
                0,
                "The node selector of the pod template.",
                S::NodeSelector,
            ),
            age_column(),
        ],
        ("", "ConfigMap") => vec![
            name_column(),
            c("Data", "integer", 0, "Number of data keys.", S::DataCount),
            age_column(),
        ],
        ("", "Secret") => vec![
            name_column(),
            c(
                "Type",
                "string",
                0,
                "The type of the secret.",
                text("/type", ""),
            ),
            c("Data", "integer", 0, "Number of data keys.", S::DataCount),
            age_column(),
        ],
        ("", "Service") => vec![
            name_column(),
            c(
                "Type",
                "string",
                0,
                "How the service is exposed.",
                text("/spec/type", "ClusterIP"),
            ),
            c(
                "Cluster-IP",
                "string",
                0,
                "The cluster IP of the service.",
                text("/spec/clusterIP", "<none>"),
            ),
            c(
                "External-IP",
                "string",
                0,
                "External IPs of the service.",
                S::ServiceExternalIp,
            ),
            c(
                "Port(s)",
                "string",
                0,
                "The ports the service exposes.",
                S::ServicePorts,
            ),
            age_column(),
            c(
                "Selector",
                "string",
                1,
                "The pod selector of the service.",
                S::ServiceSelector,
            ),
        ],
        ("", "Event") | ("events.k8s.io", "Event") => vec![
            c(
                "Last Seen",
                "string",
                0,
                "Time since the event was last seen.",
                S::EventLastSeen,
            ),
            c(
                "Type",
                "string",
                0,
                "Type of the event (Normal, Warning).",
                text("/type", ""),
            ),
            c(
                "Reason",
                "string",
                0,
                "Short reason of the event.",
                text("/reason", ""),
            ),
            c(
                "Object",
                "string",
                0,
                "The object the event is about.",
                S::EventObject,
            ),
            c(
                "Message",
                "string",
                0,
                "Human-readable description.",
                S::EventMessage,
            ),
        ],
        ("coordination.k8s.io", "Lease") => vec![
            name_column(),
            c(
                "Holder",
                "string",
                0,
                "Identity of the current holder of the lease.",
                text("/spec/holderIdentity", ""),
            ),
            age_column(),
        ],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => vec![
            name_column(),
            c(
                "Created At",
                "date",
                0,
                "Creation timestamp (RFC 3339).",
                S::CreatedAt,
            ),
        ],
        _ if is_custom_group(group) => vec![
            name_column(),
            Column::new(
                "Age",
                "date",
                0,
                "Time since the object was created (metadata.creationTimestamp).",
                S::JsonPath(".metadata.creationTimestamp".to_string()),
            ),
        ],
        _ => vec![name_column(), age_column()],
    }
}

/// Groups served by Kubernetes itself: the core group, single-word groups
/// (`apps`, `batch`, ...) and `*.k8s.io`. Anything else is taken for a CRD.
fn is_custom_group(group: &str) -> bool {
    !(group.is_empty() || !group.contains('.') || group.ends_with(".k8s.io"))
}

/// What each row carries besides its cells (`includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// No object.
    None,
    /// A `PartialObjectMetadata` with the object's metadata (the default).
    #[default]
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// Reads the `includeObject` query parameter (`None`, `Metadata`,
    /// `Object`); missing or unknown values give the default, `Metadata`.
    pub fn from_param(param: Option<&str>) -> IncludeObject {
        match param {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Renders `objects` as a `meta.k8s.io/v1` `Table`. `list_metadata` becomes
/// the Table's `metadata` (`resourceVersion`, `continue`,
/// `remainingItemCount`); ages are relative to `now_unix_seconds`.
pub fn render_table(
    columns: &[Column],
    objects: &[Value],
    now_unix_seconds: i64,
    include_object: IncludeObject,
    list_metadata: Value,
) -> Value {
    let metadata = match list_metadata {
        Value::Object(m) => Value::Object(m),
        _ => Value::Object(Map::new()),
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let cells: Vec<Value> = columns
                .iter()
                .map(|c| c.cell(obj, now_unix_seconds))
                .collect();
            let mut row = Map::new();
            row.insert("cells".to_string(), Value::Array(cells));
            match include_object {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row.insert(
                        "object".to_string(),
                        json!({
                            "kind": "PartialObjectMetadata",
                            "apiVersion": "meta.k8s.io/v1",
                            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
                        }),
                    );
                }
                IncludeObject::Object => {
                    row.insert("object".to_string(), obj.clone());
                }
            }
            Value::Object(row)
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns.iter().map(Column::definition).collect::<Vec<_>>(),
        "rows": rows,
    })
}

// ---------------------------------------------------------------------------
// Cells
// ---------------------------------------------------------------------------

fn str_at<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.pointer(pointer).and_then(Value::as_str)
}

fn nonempty<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    str_at(obj, pointer).filter(|s| !s.is_empty())
}

fn int_at(obj: &Value, pointer: &str) -> Option<i64> {
    let v = obj.pointer(pointer)?;
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

fn array_at<'a>(obj: &'a Value, pointer: &str) -> &'a [Value] {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn age_of(timestamp: Option<&str>, now: i64) -> String {
    match timestamp.and_then(parse_rfc3339) {
        Some(t) => human_duration(now - t),
        None => "<unknown>".to_string(),
    }
}

fn format_labels(map: Option<&Value>) -> String {
    let Some(m) = map.and_then(Value::as_object).filter(|m| !m.is_empty()) else {
        return "<none>".to_string();
    };
    m.iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",")
}

fn cell(source: &CellSource, type_: &str, obj: &Value, now: i64) -> Value {
    use CellSource as S;
    match source {
        S::JsonPath(path) => match eval_json_path(obj, path) {
            Some(v) => typed_cell(type_, v, now),
            None => Value::Null,
        },
        S::Name => json!(str_at(obj, "/metadata/name").unwrap_or_default()),
        S::Age => json!(age_of(str_at(obj, "/metadata/creationTimestamp"), now)),
        S::CreatedAt => {
            let ts = str_at(obj, "/metadata/creationTimestamp").and_then(parse_rfc3339);
            json!(ts.map_or_else(|| "0001-01-01T00:00:00Z".to_string(), format_rfc3339))
        }
        S::PodReady => {
            let total = array_at(obj, "/spec/containers").len();
            let ready = array_at(obj, "/status/containerStatuses")
                .iter()
                .filter(|s| s.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            json!(format!("{ready}/{total}"))
        }
        S::PodStatus => json!(pod_status(obj)),
        S::PodRestarts => json!(pod_restarts(obj, now)),
        S::PodIp => json!(nonempty(obj, "/status/podIP").unwrap_or("<none>")),
        S::PodNode => json!(nonempty(obj, "/spec/nodeName").unwrap_or("<none>")),
        S::PodNominatedNode => {
            json!(nonempty(obj, "/status/nominatedNodeName").unwrap_or("<none>"))
        }
        S::PodReadinessGates => {
            let gates = array_at(obj, "/spec/readinessGates");
            if gates.is_empty() {
                return json!("<none>");
            }
            let conditions = array_at(obj, "/status/conditions");
            let met = gates
                .iter()
                .filter(|g| {
                    let t = g.get("conditionType");
                    conditions.iter().any(|c| {
                        c.get("type") == t
                            && c.get("status").and_then(Value::as_str) == Some("True")
                    })
                })
                .count();
            json!(format!("{met}/{}", gates.len()))
        }
        S::NodeStatus => json!(node_status(obj)),
        S::NodeRoles => {
            let mut roles = BTreeSet::new();
            if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
                for (k, v) in labels {
                    if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                        if !role.is_empty() {
                            roles.insert(role.to_string());
                        }
                    } else if k == "kubernetes.io/role" {
                        if let Some(role) = v.as_str().filter(|r| !r.is_empty()) {
                            roles.insert(role.to_string());
                        }
                    }
                }
            }
            if roles.is_empty() {
                json!("<none>")
            } else {
                json!(roles.into_iter().collect::<Vec<_>>().join(","))
            }
        }
        S::ReadyOfDesired => {
            let ready = int_at(obj, "/status/readyReplicas").unwrap_or(0);
            let desired = int_at(obj, "/spec/replicas").unwrap_or(1);
            json!(format!("{ready}/{desired}"))
        }
        S::Integer(p) => json!(int_at(obj, p).unwrap_or(0)),
        S::Text { pointer, default } => json!(nonempty(obj, pointer).unwrap_or(default)),
        S::DataCount => {
            let count = |p: &str| {
                obj.pointer(p)
                    .and_then(Value::as_object)
                    .map_or(0, Map::len)
            };
            json!(count("/data") + count("/binaryData"))
        }
        S::ServiceExternalIp => json!(service_external_ip(obj)),
        S::ServicePorts => {
            let ports: Vec<String> = array_at(obj, "/spec/ports")
                .iter()
                .map(|p| {
                    let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                    let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(np) if np != 0 => format!("{port}:{np}/{proto}"),
                        _ => format!("{port}/{proto}"),
                    }
                })
                .collect();
            if ports.is_empty() {
                json!("<none>")
            } else {
                json!(ports.join(","))
            }
        }
        S::ServiceSelector => json!(format_labels(obj.pointer("/spec/selector"))),
        S::NodeSelector => json!(format_labels(
            obj.pointer("/spec/template/spec/nodeSelector")
        )),
        S::EventLastSeen => {
            let ts = [
                "/series/lastObservedTime",
                "/lastTimestamp",
                "/deprecatedLastTimestamp",
                "/eventTime",
                "/firstTimestamp",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find_map(|p| nonempty(obj, p));
            json!(age_of(ts, now))
        }
        S::EventObject => {
            let target = obj
                .get("involvedObject")
                .or_else(|| obj.get("regarding"))
                .cloned()
                .unwrap_or(Value::Null);
            let kind = str_at(&target, "/kind").unwrap_or_default().to_lowercase();
            let name = str_at(&target, "/name").unwrap_or_default();
            json!(format!("{kind}/{name}"))
        }
        S::EventMessage => {
            let m = nonempty(obj, "/message")
                .or_else(|| nonempty(obj, "/note"))
                .unwrap_or("");
            json!(m.trim())
        }
    }
}

/// Converts a JSONPath result to a cell of a custom-resource column of
/// `type_`, as the API server does: wrong-typed values give `null`, dates
/// become ages (`<invalid>` when unparseable).
fn typed_cell(type_: &str, v: &Value, now: i64) -> Value {
    match (type_, v) {
        (_, Value::Null) => Value::Null,
        ("integer", Value::Number(n)) => match n.as_i64() {
            Some(i) => json!(i),
            None => n.as_f64().map_or(Value::Null, |f| json!(f as i64)),
        },
        ("number", Value::Number(_)) => v.clone(),
        ("boolean", Value::Bool(_)) => v.clone(),
        ("date", Value::String(s)) => match parse_rfc3339(s) {
            Some(t) => json!(human_duration(now - t)),
            None => json!("<invalid>"),
        },
        ("string", Value::String(s)) => json!(s),
        ("string", other) => json!(other.to_string()),
        _ => Value::Null,
    }
}

fn pod_status(pod: &Value) -> String {
    let mut reason = nonempty(pod, "/status/phase")
        .unwrap_or("Pending")
        .to_string();
    if let Some(r) = nonempty(pod, "/status/reason") {
        reason = r.to_string();
    }
    let init_specs = array_at(pod, "/spec/initContainers");
    let mut initializing = false;
    for (i, cs) in array_at(pod, "/status/initContainerStatuses")
        .iter()
        .enumerate()
    {
        if let Some(t) = cs.pointer("/state/terminated") {
            if int_at(t, "/exitCode").unwrap_or(0) == 0 {
                continue;
            }
            reason = match nonempty(t, "/reason") {
                Some(r) => format!("Init:{r}"),
                None => match int_at(t, "/signal").unwrap_or(0) {
                    0 => format!("Init:ExitCode:{}", int_at(t, "/exitCode").unwrap_or(0)),
                    s => format!("Init:Signal:{s}"),
                },
            };
        } else if let Some(r) =
            nonempty(cs, "/state/waiting/reason").filter(|r| *r != "PodInitializing")
        {
            reason = format!("Init:{r}");
        } else {
            let sidecar = init_specs
                .get(i)
                .and_then(|s| s.get("restartPolicy"))
                .and_then(Value::as_str)
                == Some("Always");
            if sidecar && cs.get("started").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            reason = format!("Init:{i}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }
    if !initializing {
        let mut has_running = false;
        for cs in array_at(pod, "/status/containerStatuses").iter().rev() {
            if let Some(r) = nonempty(cs, "/state/waiting/reason") {
                reason = r.to_string();
            } else if let Some(t) = cs.pointer("/state/terminated") {
                reason = match nonempty(t, "/reason") {
                    Some(r) => r.to_string(),
                    None => match int_at(t, "/signal").unwrap_or(0) {
                        0 => format!("ExitCode:{}", int_at(t, "/exitCode").unwrap_or(0)),
                        s => format!("Signal:{s}"),
                    },
                };
            } else if cs.pointer("/state/running").is_some()
                && cs.get("ready").and_then(Value::as_bool) == Some(true)
            {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            let ready = array_at(pod, "/status/conditions").iter().any(|c| {
                str_at(c, "/type") == Some("Ready") && str_at(c, "/status") == Some("True")
            });
            reason = if ready { "Running" } else { "NotReady" }.to_string();
        }
    }
    if nonempty(pod, "/metadata/deletionTimestamp").is_some() {
        reason = if str_at(pod, "/status/reason") == Some("NodeLost") {
            "Unknown".to_string()
        } else {
            "Terminating".to_string()
        };
    }
    reason
}

fn pod_restarts(pod: &Value, now: i64) -> String {
    let init = array_at(pod, "/status/initContainerStatuses");
    let initializing = init.iter().any(|cs| match cs.pointer("/state/terminated") {
        Some(t) => int_at(t, "/exitCode").unwrap_or(0) != 0,
        None => true,
    }) && !init.is_empty();
    let counted = if initializing {
        init
    } else {
        array_at(pod, "/status/containerStatuses")
    };
    let mut restarts = 0;
    let mut last: Option<i64> = None;
    for cs in counted {
        restarts += int_at(cs, "/restartCount").unwrap_or(0);
        if let Some(t) = str_at(cs, "/lastState/terminated/finishedAt").and_then(parse_rfc3339) {
            last = Some(last.map_or(t, |l| l.max(t)));
        }
    }
    match last {
        Some(t) if restarts > 0 => format!("{restarts} ({} ago)", human_duration(now - t)),
        _ => restarts.to_string(),
    }
}

fn node_status(node: &Value) -> String {
    let mut parts = Vec::new();
    let ready = array_at(node, "/status/conditions")
        .iter()
        .find(|c| str_at(c, "/type") == Some("Ready"));
    match ready {
        Some(c) if str_at(c, "/status") == Some("True") => parts.push("Ready"),
        Some(_) => parts.push("NotReady"),
        None => parts.push("Unknown"),
    }
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        parts.push("SchedulingDisabled");
    }
    parts.join(",")
}

fn service_external_ip(svc: &Value) -> String {
    let mut ips: Vec<String> = array_at(svc, "/spec/externalIPs")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    match str_at(svc, "/spec/type").unwrap_or("ClusterIP") {
        "ExternalName" => {
            return str_at(svc, "/spec/externalName")
                .unwrap_or("<none>")
                .to_string()
        }
        "LoadBalancer" => {
            for ing in array_at(svc, "/status/loadBalancer/ingress") {
                if let Some(a) = nonempty(ing, "/ip").or_else(|| nonempty(ing, "/hostname")) {
                    ips.push(a.to_string());
                }
            }
            if ips.is_empty() {
                return "<pending>".to_string();
            }
        }
        _ => {}
    }
    if ips.is_empty() {
        "<none>".to_string()
    } else {
        ips.join(",")
    }
}

// ---------------------------------------------------------------------------
// JSONPath (the simple subset printer columns use)
// ---------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
}

fn parse_json_path(path: &str) -> Option<Vec<Step>> {
    let mut p = path.trim();
    if let Some(inner) = p.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        p = inner.trim();
    }
    let p = p.strip_prefix('$').unwrap_or(p);
    let chars: Vec<char> = p.chars().collect();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                let mut name = String::new();
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    name.push(chars[i]);
                    i += 1;
                }
                if name.is_empty() {
                    // `.` alone (the whole object) or `..` (unsupported).
                    if i >= chars.len() && steps.is_empty() {
                        break;
                    }
                    return None;
                }
                steps.push(Step::Field(name));
            }
            '[' => {
                let close = chars[i..].iter().position(|&c| c == ']')? + i;
                let inner: String = chars[i + 1..close].iter().collect();
                let inner = inner.trim();
                let quoted = inner
                    .strip_prefix('\'')
                    .and_then(|s| s.strip_suffix('\''))
                    .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')));
                match quoted {
                    Some(key) => steps.push(Step::Field(key.to_string())),
                    None => steps.push(Step::Index(inner.parse().ok()?)),
                }
                i = close + 1;
            }
            _ => return None,
        }
    }
    Some(steps)
}

/// Evaluates a simple JSONPath (`.a.b`, `.a[0].b`, `.a['b.c']`, `.a[-1]`,
/// optionally wrapped in `{}`) against `obj`; `None` when the path is
/// unsupported or leads nowhere.
pub fn eval_json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    for step in parse_json_path(path)? {
        cur = match (step, cur) {
            (Step::Field(f), Value::Object(m)) => m.get(&f)?,
            (Step::Index(i), Value::Array(a)) => {
                let idx = if i < 0 {
                    a.len()
                        .checked_sub(usize::try_from(i.unsigned_abs()).ok()?)?
                } else {
                    usize::try_from(i).ok()?
                };
                a.get(idx)?
            }
            _ => return None,
        };
    }
    Some(cur)
}

// ---------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------

/// A duration in seconds the way kubectl shows ages: `45s`, `3m2s`, `15m`,
/// `5h3m`, `20h`, `3d4h`, `40d`, `2y30d`, `9y`; `0s` for -1..0 (clock skew)
/// and `<invalid>` below that.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    let pair = |big: i64, big_unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit}{small}{small_unit}")
        }
    };
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return pair(minutes, "m", seconds % 60, "s");
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return pair(hours, "h", minutes % 60, "m");
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return pair(hours / 24, "d", hours % 24, "h");
    }
    let days = hours / 24;
    if days < 365 * 2 {
        return format!("{days}d");
    }
    if days < 365 * 8 {
        return pair(days / 365, "y", days % 365, "d");
    }
    format!("{}y", days / 365)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Parses an RFC 3339 timestamp (`2026-11-24T00:48:06Z`,
/// `2026-11-24T01:48:06.5+01:00`) to Unix seconds (fractions dropped).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let year = num(0, 4)?;
    let month = num(5, 2)?;
    let day = num(8, 2)?;
    let hour = num(11, 2)?;
    let minute = num(14, 2)?;
    let second = num(17, 2)?;
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    let month_days = [
        31,
        if is_leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let max_day = *month_days.get(usize::try_from(month - 1).ok()?)?;
    if !(1..=max_day).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match b.get(i) {
        Some(b'Z' | b'z') if b.len() == i + 1 => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == i + 6 && b.get(i + 3) == Some(&b':') => {
            let (h, m) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 3600 + m * 60;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// Formats Unix seconds as an RFC 3339 UTC timestamp
/// (`2026-11-24T00:48:06Z`), as Kubernetes writes them.
pub fn format_rfc3339(unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: &str = "2026-11-24T00:48:06Z";

    fn now() -> i64 {
        parse_rfc3339(NOW).unwrap()
    }

    fn ago(secs: i64) -> String {
        format_rfc3339(now() - secs)
    }

    fn cells(table: &Value, row: usize) -> Vec<Value> {
        table["rows"][row]["cells"].as_array().unwrap().clone()
    }

    #[test]
    fn pod_row() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "default", "creationTimestamp": ago(185),
                         "resourceVersion": "12"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.1.0.5",
                       "containerStatuses": [
                           {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}},
                            "lastState": {"terminated": {"finishedAt": ago(300), "exitCode": 1}}},
                           {"name": "b", "ready": false, "restartCount": 0, "state": {"running": {}}}
                       ]}
        });
        let cols = columns_for("Pod", "", &[]);
        let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Name",
                "Ready",
                "Status",
                "Restarts",
                "Age",
                "IP",
                "Node",
                "Nominated Node",
                "Readiness Gates"
            ]
        );
        let t = render_table(
            &cols,
            std::slice::from_ref(&pod),
            now(),
            IncludeObject::Metadata,
            json!({"resourceVersion": "40"}),
        );
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["metadata"]["resourceVersion"], "40");
        assert_eq!(
            t["columnDefinitions"][0],
            json!({"name": "Name", "type": "string", "format": "name",
                          "description": cols[0].description, "priority": 0})
        );
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        assert_eq!(
            cells(&t, 0),
            vec![
                json!("web-0"),
                json!("1/2"),
                json!("Running"),
                json!("2 (5m ago)"),
                json!("3m5s"),
                json!("10.1.0.5"),
                json!("node-1"),
                json!("<none>"),
                json!("<none>")
            ]
        );
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "web-0");

        let t = render_table(
            &cols,
            std::slice::from_ref(&pod),
            now(),
            IncludeObject::Object,
            json!({}),
        );
        assert_eq!(t["rows"][0]["object"], pod);
        let t = render_table(
            &cols,
            std::slice::from_ref(&pod),
            now(),
            IncludeObject::None,
            Value::Null,
        );
        assert!(t["rows"][0].get("object").is_none());
        assert_eq!(t["metadata"], json!({}));
    }

    #[test]
    fn pod_statuses() {
        let status = |p: Value| pod_status(&p);
        assert_eq!(status(json!({})), "Pending");
        assert_eq!(
            status(json!({"status": {"phase": "Succeeded"}})),
            "Succeeded"
        );
        assert_eq!(
            status(json!({"metadata": {"deletionTimestamp": NOW}, "status": {"phase": "Running"}})),
            "Terminating"
        );
        assert_eq!(
            status(json!({"status": {"phase": "Running", "containerStatuses": [
            {"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}})),
            "CrashLoopBackOff"
        );
        assert_eq!(
            status(json!({"status": {"phase": "Pending", "containerStatuses": [
            {"state": {"waiting": {"reason": "ContainerCreating"}}}]}})),
            "ContainerCreating"
        );
        assert_eq!(
            status(json!({"status": {"phase": "Running", "containerStatuses": [
            {"state": {"terminated": {"exitCode": 2}}}]}})),
            "ExitCode:2"
        );
        assert_eq!(
            status(json!({"spec": {"initContainers": [{"name": "i"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
            {"state": {"running": {}}}]}})),
            "Init:0/1"
        );
        assert_eq!(
            status(json!({"status": {"phase": "Failed", "reason": "Evicted"}})),
            "Evicted"
        );
    }

    #[test]
    fn node_and_workload_rows() {
        let node = json!({
            "metadata": {"name": "n1", "creationTimestamp": ago(3 * 86400 + 4 * 3600),
                         "labels": {"node-role.kubernetes.io/control-plane": "",
                                    "node-role.kubernetes.io/worker": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "nodeInfo": {"kubeletVersion": "v1.32.0"}}
        });
        let t = render_table(
            &columns_for("Node", "", &[]),
            &[node, json!({"metadata": {"name": "n2"}})],
            now(),
            IncludeObject::None,
            json!({}),
        );
        assert_eq!(
            cells(&t, 0),
            vec![
                json!("n1"),
                json!("Ready,SchedulingDisabled"),
                json!("control-plane,worker"),
                json!("3d4h"),
                json!("v1.32.0")
            ]
        );
        assert_eq!(
            cells(&t, 1),
            vec![
                json!("n2"),
                json!("Unknown"),
                json!("<none>"),
                json!("<unknown>"),
                json!("")
            ]
        );

        let deploy = json!({"metadata": {"name": "d", "creationTimestamp": ago(50)},
                            "spec": {"replicas": 3},
                            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let t = render_table(
            &columns_for("Deployment", "apps", &[]),
            &[deploy],
            now(),
            IncludeObject::None,
            json!({}),
        );
        assert_eq!(
            cells(&t, 0),
            vec![json!("d"), json!("2/3"), json!(3), json!(2), json!("50s")]
        );

        let cm = json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": ""}});
        let t = render_table(
            &columns_for("ConfigMap", "", &[]),
            &[cm],
            now(),
            IncludeObject::None,
            json!({}),
        );
        assert_eq!(cells(&t, 0)[1], json!(3));

        let ev = json!({"metadata": {"name": "e"}, "type": "Warning", "reason": "Failed",
                        "lastTimestamp": ago(7200), "message": " boom \n",
                        "involvedObject": {"kind": "Pod", "name": "web-0"}});
        let t = render_table(
            &columns_for("Event", "", &[]),
            &[ev],
            now(),
            IncludeObject::None,
            json!({}),
        );
        assert_eq!(
            cells(&t, 0),
            vec![
                json!("120m"),
                json!("Warning"),
                json!("Failed"),
                json!("pod/web-0"),
                json!("boom")
            ]
        );

        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.10",
                         "ports": [{"port": 80, "nodePort": 30080}, {"port": 53, "protocol": "UDP"}]}});
        let t = render_table(
            &columns_for("Service", "", &[]),
            &[svc],
            now(),
            IncludeObject::None,
            json!({}),
        );
        assert_eq!(
            cells(&t, 0)[..5],
            [
                json!("s"),
                json!("NodePort"),
                json!("10.96.0.10"),
                json!("<none>"),
                json!("80:30080/TCP,53/UDP")
            ]
        );

        let crd = json!({"metadata": {"name": "ippools.spur.dev", "creationTimestamp": NOW}});
        let cols = columns_for("CustomResourceDefinition", "apiextensions.k8s.io", &[]);
        let t = render_table(&cols, &[crd], now(), IncludeObject::None, json!({}));
        assert_eq!(cells(&t, 0), vec![json!("ippools.spur.dev"), json!(NOW)]);
        assert_eq!(t["columnDefinitions"][1]["name"], "Created At");

        let lease = json!({"metadata": {"name": "l", "creationTimestamp": ago(10)},
                           "spec": {"holderIdentity": "spur-0"}});
        let t = render_table(
            &columns_for("Lease", "coordination.k8s.io", &[]),
            &[lease],
            now(),
            IncludeObject::None,
            json!({}),
        );
        assert_eq!(
            cells(&t, 0),
            vec![json!("l"), json!("spur-0"), json!("10s")]
        );
    }

    fn ippool_columns() -> Vec<PrinterColumn> {
        let pc = |name: &str, type_: &str, json_path: &str| PrinterColumn {
            name: name.to_string(),
            type_: type_.to_string(),
            json_path: json_path.to_string(),
            priority: 0,
            description: String::new(),
        };
        vec![
            pc("Total", "integer", ".status.usage.total"),
            pc("Used", "integer", ".status.usage.used"),
            pc("CIDR", "string", ".spec['cidr']"),
            pc("First", "string", ".spec.ranges[0].start"),
            pc("Age", "date", ".metadata.creationTimestamp"),
        ]
    }

    #[test]
    fn ippool_row_and_missing_values() {
        let cols = columns_for("IPPool", "spur.dev", &ippool_columns());
        assert_eq!(cols.len(), 6);
        assert_eq!(cols[1].json_path(), Some(".status.usage.total"));
        let full = json!({"metadata": {"name": "pool-a", "creationTimestamp": ago(90000)},
                          "spec": {"cidr": "10.0.0.0/24", "ranges": [{"start": "10.0.0.10"}]},
                          "status": {"usage": {"total": 254, "used": 3.0}}});
        let empty = json!({"metadata": {"name": "pool-b", "creationTimestamp": "garbage"}});
        let t = render_table(
            &cols,
            &[full, empty],
            now(),
            IncludeObject::Metadata,
            json!({}),
        );
        assert_eq!(
            cells(&t, 0),
            vec![
                json!("pool-a"),
                json!(254),
                json!(3),
                json!("10.0.0.0/24"),
                json!("10.0.0.10"),
                json!("25h")
            ]
        );
        assert_eq!(
            cells(&t, 1),
            vec![
                json!("pool-b"),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                json!("<invalid>")
            ]
        );
        assert_eq!(t["columnDefinitions"][1]["type"], "integer");

        // CRDs without printer columns: Name and Age (a date column).
        let cols = columns_for("IPPool", "spur.dev", &[]);
        let t = render_table(
            &cols,
            &[json!({"metadata": {"name": "p", "creationTimestamp": ago(5)}})],
            now(),
            IncludeObject::None,
            json!({}),
        );
        assert_eq!(cells(&t, 0), vec![json!("p"), json!("5s")]);
        assert_eq!(t["columnDefinitions"][1]["type"], "date");
        // Unknown built-ins: Name and Age.
        let names: Vec<String> = columns_for("ServiceAccount", "", &[])
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["Name", "Age"]);
    }

    #[test]
    fn json_paths() {
        let obj = json!({"a": {"b.c": 1, "list": [{"x": "first"}, {"x": "last"}]},
                         "metadata": {"labels": {"app.kubernetes.io/name": "spur"}}});
        assert_eq!(eval_json_path(&obj, ".a['b.c']"), Some(&json!(1)));
        assert_eq!(eval_json_path(&obj, "{.a[\"b.c\"]}"), Some(&json!(1)));
        assert_eq!(eval_json_path(&obj, ".a.list[0].x"), Some(&json!("first")));
        assert_eq!(eval_json_path(&obj, ".a.list[-1].x"), Some(&json!("last")));
        assert_eq!(
            eval_json_path(&obj, ".metadata.labels.app\\.kubernetes\\.io/name"),
            Some(&json!("spur"))
        );
        assert_eq!(eval_json_path(&obj, ".a.list[5].x"), None);
        assert_eq!(eval_json_path(&obj, ".a..b"), None);
        assert_eq!(eval_json_path(&obj, "a.b"), None);
        assert_eq!(eval_json_path(&obj, ".a.list[*]"), None);
        assert_eq!(eval_json_path(&obj, "."), Some(&obj));
    }

    #[test]
    fn typed_cells() {
        assert_eq!(typed_cell("string", &json!(5), 0), json!("5"));
        assert_eq!(typed_cell("integer", &json!("5"), 0), Value::Null);
        assert_eq!(typed_cell("integer", &json!(5.7), 0), json!(5));
        assert_eq!(typed_cell("number", &json!(1.5), 0), json!(1.5));
        assert_eq!(typed_cell("boolean", &json!(true), 0), json!(true));
        assert_eq!(typed_cell("boolean", &json!("true"), 0), Value::Null);
        assert_eq!(typed_cell("date", &json!(3), 0), Value::Null);
    }

    #[test]
    fn human_durations() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (182, "3m2s"),
            (599, "9m59s"),
            (600, "10m"),
            (179 * 60, "179m"),
            (3 * 3600, "3h"),
            (5 * 3600 + 3 * 60, "5h3m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (8 * 86400, "8d"),
            (729 * 86400, "729d"),
            (730 * 86400, "2y"),
            (760 * 86400, "2y30d"),
            (8 * 365 * 86400, "8y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-24T00:48:06Z"), Some(1_795_481_286));
        assert_eq!(
            parse_rfc3339("2026-11-24T01:48:06.123+01:00"),
            Some(1_795_481_286)
        );
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800));
        assert_eq!(parse_rfc3339("2023-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-11-24"), None);
        assert_eq!(parse_rfc3339("2026-11-24T00:48:06"), None);
        assert_eq!(parse_rfc3339("2026-11-24T00:48:06Zjunk"), None);
        assert_eq!(format_rfc3339(1_795_481_286), "2026-11-24T00:48:06Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    proptest! {
        #[test]
        fn rfc3339_round_trip(t in -62_135_596_800i64..253_402_300_799) {
            prop_assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t));
        }

        #[test]
        fn parsers_never_panic(s in ".{0,40}") {
            let _ = parse_rfc3339(&s);
            let _ = eval_json_path(&json!({"a": [1]}), &s);
        }
    }
}
