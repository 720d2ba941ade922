//! The OVSDB wire format of RFC 7047, as plain data: no I/O here.
//!
//! - JSON-RPC 1.0 messages ([`Message`]): requests and responses matched by
//!   `id`, and notifications (`id` null), one JSON object each.
//! - Values: [`Atom`]s (integer, real, boolean, string, `["uuid", U]`,
//!   `["named-uuid", NAME]`) and [`Datum`]s (an atom, a `["set", [..]]`, or a
//!   `["map", [[k, v], ..]]`). A set of exactly one element may be sent as
//!   the bare atom, and the server does so: the accessors on [`Datum`]
//!   accept both spellings.
//! - Operations of a `transact` ([`Operation`]): insert (optionally with a
//!   `uuid-name` that later operations of the same transaction refer to as
//!   `["named-uuid", NAME]`), select, update, mutate, delete, wait and
//!   comment; [`Transaction`] collects them and hands out fresh names.
//! - The result of a `transact` ([`parse_transact_result`]): one element per
//!   operation; an element carrying `error` means that operation failed and
//!   the whole transaction was aborted; an extra element past the last
//!   operation carrying `error` means the commit itself failed.
//! - Monitors ([`MonitorRequest`], [`parse_table_updates`]): the `monitor`
//!   reply and every `update` notification carry table-updates, i.e. per
//!   table, per row UUID, the row's `old` and/or `new` contents.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{json, Map, Value};

use super::error::OvsdbError;

/// A row's UUID as OVSDB spells it: `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`,
/// lowercase hexadecimal.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid(String);

impl Uuid {
    /// Parses the textual form (either case; kept lowercase). `None` when it
    /// is not a UUID.
    pub fn parse(text: &str) -> Option<Uuid> {
        let bytes = text.as_bytes();
        if bytes.len() != 36 {
            return None;
        }
        for (i, b) in bytes.iter().enumerate() {
            let ok = match i {
                8 | 13 | 18 | 23 => *b == b'-',
                _ => b.is_ascii_hexdigit(),
            };
            if !ok {
                return None;
            }
        }
        Some(Uuid(text.to_ascii_lowercase()))
    }

    /// The textual form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `name` may be used as a `uuid-name` (RFC 7047 `<id>`:
/// `[a-zA-Z_][a-zA-Z0-9_]*`).
pub fn is_valid_uuid_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One OVSDB scalar value.
#[derive(Clone, Debug, PartialEq)]
pub enum Atom {
    /// A 64-bit signed integer.
    Integer(i64),
    /// A floating-point number.
    Real(f64),
    /// `true` or `false`.
    Boolean(bool),
    /// A string.
    String(String),
    /// A reference to an existing row: `["uuid", U]`.
    Uuid(Uuid),
    /// A reference to a row inserted earlier in the same transaction:
    /// `["named-uuid", NAME]`.
    NamedUuid(String),
}

impl Atom {
    /// `["named-uuid", name]`.
    pub fn named(name: impl Into<String>) -> Atom {
        Atom::NamedUuid(name.into())
    }

    /// The JSON encoding.
    pub fn to_json(&self) -> Value {
        match self {
            Atom::Integer(i) => json!(i),
            Atom::Real(r) => json!(r),
            Atom::Boolean(b) => json!(b),
            Atom::String(s) => json!(s),
            Atom::Uuid(u) => json!(["uuid", u.as_str()]),
            Atom::NamedUuid(n) => json!(["named-uuid", n]),
        }
    }

    /// Decodes an atom. Integers that fit `i64` become [`Atom::Integer`],
    /// other numbers [`Atom::Real`].
    pub fn from_json(value: &Value) -> Result<Atom, OvsdbError> {
        match value {
            Value::Bool(b) => Ok(Atom::Boolean(*b)),
            Value::String(s) => Ok(Atom::String(s.clone())),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Ok(Atom::Integer(i)),
                None => n
                    .as_f64()
                    .map(Atom::Real)
                    .ok_or_else(|| malformed("number out of range", value)),
            },
            Value::Array(items) => match items.as_slice() {
                [Value::String(tag), Value::String(text)] if tag == "uuid" => Uuid::parse(text)
                    .map(Atom::Uuid)
                    .ok_or_else(|| malformed("bad uuid", value)),
                [Value::String(tag), Value::String(name)] if tag == "named-uuid" => {
                    Ok(Atom::NamedUuid(name.clone()))
                }
                _ => Err(malformed("not an atom", value)),
            },
            _ => Err(malformed("not an atom", value)),
        }
    }

