//! Label and field selectors: parsing of the query-string syntax the API
//! server accepts in `labelSelector=` and `fieldSelector=`, conversion of a
//! `metav1.LabelSelector` object (`matchLabels` / `matchExpressions`), and
//! matching against objects held as `serde_json::Value`.
//!
//! Label selector syntax (terms separated by commas, whitespace tolerated):
//! `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (exists),
//! `!k` (does not exist), `k>3`, `k<3` (integer comparisons).
//!
//! Field selector syntax: `path=value`, `path==value`, `path!=value`,
//! separated by commas; `\,`, `\=` and `\\` escape those characters in a
//! value. A path is a dotted path into the object (`metadata.name`,
//! `spec.nodeName`, `status.phase`, ...); a missing field compares as the
//! empty string.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

/// A selector that could not be parsed or converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse selector {selector:?} at position {position}: {message}")]
pub struct SelectorError {
    /// The selector text (or the JSON text of a selector object).
    pub selector: String,
    /// Byte offset into `selector` where the problem was found.
    pub position: usize,
    /// What is wrong, naming the offending term or token.
    pub message: String,
}

impl SelectorError {
    fn new(selector: &str, position: usize, message: impl Into<String>) -> Self {
        SelectorError {
            selector: selector.to_string(),
            position,
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------

/// The operator of one label requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LabelOperator {
    /// `k=v` or `k==v`: the label is present with that value.
    Equals,
    /// `k!=v`: the label is absent or has another value.
    NotEquals,
    /// `k in (a,b)`: the label is present with one of the values.
    In,
    /// `k notin (a,b)`: the label is absent or has none of the values.
    NotIn,
    /// `k`: the label is present.
    Exists,
    /// `!k`: the label is absent.
    DoesNotExist,
    /// `k>n`: the label is present and is an integer greater than `n`.
    GreaterThan,
    /// `k<n`: the label is present and is an integer less than `n`.
    LessThan,
}

/// One term of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRequirement {
    /// The label key, e.g. `app` or `app.kubernetes.io/name`.
    pub key: String,
    /// The operator.
    pub operator: LabelOperator,
    /// The values: exactly one for `Equals`/`NotEquals`/`GreaterThan`/
    /// `LessThan`, one or more for `In`/`NotIn`, none for `Exists`/
    /// `DoesNotExist`.
    pub values: BTreeSet<String>,
}

impl LabelRequirement {
    fn single_value(&self) -> &str {
        self.values.iter().next().map(String::as_str).unwrap_or("")
    }

    /// True when `labels` satisfies this requirement.
    pub fn matches(&self, labels: &Map<String, Value>) -> bool {
        let value = labels.get(&self.key).map(label_value_text);
        match self.operator {
            LabelOperator::Equals | LabelOperator::In => {
                value.is_some_and(|v| self.values.contains(v.as_str()))
            }
            LabelOperator::NotEquals | LabelOperator::NotIn => {
                value.is_none_or(|v| !self.values.contains(v.as_str()))
            }
            LabelOperator::Exists => value.is_some(),
            LabelOperator::DoesNotExist => value.is_none(),
            LabelOperator::GreaterThan | LabelOperator::LessThan => {
                let (Some(v), Ok(bound)) = (value, self.single_value().parse::<i64>()) else {
                    return false;
                };
                let Ok(v) = v.parse::<i64>() else {
                    return false;
                };
                if self.operator == LabelOperator::GreaterThan {
                    v > bound
                } else {
                    v < bound
                }
            }
        }
    }
}

fn label_value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl fmt::Display for LabelRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let joined = || {
            self.values
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(",")
        };
        match self.operator {
            LabelOperator::Equals => write!(f, "{}={}", self.key, self.single_value()),
            LabelOperator::NotEquals => write!(f, "{}!={}", self.key, self.single_value()),
            LabelOperator::In => write!(f, "{} in ({})", self.key, joined()),
            LabelOperator::NotIn => write!(f, "{} notin ({})", self.key, joined()),
            LabelOperator::Exists => write!(f, "{}", self.key),
            LabelOperator::DoesNotExist => write!(f, "!{}", self.key),
            LabelOperator::GreaterThan => write!(f, "{}>{}", self.key, self.single_value()),
            LabelOperator::LessThan => write!(f, "{}<{}", self.key, self.single_value()),
        }
    }
}