    /// The string, when this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Atom::String(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, when this is one.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Atom::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The UUID, when this is a row reference.
    pub fn as_uuid(&self) -> Option<&Uuid> {
        match self {
            Atom::Uuid(u) => Some(u),
            _ => None,
        }
    }
}

impl From<&str> for Atom {
    fn from(s: &str) -> Atom {
        Atom::String(s.to_owned())
    }
}
impl From<String> for Atom {
    fn from(s: String) -> Atom {
        Atom::String(s)
    }
}
impl From<i64> for Atom {
    fn from(i: i64) -> Atom {
        Atom::Integer(i)
    }
}
impl From<bool> for Atom {
    fn from(b: bool) -> Atom {
        Atom::Boolean(b)
    }
}
impl From<Uuid> for Atom {
    fn from(u: Uuid) -> Atom {
        Atom::Uuid(u)
    }
}
impl From<&Uuid> for Atom {
    fn from(u: &Uuid) -> Atom {
        Atom::Uuid(u.clone())
    }
}

/// The value of a column: a single atom, a set of atoms, or a map.
#[derive(Clone, Debug, PartialEq)]
pub enum Datum {
    /// A bare atom (a scalar column, or a one-element set).
    Atom(Atom),
    /// `["set", [a, b, ..]]`.
    Set(Vec<Atom>),
    /// `["map", [[k, v], ..]]`.
    Map(Vec<(Atom, Atom)>),
}

impl Datum {
    /// The empty set (how an optional column says "no value").
    pub fn empty_set() -> Datum {
        Datum::Set(Vec::new())
    }

    /// A set of the given atoms.
    pub fn set<A: Into<Atom>>(atoms: impl IntoIterator<Item = A>) -> Datum {
        Datum::Set(atoms.into_iter().map(Into::into).collect())
    }