/// A parsed label selector: a conjunction of requirements. The empty
/// selector matches every object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// The requirements, in the order they were written.
    pub requirements: Vec<LabelRequirement>,
}

impl LabelSelector {
    /// Parses the query-string form (`labelSelector=`). The empty string
    /// (or only whitespace) selects everything.
    pub fn parse(s: &str) -> Result<LabelSelector, SelectorError> {
        LabelParser::new(s)?.parse()
    }

    /// Converts a `metav1.LabelSelector` JSON object (`matchLabels` and
    /// `matchExpressions` with `In`, `NotIn`, `Exists`, `DoesNotExist`).
    /// An empty object selects everything. A non-object (including
    /// `null`, which Kubernetes reads as "select nothing") is an error, so
    /// callers decide what a missing selector means.
    pub fn from_label_selector_object(obj: &Value) -> Result<LabelSelector, SelectorError> {
        let text = obj.to_string();
        let err = |m: String| SelectorError::new(&text, 0, m);
        let Some(map) = obj.as_object() else {
            return Err(err("a label selector must be a JSON object".into()));
        };
        let mut requirements = Vec::new();
        match map.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(labels)) => {
                for (k, v) in labels {
                    let Some(v) = v.as_str() else {
                        return Err(err(format!("matchLabels[{k:?}] must be a string")));
                    };
                    validate_label_key(k).map_err(|m| err(format!("matchLabels: {m}")))?;
                    validate_label_value(v).map_err(|m| err(format!("matchLabels: {m}")))?;
                    requirements.push(LabelRequirement {
                        key: k.clone(),
                        operator: LabelOperator::Equals,
                        values: BTreeSet::from([v.to_string()]),
                    });
                }
            }
            Some(_) => return Err(err("matchLabels must be an object".into())),
        }
        match map.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(exprs)) => {
                for (i, e) in exprs.iter().enumerate() {
                    requirements.push(
                        expression_requirement(e)
                            .map_err(|m| err(format!("matchExpressions[{i}]: {m}")))?,
                    );
                }
            }
            Some(_) => return Err(err("matchExpressions must be an array".into())),
        }
        Ok(LabelSelector { requirements })
    }

    /// True when the selector has no requirements (selects everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Matches a label map given as the JSON value of `metadata.labels`
    /// (`None` or a non-object means "no labels").
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        match labels.and_then(Value::as_object) {
            Some(map) => self.matches_map(map),
            None => self.matches_map(&Map::new()),
        }
    }

    /// Matches a label map.
    pub fn matches_map(&self, labels: &Map<String, Value>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Matches an object by its `metadata.labels`.
    pub fn matches_object(&self, object: &Value) -> bool {
        self.matches(object.pointer("/metadata/labels"))
    }
}

fn expression_requirement(e: &Value) -> Result<LabelRequirement, String> {
    let key = e
        .get("key")
        .and_then(Value::as_str)
        .ok_or_else(|| "key must be a string".to_string())?;
    validate_label_key(key)?;
    let op = e
        .get("operator")
        .and_then(Value::as_str)
        .ok_or_else(|| "operator must be a string".to_string())?;
    let mut values = BTreeSet::new();
    match e.get("values") {
        None | Some(Value::Null) => {}
        Some(Value::Array(vs)) => {
            for v in vs {
                let v = v
                    .as_str()
                    .ok_or_else(|| "values must be strings".to_string())?;
                validate_label_value(v)?;
                values.insert(v.to_string());
            }
        }
        Some(_) => return Err("values must be an array".into()),
    }
    let operator = match op {
        "In" => LabelOperator::In,
        "NotIn" => LabelOperator::NotIn,
        "Exists" => LabelOperator::Exists,
        "DoesNotExist" => LabelOperator::DoesNotExist,
        other => {
            return Err(format!(
                "operator {other:?} is not one of In, NotIn, Exists, DoesNotExist"
            ))
        }
    };
    match operator {
        LabelOperator::In | LabelOperator::NotIn if values.is_empty() => {
            return Err(format!("operator {op} needs at least one value"))
        }
        LabelOperator::Exists | LabelOperator::DoesNotExist if !values.is_empty() => {
            return Err(format!("operator {op} takes no values"))
        }
        _ => {}
    }
    Ok(LabelRequirement {
        key: key.to_string(),
        operator,
        values,
    })
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl FromStr for LabelSelector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LabelSelector::parse(s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    In,
    NotIn,
    Bang,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("{s:?}"),
            Tok::In => "'in'".into(),
            Tok::NotIn => "'notin'".into(),
            Tok::Bang => "'!'".into(),
            Tok::Eq => "'='".into(),
            Tok::DoubleEq => "'=='".into(),
            Tok::NotEq => "'!='".into(),
            Tok::Gt => "'>'".into(),
            Tok::Lt => "'<'".into(),
            Tok::Open => "'('".into(),
            Tok::Close => "')'".into(),
            Tok::Comma => "','".into(),
            Tok::End => "end of string".into(),
        }
    }

    /// The text of a token usable as a value (identifiers and keywords).
    fn value_text(&self) -> Option<String> {
        match self {
            Tok::Ident(s) => Some(s.clone()),
            Tok::In => Some("in".into()),
            Tok::NotIn => Some("notin".into()),
            _ => None,
        }
    }
}