    /// A string-to-string map, e.g. `external_ids`.
    pub fn string_map<'a>(entries: impl IntoIterator<Item = (&'a String, &'a String)>) -> Datum {
        Datum::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Atom::String(k.clone()), Atom::String(v.clone())))
                .collect(),
        )
    }

    /// The JSON encoding.
    pub fn to_json(&self) -> Value {
        match self {
            Datum::Atom(a) => a.to_json(),
            Datum::Set(atoms) => {
                json!(["set", atoms.iter().map(Atom::to_json).collect::<Vec<_>>()])
            }
            Datum::Map(pairs) => json!([
                "map",
                pairs
                    .iter()
                    .map(|(k, v)| json!([k.to_json(), v.to_json()]))
                    .collect::<Vec<_>>()
            ]),
        }
    }

    /// Decodes a datum (no schema needed: sets and maps are tagged).
    pub fn from_json(value: &Value) -> Result<Datum, OvsdbError> {
        if let Value::Array(items) = value {
            match items.as_slice() {
                [Value::String(tag), Value::Array(elems)] if tag == "set" => {
                    return elems
                        .iter()
                        .map(Atom::from_json)
                        .collect::<Result<Vec<_>, _>>()
                        .map(Datum::Set);
                }
                [Value::String(tag), Value::Array(pairs)] if tag == "map" => {
                    return pairs
                        .iter()
                        .map(|pair| match pair.as_array().map(Vec::as_slice) {
                            Some([k, v]) => Ok((Atom::from_json(k)?, Atom::from_json(v)?)),
                            _ => Err(malformed("map entry is not a pair", pair)),
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(Datum::Map);
                }
                _ => {}
            }
        }
        Atom::from_json(value).map(Datum::Atom)
    }

    /// The atoms of a set (a bare atom counts as a one-element set; a map
    /// has none).
    pub fn atoms(&self) -> &[Atom] {
        match self {
            Datum::Atom(a) => std::slice::from_ref(a),
            Datum::Set(atoms) => atoms,
            Datum::Map(_) => &[],
        }
    }

    /// The string of a scalar string column.
    pub fn as_str(&self) -> Option<&str> {
        match self.atoms() {
            [a] => a.as_str(),
            _ => None,
        }
    }

    /// The boolean of a scalar boolean column.
    pub fn as_bool(&self) -> Option<bool> {
        match self.atoms() {
            [Atom::Boolean(b)] => Some(*b),
            _ => None,
        }
    }

    /// The integer of an integer column holding zero or one value
    /// (e.g. `Port.tag`, `Interface.ofport`): `None` when empty.
    pub fn as_optional_integer(&self) -> Option<i64> {
        match self.atoms() {
            [a] => a.as_integer(),
            _ => None,
        }
    }

    /// The row references of a set of UUIDs (e.g. `Bridge.ports`).
    pub fn as_uuid_set(&self) -> Vec<Uuid> {
        self.atoms()
            .iter()
            .filter_map(Atom::as_uuid)
            .cloned()
            .collect()
    }

    /// The string-to-string entries of a map (e.g. `external_ids`); other
    /// entries are skipped.
    pub fn as_string_map(&self) -> BTreeMap<String, String> {
        match self {
            Datum::Map(pairs) => pairs
                .iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect(),
            _ => BTreeMap::new(),
        }
    }
}

impl From<Atom> for Datum {
    fn from(atom: Atom) -> Datum {
        Datum::Atom(atom)
    }
}

macro_rules! datum_from_atom {
    ($($t:ty),*) => {$(
        impl From<$t> for Datum {
            fn from(value: $t) -> Datum {
                Datum::Atom(value.into())
            }
        }
    )*};
}
datum_from_atom!(&str, String, i64, bool, Uuid, &Uuid);

/// A row: column name to value. Selects return `_uuid` (and `_version`)
/// among the columns.
pub type Row = BTreeMap<String, Datum>;

/// The JSON object of a row.
pub fn row_to_json(row: &Row) -> Value {
    Value::Object(
        row.iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect::<Map<_, _>>(),
    )
}

/// Decodes a row object.
pub fn row_from_json(value: &Value) -> Result<Row, OvsdbError> {
    let obj = value
        .as_object()
        .ok_or_else(|| malformed("row is not an object", value))?;
    obj.iter()
        .map(|(k, v)| Ok((k.clone(), Datum::from_json(v)?)))
        .collect()
}

/// The UUID of a selected row (its `_uuid` column).
pub fn row_uuid(row: &Row) -> Option<Uuid> {
    match row.get("_uuid")?.atoms() {
        [Atom::Uuid(u)] => Some(u.clone()),
        _ => None,
    }
}

/// The function of a [`Condition`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Function {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `>=`
    Ge,
    /// `>`
    Gt,
    /// `includes` (the column's set or map contains the value's elements)
    Includes,
    /// `excludes`
    Excludes,
}

impl Function {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Function::Lt => "<",
            Function::Le => "<=",
            Function::Eq => "==",
            Function::Ne => "!=",
            Function::Ge => ">=",
            Function::Gt => ">",
            Function::Includes => "includes",
            Function::Excludes => "excludes",
        }
    }
}

/// A `where` clause element: `[column, function, value]`. An operation's
/// conditions all have to hold; no conditions match every row.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    /// The column (`_uuid` for a given row).
    pub column: String,
    /// How to compare.
    pub function: Function,
    /// What to compare with.
    pub value: Datum,
}

impl Condition {
    /// `column == value`.
    pub fn eq(column: &str, value: impl Into<Datum>) -> Condition {
        Condition {
            column: column.to_owned(),
            function: Function::Eq,
            value: value.into(),
        }
    }

    /// `column includes value`.
    pub fn includes(column: &str, value: Datum) -> Condition {
        Condition {
            column: column.to_owned(),
            function: Function::Includes,
            value,
        }
    }