fn is_special(c: char) -> bool {
    c.is_whitespace() || matches!(c, '!' | '=' | '(' | ')' | ',' | '<' | '>')
}

fn lex(s: &str) -> Result<Vec<(Tok, usize)>, SelectorError> {
    let mut out = Vec::new();
    let bytes: Vec<(usize, char)> = s.char_indices().collect();
    let mut i = 0;
    while i < bytes.len() {
        let (pos, c) = bytes[i];
        let next = bytes.get(i + 1).map(|&(_, c)| c);
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let (tok, width) = match (c, next) {
            ('!', Some('=')) => (Tok::NotEq, 2),
            ('!', _) => (Tok::Bang, 1),
            ('=', Some('=')) => (Tok::DoubleEq, 2),
            ('=', _) => (Tok::Eq, 1),
            ('>', _) => (Tok::Gt, 1),
            ('<', _) => (Tok::Lt, 1),
            ('(', _) => (Tok::Open, 1),
            (')', _) => (Tok::Close, 1),
            (',', _) => (Tok::Comma, 1),
            _ => {
                let mut j = i;
                while j < bytes.len() && !is_special(bytes[j].1) {
                    j += 1;
                }
                let end = bytes.get(j).map_or(s.len(), |&(p, _)| p);
                let word = &s[pos..end];
                let tok = match word {
                    "in" => Tok::In,
                    "notin" => Tok::NotIn,
                    _ => Tok::Ident(word.to_string()),
                };
                out.push((tok, pos));
                i = j;
                continue;
            }
        };
        out.push((tok, pos));
        i += width;
    }
    out.push((Tok::End, s.len()));
    Ok(out)
}

struct LabelParser<'a> {
    text: &'a str,
    toks: Vec<(Tok, usize)>,
    at: usize,
}

impl<'a> LabelParser<'a> {
    fn new(text: &'a str) -> Result<Self, SelectorError> {
        Ok(LabelParser {
            text,
            toks: lex(text)?,
            at: 0,
        })
    }

    fn peek(&self) -> (&Tok, usize) {
        match self.toks.get(self.at) {
            Some((t, p)) => (t, *p),
            None => (&Tok::End, self.text.len()),
        }
    }

    fn next(&mut self) -> (Tok, usize) {
        let (t, p) = self.peek();
        let t = t.clone();
        if self.at < self.toks.len() {
            self.at += 1;
        }
        (t, p)
    }

    fn err(&self, pos: usize, msg: impl Into<String>) -> SelectorError {
        SelectorError::new(self.text, pos, msg)
    }

    fn parse(mut self) -> Result<LabelSelector, SelectorError> {
        let mut requirements = Vec::new();
        if matches!(self.peek().0, Tok::End) {
            return Ok(LabelSelector { requirements });
        }
        loop {
            requirements.push(self.requirement()?);
            match self.next() {
                (Tok::Comma, _) => continue,
                (Tok::End, _) => break,
                (t, p) => {
                    return Err(self.err(
                        p,
                        format!("found {}, expected ',' or end of string", t.describe()),
                    ))
                }
            }
        }
        Ok(LabelSelector { requirements })
    }