    /// The row whose `_uuid` is `uuid`.
    pub fn uuid(uuid: &Uuid) -> Condition {
        Condition::eq("_uuid", uuid)
    }

    /// The JSON encoding.
    pub fn to_json(&self) -> Value {
        json!([self.column, self.function.as_str(), self.value.to_json()])
    }
}

/// The mutator of a [`Mutation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutator {
    /// `+=`
    Add,
    /// `-=`
    Sub,
    /// `*=`
    Mul,
    /// `/=`
    Div,
    /// `%=`
    Mod,
    /// `insert`: add elements to a set, or pairs to a map (keys already
    /// present keep their value).
    Insert,
    /// `delete`: remove elements from a set; from a map, remove the given
    /// keys (a set value) or the given pairs (a map value).
    Delete,
}

impl Mutator {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mutator::Add => "+=",
            Mutator::Sub => "-=",
            Mutator::Mul => "*=",
            Mutator::Div => "/=",
            Mutator::Mod => "%=",
            Mutator::Insert => "insert",
            Mutator::Delete => "delete",
        }
    }
}

/// One change of a `mutate`: `[column, mutator, value]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mutation {
    /// The column.
    pub column: String,
    /// What to do.
    pub mutator: Mutator,
    /// With what.
    pub value: Datum,
}

impl Mutation {
    /// Insert `value`'s elements (or pairs) into the column.
    pub fn insert(column: &str, value: Datum) -> Mutation {
        Mutation {
            column: column.to_owned(),
            mutator: Mutator::Insert,
            value,
        }
    }

    /// Delete `value`'s elements (or keys, or pairs) from the column.
    pub fn delete(column: &str, value: Datum) -> Mutation {
        Mutation {
            column: column.to_owned(),
            mutator: Mutator::Delete,
            value,
        }
    }

    /// The JSON encoding.
    pub fn to_json(&self) -> Value {
        json!([self.column, self.mutator.as_str(), self.value.to_json()])
    }
}

/// When a `wait` operation is satisfied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitUntil {
    /// The selected rows equal the given rows.
    Equal,
    /// The selected rows differ from the given rows.
    NotEqual,
}

/// One operation of a `transact`.
#[derive(Clone, Debug, PartialEq)]
pub enum Operation {
    /// Insert a row; `uuid_name` lets later operations refer to it.
    /// Result: `{"uuid": ["uuid", U]}`.
    Insert {
        /// Table.
        table: String,
        /// Column values (others take their defaults).
        row: Row,
        /// Name for `["named-uuid", NAME]` references in this transaction.
        uuid_name: Option<String>,
    },
    /// Read rows. Result: `{"rows": [..]}`.
    Select {
        /// Table.
        table: String,
        /// Which rows.
        conditions: Vec<Condition>,
        /// Which columns (`None`: all).
        columns: Option<Vec<String>>,
    },
    /// Set columns of the matching rows. Result: `{"count": N}`.
    Update {
        /// Table.
        table: String,
        /// Which rows.
        conditions: Vec<Condition>,
        /// New values.
        row: Row,
    },
    /// Change columns of the matching rows in place. Result: `{"count": N}`.
    Mutate {
        /// Table.
        table: String,
        /// Which rows.
        conditions: Vec<Condition>,
        /// The changes, applied in order.
        mutations: Vec<Mutation>,
    },
    /// Delete the matching rows. Result: `{"count": N}`.
    Delete {
        /// Table.
        table: String,
        /// Which rows.
        conditions: Vec<Condition>,
    },
    /// Abort the transaction unless the selected rows compare as asked
    /// (after `timeout_ms`, or at once with `Some(0)`): the error is
    /// `timed out`. Result: `{}`.
    Wait {
        /// Table.
        table: String,
        /// Which rows.
        conditions: Vec<Condition>,
        /// Which columns to compare.
        columns: Vec<String>,
        /// Equal or not equal.
        until: WaitUntil,
        /// The rows to compare with (only `columns`).
        rows: Vec<Row>,
        /// How long the server may wait; `None`: forever.
        timeout_ms: Option<u64>,
    },
    /// A note written to the database log with the transaction.
    Comment(String),
}

impl Operation {
    /// Insert `row` into `table`.
    pub fn insert(table: &str, row: Row) -> Operation {
        Operation::Insert {
            table: table.to_owned(),
            row,
            uuid_name: None,
        }
    }

    /// Insert `row` into `table`, named `uuid_name` for later operations.
    pub fn insert_named(table: &str, uuid_name: &str, row: Row) -> Operation {
        Operation::Insert {
            table: table.to_owned(),
            row,
            uuid_name: Some(uuid_name.to_owned()),
        }
    }

    /// Select `columns` (all when empty) of the rows matching `conditions`.
    pub fn select(table: &str, conditions: Vec<Condition>, columns: &[&str]) -> Operation {
        Operation::Select {
            table: table.to_owned(),
            conditions,
            columns: if columns.is_empty() {
                None
            } else {
                Some(columns.iter().map(|c| (*c).to_owned()).collect())
            },
        }
    }

    /// Set `row`'s columns in the rows matching `conditions`.
    pub fn update(table: &str, conditions: Vec<Condition>, row: Row) -> Operation {
        Operation::Update {
            table: table.to_owned(),
            conditions,
            row,
        }
    }

    /// Apply `mutations` to the rows matching `conditions`.
    pub fn mutate(table: &str, conditions: Vec<Condition>, mutations: Vec<Mutation>) -> Operation {
        Operation::Mutate {
            table: table.to_owned(),
            conditions,
            mutations,
        }
    }

    /// Delete the rows matching `conditions`.
    pub fn delete(table: &str, conditions: Vec<Condition>) -> Operation {
        Operation::Delete {
            table: table.to_owned(),
            conditions,
        }
    }

    /// Abort at once unless the rows matching `conditions`, restricted to
    /// `columns`, are exactly `rows` (an assertion on current state).
    pub fn assert_rows(
        table: &str,
        conditions: Vec<Condition>,
        columns: &[&str],
        rows: Vec<Row>,
    ) -> Operation {
        Operation::Wait {
            table: table.to_owned(),
            conditions,
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            until: WaitUntil::Equal,
            rows,
            timeout_ms: Some(0),
        }
    }

    /// A comment for the database log.
    pub fn comment(text: impl Into<String>) -> Operation {
        Operation::Comment(text.into())
    }