    fn key(&mut self) -> Result<(String, usize), SelectorError> {
        // `in` and `notin` are keywords only after a key, so they can be
        // keys themselves.
        let (t, p) = self.next();
        match t.value_text() {
            Some(k) => {
                validate_label_key(&k).map_err(|m| self.err(p, m))?;
                Ok((k, p))
            }
            None => Err(self.err(p, format!("found {}, expected a label key", t.describe()))),
        }
    }

    fn requirement(&mut self) -> Result<LabelRequirement, SelectorError> {
        if matches!(self.peek().0, Tok::Bang) {
            self.next();
            let (key, _) = self.key()?;
            return Ok(LabelRequirement {
                key,
                operator: LabelOperator::DoesNotExist,
                values: BTreeSet::new(),
            });
        }
        let (key, key_pos) = self.key()?;
        let (op_tok, op_pos) = self.peek();
        let op_tok = op_tok.clone();
        let operator = match op_tok {
            Tok::Comma | Tok::End => {
                return Ok(LabelRequirement {
                    key,
                    operator: LabelOperator::Exists,
                    values: BTreeSet::new(),
                })
            }
            Tok::Eq | Tok::DoubleEq => LabelOperator::Equals,
            Tok::NotEq => LabelOperator::NotEquals,
            Tok::Gt => LabelOperator::GreaterThan,
            Tok::Lt => LabelOperator::LessThan,
            Tok::In => LabelOperator::In,
            Tok::NotIn => LabelOperator::NotIn,
            other => {
                return Err(self.err(
                    op_pos,
                    format!(
                        "found {} after key {key:?} (at {key_pos}), expected one of \
                         '=', '==', '!=', 'in', 'notin', '>', '<', ',' or end of string",
                        other.describe()
                    ),
                ))
            }
        };
        self.next();
        let values = match operator {
            LabelOperator::In | LabelOperator::NotIn => self.value_set()?,
            LabelOperator::GreaterThan | LabelOperator::LessThan => {
                let (t, p) = self.next();
                let v = t.value_text().ok_or_else(|| {
                    self.err(p, format!("found {}, expected an integer", t.describe()))
                })?;
                if v.parse::<i64>().is_err() {
                    return Err(self.err(p, format!("{v:?} is not an integer")));
                }
                BTreeSet::from([v])
            }
            _ => {
                let (t, p) = self.peek();
                let v = match t.value_text() {
                    Some(v) => {
                        self.next();
                        validate_label_value(&v).map_err(|m| self.err(p, m))?;
                        v
                    }
                    None if matches!(t, Tok::Comma | Tok::End) => String::new(),
                    None => {
                        return Err(
                            self.err(p, format!("found {}, expected a label value", t.describe()))
                        )
                    }
                };
                BTreeSet::from([v])
            }
        };
        Ok(LabelRequirement {
            key,
            operator,
            values,
        })
    }

    fn value_set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        match self.next() {
            (Tok::Open, _) => {}
            (t, p) => return Err(self.err(p, format!("found {}, expected '('", t.describe()))),
        }
        let mut values = BTreeSet::new();
        let mut expecting = true;
        loop {
            let (t, p) = self.next();
            match t {
                Tok::Comma => {
                    if expecting {
                        values.insert(String::new());
                    }
                    expecting = true;
                }
                Tok::Close => {
                    if expecting {
                        values.insert(String::new());
                    }
                    return Ok(values);
                }
                t => match t.value_text() {
                    Some(v) if expecting => {
                        validate_label_value(&v).map_err(|m| self.err(p, m))?;
                        values.insert(v);
                        expecting = false;
                    }
                    _ => {
                        return Err(self.err(
                            p,
                            format!("found {}, expected a value, ',' or ')'", t.describe()),
                        ))
                    }
                },
            }
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Checks a label name part / value: at most 63 characters, alphanumeric
/// at both ends, `-`, `_`, `.` allowed inside.
fn validate_name_part(s: &str, what: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err(format!("{what} {s:?} is longer than 63 characters"));
    }
    let ok_ends = s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok_ends || !s.chars().all(is_name_char) {
        return Err(format!(
            "{what} {s:?} must consist of alphanumeric characters, '-', '_' or '.', \
             and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if name.is_empty() {
        return Err(format!("label key {key:?} has an empty name part"));
    }
    validate_name_part(name, "label key name")?;
    if let Some(prefix) = prefix {
        let ok = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return Err(format!(
                "label key prefix {prefix:?} must be a lowercase DNS subdomain"
            ));
        }
    }
    Ok(())
}

fn validate_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    validate_name_part(v, "label value")
}

// ---------------------------------------------------------------------------
// Field selectors
// ---------------------------------------------------------------------------

/// The operator of one field requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldOperator {
    /// `path=value` or `path==value`.
    Equals,
    /// `path!=value`.
    NotEquals,
}