    /// The `op` member: `insert`, `select`, ...
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Insert { .. } => "insert",
            Operation::Select { .. } => "select",
            Operation::Update { .. } => "update",
            Operation::Mutate { .. } => "mutate",
            Operation::Delete { .. } => "delete",
            Operation::Wait { .. } => "wait",
            Operation::Comment(_) => "comment",
        }
    }

    /// The table operated on (none for a comment).
    pub fn table(&self) -> Option<&str> {
        match self {
            Operation::Insert { table, .. }
            | Operation::Select { table, .. }
            | Operation::Update { table, .. }
            | Operation::Mutate { table, .. }
            | Operation::Delete { table, .. }
            | Operation::Wait { table, .. } => Some(table),
            Operation::Comment(_) => None,
        }
    }

    /// A short human description for errors, e.g. `insert into Port
    /// (as port0)` or `mutate Bridge`.
    pub fn describe(&self) -> String {
        match self {
            Operation::Insert {
                table,
                uuid_name: Some(n),
                ..
            } => format!("insert into {table} (as {n})"),
            Operation::Insert { table, .. } => format!("insert into {table}"),
            Operation::Select { table, .. } => format!("select from {table}"),
            Operation::Delete { table, .. } => format!("delete from {table}"),
            Operation::Update { table, .. }
            | Operation::Mutate { table, .. }
            | Operation::Wait { table, .. } => {
                format!("{} {table}", self.name())
            }
            Operation::Comment(_) => "comment".to_owned(),
        }
    }

    /// The JSON encoding.
    pub fn to_json(&self) -> Value {
        let conds = |c: &[Condition]| Value::Array(c.iter().map(Condition::to_json).collect());
        match self {
            Operation::Insert {
                table,
                row,
                uuid_name,
            } => {
                let mut v = json!({"op": "insert", "table": table, "row": row_to_json(row)});
                if let (Some(name), Some(obj)) = (uuid_name, v.as_object_mut()) {
                    obj.insert("uuid-name".to_owned(), json!(name));
                }
                v
            }
            Operation::Select {
                table,
                conditions,
                columns,
            } => {
                let mut v = json!({"op": "select", "table": table, "where": conds(conditions)});
                if let (Some(cols), Some(obj)) = (columns, v.as_object_mut()) {
                    obj.insert("columns".to_owned(), json!(cols));
                }
                v
            }
            Operation::Update {
                table,
                conditions,
                row,
            } => {
                json!({"op": "update", "table": table, "where": conds(conditions), "row": row_to_json(row)})
            }
            Operation::Mutate {
                table,
                conditions,
                mutations,
            } => json!({
                "op": "mutate",
                "table": table,
                "where": conds(conditions),
                "mutations": mutations.iter().map(Mutation::to_json).collect::<Vec<_>>(),
            }),
            Operation::Delete { table, conditions } => {
                json!({"op": "delete", "table": table, "where": conds(conditions)})
            }
            Operation::Wait {
                table,
                conditions,
                columns,
                until,
                rows,
                timeout_ms,
            } => {
                let mut v = json!({
                    "op": "wait",
                    "table": table,
                    "where": conds(conditions),
                    "columns": columns,
                    "until": match until { WaitUntil::Equal => "==", WaitUntil::NotEqual => "!=" },
                    "rows": rows.iter().map(row_to_json).collect::<Vec<_>>(),
                });
                if let (Some(t), Some(obj)) = (timeout_ms, v.as_object_mut()) {
                    obj.insert("timeout".to_owned(), json!(t));
                }
                v
            }
            Operation::Comment(text) => json!({"op": "comment", "comment": text}),
        }
    }
}

/// A transaction being built: its operations in order, and fresh
/// `uuid-name`s for rows inserted by it.
#[derive(Clone, Debug, Default)]
pub struct Transaction {
    ops: Vec<Operation>,
    names: usize,
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Transaction {
        Transaction::default()
    }

    /// Appends `op`; returns its index (where its result will be).
    pub fn push(&mut self, op: Operation) -> usize {
        self.ops.push(op);
        self.ops.len() - 1
    }

    /// A `uuid-name` not yet handed out by this transaction, made of
    /// `prefix` (which must itself be a valid name) and a counter.
    pub fn fresh_name(&mut self, prefix: &str) -> String {
        self.names += 1;
        format!("{prefix}{}", self.names)
    }

    /// Inserts `row` into `table` under a fresh name; returns the
    /// `["named-uuid", ..]` atom that refers to it.
    pub fn insert(&mut self, table: &str, row: Row) -> Atom {
        let prefix = format!("{}_", table.to_ascii_lowercase());
        let prefix = if is_valid_uuid_name(&prefix) {
            prefix
        } else {
            "row_".to_owned()
        };
        let name = self.fresh_name(&prefix);
        self.push(Operation::insert_named(table, &name, row));
        Atom::NamedUuid(name)
    }

    /// The operations so far.
    pub fn ops(&self) -> &[Operation] {
        &self.ops
    }

    /// Whether no operation was added.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Whether every operation only reads or notes (select, wait, comment):
    /// sending it would change nothing.
    pub fn is_read_only(&self) -> bool {
        self.ops.iter().all(|op| {
            matches!(
                op,
                Operation::Select { .. } | Operation::Wait { .. } | Operation::Comment(_)
            )
        })
    }

    /// The operations.
    pub fn into_ops(self) -> Vec<Operation> {
        self.ops
    }
}

/// The `params` of a `transact`: `[db, op, op, ..]`.
pub fn transact_params(db: &str, ops: &[Operation]) -> Value {
    let mut params = Vec::with_capacity(ops.len() + 1);
    params.push(json!(db));
    params.extend(ops.iter().map(Operation::to_json));
    Value::Array(params)
}