/// One term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Dotted path into the object, e.g. `spec.nodeName`.
    pub path: String,
    /// The operator.
    pub operator: FieldOperator,
    /// The value compared with (unescaped).
    pub value: String,
}

impl FieldRequirement {
    /// True when `object` satisfies this requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let actual = field_value(object, &self.path);
        match self.operator {
            FieldOperator::Equals => actual == self.value,
            FieldOperator::NotEquals => actual != self.value,
        }
    }
}

impl fmt::Display for FieldRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.operator {
            FieldOperator::Equals => "=",
            FieldOperator::NotEquals => "!=",
        };
        write!(f, "{}{}{}", self.path, op, escape_field_value(&self.value))
    }
}

/// The text of the field at a dotted `path` of `object`, as field selectors
/// compare it: strings as themselves, numbers and booleans in their JSON
/// form, a missing field or `null` as the empty string. Numeric segments
/// index into arrays.
pub fn field_value(object: &Value, path: &str) -> String {
    let mut cur = object;
    for seg in path.split('.') {
        let next = match cur {
            Value::Object(m) => m.get(seg),
            Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Escapes `\`, `,` and `=` in a field selector value.
pub fn escape_field_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A parsed field selector: a conjunction of requirements. The empty
/// selector matches every object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// The requirements, in the order they were written.
    pub requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parses the query-string form (`fieldSelector=`). The empty string
    /// (or only whitespace) selects everything; empty terms are skipped.
    pub fn parse(s: &str) -> Result<FieldSelector, SelectorError> {
        let mut requirements = Vec::new();
        for (start, term) in split_unescaped_commas(s) {
            if term.trim().is_empty() {
                continue;
            }
            requirements.push(parse_field_term(s, start, term)?);
        }
        Ok(FieldSelector { requirements })
    }

    /// True when the selector has no requirements (selects everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// True when `object` satisfies every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|r| r.matches(object))
    }

    /// The value `path` must equal, when the selector pins it with an
    /// `=` term (e.g. `metadata.name=x`), so callers can look it up
    /// directly instead of scanning.
    pub fn exact_value(&self, path: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.path == path && r.operator == FieldOperator::Equals)
            .map(|r| r.value.as_str())
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl FromStr for FieldSelector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FieldSelector::parse(s)
    }
}

/// Splits at commas not preceded by an escaping backslash; yields each
/// term with its byte offset.
fn split_unescaped_commas(s: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            ',' => {
                out.push((start, &s[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push((start, &s[start..]));
    out
}

fn parse_field_term(
    text: &str,
    start: usize,
    term: &str,
) -> Result<FieldRequirement, SelectorError> {
    let err = |pos: usize, m: String| SelectorError::new(text, start + pos, m);
    let mut found = None;
    for (i, c) in term.char_indices() {
        let rest = &term[i..];
        if rest.starts_with("!=") {
            found = Some((i, 2, FieldOperator::NotEquals));
        } else if rest.starts_with("==") {
            found = Some((i, 2, FieldOperator::Equals));
        } else if c == '=' {
            found = Some((i, 1, FieldOperator::Equals));
        }
        if found.is_some() {
            break;
        }
    }
    let Some((op_at, op_len, operator)) = found else {
        return Err(err(
            0,
            format!(
                "term {term:?} has no operator; expected path=value, path==value or path!=value"
            ),
        ));
    };
    let raw_path = &term[..op_at];
    let path = raw_path.trim();
    let path_pos = raw_path.len() - raw_path.trim_start().len();
    if path.is_empty() {
        return Err(err(0, format!("term {term:?} has an empty field path")));
    }
    if let Some(bad) = path
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(err(
            path_pos,
            format!("field path {path:?} in term {term:?} contains {bad:?}"),
        ));
    }
    if path.split('.').any(str::is_empty) {
        return Err(err(
            path_pos,
            format!("field path {path:?} in term {term:?} has an empty segment"),
        ));
    }
    let value_at = op_at + op_len;
    let raw_value = &term[value_at..];
    let lead = raw_value.len() - raw_value.trim_start().len();
    let value = unescape_field_value(raw_value.trim())
        .map_err(|(p, m)| err(value_at + lead + p, format!("in term {term:?}: {m}")))?;
    Ok(FieldRequirement {
        path: path.to_string(),
        operator,
        value,
    })
}

fn unescape_field_value(v: &str) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, e @ ('\\' | ',' | '='))) => out.push(e),
                Some((_, e)) => return Err((i, format!("invalid escape sequence '\\{e}'"))),
                None => return Err((i, "value ends with a lone '\\'".to_string())),
            },
            '=' => return Err((i, "unescaped '=' in value (write '\\=')".to_string())),
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn labels(v: Value) -> Value {
        v
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap()
    }

    #[test]
    fn empty_selects_everything() {
        assert!(sel("").matches(None));
        assert!(sel("   ").matches(Some(&json!({"a": "b"}))));
        assert!(sel("").is_empty());
        assert!(FieldSelector::parse("").unwrap().matches(&json!({})));
    }

    #[test]
    fn equality_operators() {
        let l = labels(json!({"app": "web", "tier": "front"}));
        assert!(sel("app=web").matches(Some(&l)));
        assert!(sel("app==web").matches(Some(&l)));
        assert!(!sel("app=db").matches(Some(&l)));
        assert!(sel("app!=db").matches(Some(&l)));
        assert!(!sel("app!=web").matches(Some(&l)));
        // != matches objects without the label
        assert!(sel("zone!=a").matches(Some(&l)));
        assert!(!sel("zone=a").matches(None));
        assert!(sel("app=web,tier=front").matches(Some(&l)));
        assert!(!sel("app=web,tier=back").matches(Some(&l)));
        // empty value
        assert!(sel("zone=").matches(Some(&json!({"zone": ""}))));
        assert!(!sel("zone=").matches(Some(&l)));
    }

    #[test]
    fn set_operators() {
        let l = labels(json!({"env": "prod"}));
        assert!(sel("env in (prod, staging)").matches(Some(&l)));
        assert!(!sel("env in (dev,staging)").matches(Some(&l)));
        assert!(sel("env notin (dev,staging)").matches(Some(&l)));
        assert!(!sel("env notin (prod)").matches(Some(&l)));
        assert!(sel("other notin (prod)").matches(Some(&l)));
        assert!(!sel("other in (prod)").matches(Some(&l)));
        let s = sel("env in (a,b),x");
        assert_eq!(s.requirements.len(), 2);
        assert_eq!(s.requirements[0].values.len(), 2);
    }

    #[test]
    fn existence_operators() {
        let l = labels(json!({"gpu": "true"}));
        assert!(sel("gpu").matches(Some(&l)));
        assert!(!sel("!gpu").matches(Some(&l)));
        assert!(sel("!cpu").matches(Some(&l)));
        assert!(!sel("cpu").matches(Some(&l)));
        assert!(sel(" ! cpu , gpu ").matches(Some(&l)));
    }

    #[test]
    fn integer_comparisons() {
        let l = labels(json!({"n": "5"}));
        assert!(sel("n>3").matches(Some(&l)));
        assert!(!sel("n<3").matches(Some(&l)));
        assert!(!sel("m>3").matches(Some(&l)));
        assert!(LabelSelector::parse("n>x").is_err());
    }

    #[test]
    fn prefixed_keys() {
        let l = labels(json!({"app.kubernetes.io/name": "spur"}));
        assert!(sel("app.kubernetes.io/name=spur").matches(Some(&l)));
        assert!(sel("app.kubernetes.io/name in (spur)").matches(Some(&l)));
    }

    #[test]
    fn errors_name_position() {
        let e = LabelSelector::parse("a=b c").unwrap_err();
        assert_eq!(e.position, 4);
        assert!(e.message.contains("\"c\""), "{e}");
        assert!(e.to_string().contains("a=b c"));
        let e = LabelSelector::parse("a in (x").unwrap_err();
        assert!(e.message.contains("end of string"), "{e}");
        let e = LabelSelector::parse("a=b,").unwrap_err();
        assert_eq!(e.position, 4);
        let e = LabelSelector::parse("a=b@").unwrap_err();
        assert!(e.message.contains("b@"), "{e}");
        assert!(LabelSelector::parse("a in x").is_err());
        assert!(LabelSelector::parse("=b").is_err());
        assert!(LabelSelector::parse("-a=b").is_err());
    }

    #[test]
    fn display_round_trip() {
        for s in [
            "a=b",
            "a!=b",
            "a in (x,y)",
            "a notin (x)",
            "a",
            "!a",
            "a>1",
            "a<-2",
            "a in (),b=",
            "in in (in,notin),notin",
        ] {
            let p = sel(s);
            assert_eq!(sel(&p.to_string()), p, "{s}");
        }
        assert_eq!(sel("a == b").to_string(), "a=b");
    }

    #[test]
    fn selector_object() {
        let s = LabelSelector::from_label_selector_object(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "gpu", "operator": "Exists"},
                {"key": "old", "operator": "DoesNotExist"},
                {"key": "zone", "operator": "NotIn", "values": ["z1"]}
            ]
        }))
        .unwrap();
        assert!(s.matches(Some(&json!({"app": "web", "tier": "a", "gpu": "1"}))));
        assert!(!s.matches(Some(&json!({"app": "web", "tier": "a"}))));
        assert!(!s.matches(Some(
            &json!({"app": "web", "tier": "a", "gpu": "1", "old": "x"})
        )));
        assert!(!s.matches(Some(
            &json!({"app": "web", "tier": "a", "gpu": "1", "zone": "z1"})
        )));
        assert!(LabelSelector::from_label_selector_object(&json!({}))
            .unwrap()
            .is_empty());
        let e = LabelSelector::from_label_selector_object(&json!({
            "matchExpressions": [{"key": "a", "operator": "Bogus"}]
        }))
        .unwrap_err();
        assert!(e.message.contains("matchExpressions[0]"), "{e}");
        assert!(LabelSelector::from_label_selector_object(&json!({
            "matchExpressions": [{"key": "a", "operator": "In", "values": []}]
        }))
        .is_err());
        assert!(LabelSelector::from_label_selector_object(&Value::Null).is_err());
    }

    #[test]
    fn matches_object_reads_metadata_labels() {
        let pod = json!({"metadata": {"name": "p", "labels": {"app": "x"}}});
        assert!(sel("app=x").matches_object(&pod));
        assert!(!sel("app=y").matches_object(&pod));
    }

    fn pod() -> Value {
        json!({
            "metadata": {"name": "p1", "namespace": "default"},
            "spec": {"nodeName": "n1", "priority": 5},
            "status": {"phase": "Running"}
        })
    }

    #[test]
    fn field_operators() {
        let p = pod();
        let f = |s: &str| FieldSelector::parse(s).unwrap().matches(&p);
        assert!(f("metadata.name=p1"));
        assert!(f("metadata.name==p1"));
        assert!(!f("metadata.name!=p1"));
        assert!(f("metadata.namespace=default,status.phase=Running"));
        assert!(!f("metadata.namespace=default,status.phase=Pending"));
        assert!(f("status.phase!=Pending"));
        assert!(f("spec.priority=5"));
        // missing field compares as the empty string
        assert!(!f("spec.nodeName="));
        assert!(FieldSelector::parse("spec.nodeName=")
            .unwrap()
            .matches(&json!({"spec": {}})));
        assert!(f("spec.schedulerName="));
        assert!(f("involvedObject.name!=x"));
        assert!(f(" metadata.name = p1 "));
    }

    #[test]
    fn field_escapes_and_errors() {
        let obj = json!({"metadata": {"name": "a,b=c"}});
        let s = FieldSelector::parse(r"metadata.name=a\,b\=c").unwrap();
        assert!(s.matches(&obj));
        assert_eq!(s.to_string(), r"metadata.name=a\,b\=c");
        assert_eq!(s.exact_value("metadata.name"), Some("a,b=c"));
        let e = FieldSelector::parse("metadata.name").unwrap_err();
        assert!(e.message.contains("metadata.name"), "{e}");
        let e = FieldSelector::parse("a=b,c=d=e").unwrap_err();
        assert_eq!(e.position, 7);
        assert!(FieldSelector::parse("=x").is_err());
        assert!(FieldSelector::parse(r"a=\q").is_err());
        assert!(FieldSelector::parse("a..b=x").is_err());
    }

    proptest! {
        #[test]
        fn label_parse_never_panics(s in ".{0,64}") {
            let _ = LabelSelector::parse(&s);
        }

        #[test]
        fn label_parse_never_panics_on_syntax_soup(s in "[a-c!=(), inotx<>0-9/.-]{0,40}") {
            if let Ok(p) = LabelSelector::parse(&s) {
                prop_assert_eq!(LabelSelector::parse(&p.to_string()).unwrap(), p);
            }
        }

        #[test]
        fn field_parse_never_panics(s in ".{0,64}") {
            if let Ok(p) = FieldSelector::parse(&s) {
                let _ = p.matches(&json!({"a": {"b": 1}}));
            }
        }

        #[test]
        fn label_round_trip(reqs in proptest::collection::vec(arb_requirement(), 0..5)) {
            let s = LabelSelector { requirements: reqs };
            let parsed = LabelSelector::parse(&s.to_string()).unwrap();
            prop_assert_eq!(parsed, s);
        }

        #[test]
        fn field_round_trip(reqs in proptest::collection::vec(arb_field_requirement(), 0..5)) {
            let s = FieldSelector { requirements: reqs };
            let parsed = FieldSelector::parse(&s.to_string()).unwrap();
            prop_assert_eq!(parsed, s);
        }
    }

    fn arb_key() -> impl Strategy<Value = String> {
        "([a-z0-9]([a-z0-9-]{0,5}[a-z0-9])?(\\.[a-z0-9]{1,4}){0,2}/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,8}[A-Za-z0-9])?"
    }

    fn arb_value() -> impl Strategy<Value = String> {
        "([A-Za-z0-9]([A-Za-z0-9_.-]{0,8}[A-Za-z0-9])?)?"
    }

    fn arb_requirement() -> impl Strategy<Value = LabelRequirement> {
        let single = (
            arb_key(),
            arb_value(),
            prop_oneof![Just(LabelOperator::Equals), Just(LabelOperator::NotEquals)],
        )
            .prop_map(|(key, v, operator)| LabelRequirement {
                key,
                operator,
                values: BTreeSet::from([v]),
            });
        let set = (
            arb_key(),
            proptest::collection::btree_set(arb_value(), 1..4),
            prop_oneof![Just(LabelOperator::In), Just(LabelOperator::NotIn)],
        )
            .prop_map(|(key, values, operator)| LabelRequirement {
                key,
                operator,
                values,
            });
        let exist = (
            arb_key(),
            prop_oneof![
                Just(LabelOperator::Exists),
                Just(LabelOperator::DoesNotExist)
            ],
        )
            .prop_map(|(key, operator)| LabelRequirement {
                key,
                operator,
                values: BTreeSet::new(),
            });
        let cmp = (
            arb_key(),
            any::<i32>(),
            prop_oneof![
                Just(LabelOperator::GreaterThan),
                Just(LabelOperator::LessThan)
            ],
        )
            .prop_map(|(key, n, operator)| LabelRequirement {
                key,
                operator,
                values: BTreeSet::from([n.to_string()]),
            });
        prop_oneof![single, set, exist, cmp]
    }

    fn arb_field_requirement() -> impl Strategy<Value = FieldRequirement> {
        (
            "[a-zA-Z][a-zA-Z0-9_]{0,6}(\\.[a-zA-Z][a-zA-Z0-9_]{0,6}){0,3}",
            "([^\\s]([^\\n]{0,10}[^\\s])?)?",
            prop_oneof![Just(FieldOperator::Equals), Just(FieldOperator::NotEquals)],
        )
            .prop_map(|(path, value, operator)| FieldRequirement {
                path,
                operator,
                value,
            })
    }
}