/// Checks the `result` of a `transact` of `ops`: `Ok` with one result per
/// operation when it committed; otherwise the first failing operation
/// (with its index and description), or the commit failure.
pub fn parse_transact_result(ops: &[Operation], result: &Value) -> Result<Vec<Value>, OvsdbError> {
    let items = result
        .as_array()
        .ok_or_else(|| malformed("transact result is not an array", result))?;
    for (index, item) in items.iter().enumerate() {
        let Some(error) = item.get("error") else {
            continue;
        };
        if error.is_null() {
            continue;
        }
        let error = match error {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let details = item
            .get("details")
            .and_then(Value::as_str)
            .map(str::to_owned);
        return Err(match ops.get(index) {
            Some(op) => OvsdbError::OperationFailed {
                index,
                op: op.describe(),
                error,
                details,
            },
            None => OvsdbError::CommitFailed { error, details },
        });
    }
    if items.len() < ops.len() {
        return Err(OvsdbError::Malformed(format!(
            "transact of {} operations returned {} results and no error",
            ops.len(),
            items.len()
        )));
    }
    Ok(items[..ops.len()].to_vec())
}

/// The new row's UUID in an `insert` result.
pub fn result_uuid(result: &Value) -> Option<Uuid> {
    match Atom::from_json(result.get("uuid")?).ok()? {
        Atom::Uuid(u) => Some(u),
        _ => None,
    }
}

/// The number of rows touched, in an `update`, `mutate` or `delete` result.
pub fn result_count(result: &Value) -> Option<u64> {
    result.get("count")?.as_u64()
}

/// The rows of a `select` result.
pub fn result_rows(result: &Value) -> Result<Vec<Row>, OvsdbError> {
    result
        .get("rows")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("select result has no rows", result))?
        .iter()
        .map(row_from_json)
        .collect()
}

/// A JSON-RPC 1.0 message as RFC 7047 uses it.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// A call that expects a response with the same `id`.
    Request {
        /// Any JSON value chosen by the sender.
        id: Value,
        /// The method, e.g. `transact`, `echo`.
        method: String,
        /// The parameters (an array).
        params: Value,
    },
    /// The answer to a request: `Ok(result)` or `Err(error)`.
    Response {
        /// The request's `id`.
        id: Value,
        /// The `result`, or the non-null `error`.
        result: Result<Value, Value>,
    },
    /// A message that expects no answer (`id` null), e.g. `update`.
    Notification {
        /// The method.
        method: String,
        /// The parameters (an array).
        params: Value,
    },
}

impl Message {
    /// Classifies a received JSON object.
    pub fn from_json(value: Value) -> Result<Message, OvsdbError> {
        let Value::Object(mut obj) = value else {
            return Err(OvsdbError::Malformed(format!(
                "message is not an object: {}",
                truncate(&value)
            )));
        };
        let id = obj.remove("id").unwrap_or(Value::Null);
        if let Some(method) = obj.remove("method") {
            let Value::String(method) = method else {
                return Err(OvsdbError::Malformed("method is not a string".to_owned()));
            };
            let params = obj.remove("params").unwrap_or_else(|| json!([]));
            return Ok(if id.is_null() {
                Message::Notification { method, params }
            } else {
                Message::Request { id, method, params }
            });
        }
        if id.is_null() {
            return Err(OvsdbError::Malformed(
                "message has neither a method nor an id".to_owned(),
            ));
        }
        let error = obj.remove("error").unwrap_or(Value::Null);
        let result = obj.remove("result");
        Ok(Message::Response {
            id,
            result: match (error, result) {
                (Value::Null, Some(result)) => Ok(result),
                (Value::Null, None) => {
                    return Err(OvsdbError::Malformed(
                        "response has neither result nor error".to_owned(),
                    ))
                }
                (error, _) => Err(error),
            },
        })
    }

    /// The JSON encoding.
    pub fn to_json(&self) -> Value {
        match self {
            Message::Request { id, method, params } => {
                json!({"method": method, "params": params, "id": id})
            }
            Message::Response { id, result } => match result {
                Ok(r) => json!({"result": r, "error": null, "id": id}),
                Err(e) => json!({"result": null, "error": e, "id": id}),
            },
            Message::Notification { method, params } => {
                json!({"method": method, "params": params, "id": null})
            }
        }
    }
}

/// Which changes a monitor reports for a table (all by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonitorSelect {
    /// The rows present when the monitor starts (in the `monitor` reply).
    pub initial: bool,
    /// Rows inserted later.
    pub insert: bool,
    /// Rows deleted later.
    pub delete: bool,
    /// Rows modified later.
    pub modify: bool,
}

impl Default for MonitorSelect {
    fn default() -> MonitorSelect {
        MonitorSelect {
            initial: true,
            insert: true,
            delete: true,
            modify: true,
        }
    }
}

/// What to monitor in one table.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MonitorRequest {
    /// The columns to report (`None`: all).
    pub columns: Option<Vec<String>>,
    /// Which changes to report.
    pub select: MonitorSelect,
}

impl MonitorRequest {
    /// Every change of `columns`.
    pub fn columns(columns: &[&str]) -> MonitorRequest {
        MonitorRequest {
            columns: Some(columns.iter().map(|c| (*c).to_owned()).collect()),
            select: MonitorSelect::default(),
        }
    }

    /// The JSON encoding.
    pub fn to_json(&self) -> Value {
        let s = &self.select;
        let mut v = json!({"select": {
            "initial": s.initial, "insert": s.insert, "delete": s.delete, "modify": s.modify,
        }});
        if let (Some(cols), Some(obj)) = (&self.columns, v.as_object_mut()) {
            obj.insert("columns".to_owned(), json!(cols));
        }
        v
    }
}

/// The `params` of a `monitor`: `[db, id, {table: request, ..}]`.
pub fn monitor_params(db: &str, id: &str, requests: &BTreeMap<String, MonitorRequest>) -> Value {
    let reqs: Map<String, Value> = requests
        .iter()
        .map(|(t, r)| (t.clone(), r.to_json()))
        .collect();
    json!([db, id, reqs])
}

/// How one row changed: `old` only for a deletion, `new` only for an
/// insertion (or the initial contents), both for a modification (`old`
/// then holds only the columns that changed).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct RowUpdate {
    /// The previous contents (changed columns only, for a modification).
    pub old: Option<Row>,
    /// The new contents (monitored columns).
    pub new: Option<Row>,
}

/// Per table, per row UUID, how the row changed.
pub type TableUpdates = BTreeMap<String, BTreeMap<Uuid, RowUpdate>>;

/// Decodes table-updates (a `monitor` result, or an `update`
/// notification's second parameter).
pub fn parse_table_updates(value: &Value) -> Result<TableUpdates, OvsdbError> {
    let tables = value
        .as_object()
        .ok_or_else(|| malformed("table-updates is not an object", value))?;
    let mut out = TableUpdates::new();
    for (table, rows) in tables {
        let rows = rows
            .as_object()
            .ok_or_else(|| malformed("table-update is not an object", rows))?;
        let mut parsed = BTreeMap::new();
        for (uuid, update) in rows {
            let uuid = Uuid::parse(uuid)
                .ok_or_else(|| OvsdbError::Malformed(format!("row key {uuid:?} is not a uuid")))?;
            let field = |name: &str| -> Result<Option<Row>, OvsdbError> {
                match update.get(name) {
                    None | Some(Value::Null) => Ok(None),
                    Some(row) => row_from_json(row).map(Some),
                }
            };
            parsed.insert(
                uuid,
                RowUpdate {
                    old: field("old")?,
                    new: field("new")?,
                },
            );
        }
        out.insert(table.clone(), parsed);
    }
    Ok(out)
}

fn truncate(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

fn malformed(what: &str, value: &Value) -> OvsdbError {
    OvsdbError::Malformed(format!("{what}: {}", truncate(value)))
}
