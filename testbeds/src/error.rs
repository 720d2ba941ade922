//! Errors of loading a testbed directory.
//!
//! Every error names the file, the document inside it when the file holds
//! several (counted from 1, empty documents included), the key as a path
//! (`fabric[0].ports[1]`), the value when there is one and what is wrong.
//! The refused value itself is a [`spur_core::Invalid`], whose `object` is
//! that location, so callers can map [`Kind`] to exit codes the same way as
//! everywhere else in Spur.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use spur_core::error::{edit_distance, plain_serde_message};
use spur_core::{Invalid, Kind, Subject};

/// One problem with a testbed directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A file or directory cannot be read.
    #[error("{}: cannot be read: {source}", .file.display())]
    Io {
        /// The file or directory.
        file: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// A file holds something that is refused. The message is the
    /// [`Invalid`]'s, whose `object` names the file (and document).
    #[error("{error}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The document of the file (from 1), for manifests.
        document: Option<usize>,
        /// What is refused: `object` is the file (and document), `key` the
        /// path of the key inside it.
        error: Invalid,
    },
}

impl LoadError {
    /// The file the problem is in.
    pub fn file(&self) -> &Path {
        match self {
            LoadError::Io { file, .. } | LoadError::Invalid { file, .. } => file,
        }
    }

    /// The key the problem is at (empty when the whole file is concerned).
    pub fn key(&self) -> &str {
        match self {
            LoadError::Io { .. } => "",
            LoadError::Invalid { error, .. } => &error.key,
        }
    }

    /// The class of problem ([`Kind::Decode`] for unreadable files).
    pub fn kind(&self) -> Kind {
        match self {
            LoadError::Io { .. } => Kind::Decode,
            LoadError::Invalid { error, .. } => error.kind,
        }
    }

    pub(crate) fn io(file: &Path, source: io::Error) -> Self {
        LoadError::Io {
            file: file.to_path_buf(),
            source,
        }
    }

    /// Wraps `error` (whose `object` is ignored) as a problem of `file`.
    pub(crate) fn wrap(file: &Path, document: Option<&Document>, mut error: Invalid) -> Self {
        error.object = location(file, document);
        LoadError::Invalid {
            file: file.to_path_buf(),
            document: document.map(|d| d.index),
            error,
        }
    }

    pub(crate) fn invalid(
        file: &Path,
        document: Option<&Document>,
        key: impl Into<String>,
        value: &dyn fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Self::wrap(
            file,
            document,
            Subject::named("").invalid(key, value, reason),
        )
    }

    pub(crate) fn conflict(
        file: &Path,
        document: Option<&Document>,
        key: impl Into<String>,
        value: &dyn fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Self::wrap(
            file,
            document,
            Subject::named("").conflict(key, value, reason),
        )
    }

    /// A key that is absent, or present but empty where a value is needed.
    pub(crate) fn missing_value(file: &Path, key: &str, reason: &str) -> Self {
        Self::wrap(
            file,
            None,
            Subject::named("").error(Kind::Missing, key, None, reason),
        )
    }

    pub(crate) fn in_document(
        file: &Path,
        document: &Document,
        kind: Kind,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::wrap(
            file,
            Some(document),
            Subject::named("").error(kind, key, None, reason),
        )
    }
}

/// A document of a manifest file, as named in errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Document {
    /// Counted from 1, empty documents included.
    pub index: usize,
    /// `KIND [NAMESPACE/]NAME` once known.
    pub object: Option<String>,
}

fn location(file: &Path, document: Option<&Document>) -> String {
    let mut s = file.display().to_string();
    if let Some(d) = document {
        s.push_str(&format!(", document {}", d.index));
        if let Some(o) = &d.object {
            s.push_str(&format!(" ({o})"));
        }
    }
    s
}

/// Turns a serde_yaml error into a [`LoadError`] naming the key path that
/// serde_yaml puts in front of its message, with the position as
/// `(line L, column C)`. Unknown keys become [`Kind::Unsupported`] naming
/// the key (as [`Subject::decode`] does) and the keys allowed there, missing
/// ones [`Kind::Missing`], values outside a fixed set [`Kind::Invalid`],
/// the rest [`Kind::Decode`].
pub(crate) fn yaml_error(
    file: &Path,
    document: Option<&Document>,
    err: &serde_yaml::Error,
) -> LoadError {
    let msg = err.to_string();
    let (path, rest) = split_path(&msg);
    let (rest, position) = match err.location() {
        Some(l) => {
            let suffix = format!(" at line {} column {}", l.line(), l.column());
            match rest.strip_suffix(&suffix) {
                Some(r) => (r, format!(" (line {}, column {})", l.line(), l.column())),
                None => (rest, String::new()),
            }
        }
        None => (rest, String::new()),
    };
    let subject = Subject::named("");
    let error = if let Some(field) = backticked(rest, "unknown field `") {
        let key = subject.decode("", err).key;
        let allowed: Vec<&str> = rest
            .split_once("expected ")
            .map(|(_, list)| list.split('`').skip(1).step_by(2).collect())
            .unwrap_or_default();
        let mut reason = String::from("is not a known key");
        if let Some(best) = allowed
            .iter()
            .map(|a| (edit_distance(&a.to_lowercase(), &field.to_lowercase()), *a))
            .filter(|(d, _)| *d <= 2)
            .min()
        {
            reason.push_str(&format!(" (did you mean `{}`?)", best.1));
        }
        if !allowed.is_empty() {
            let list: Vec<String> = allowed.iter().map(|a| format!("`{a}`")).collect();
            reason.push_str(&format!("; the keys allowed here are {}", list.join(", ")));
        }
        reason.push_str(&position);
        subject.error(Kind::Unsupported, key, None, reason)
    } else if let Some(field) = backticked(rest, "missing field `") {
        let position = if path.is_empty() { "" } else { &position };
        subject.error(
            Kind::Missing,
            join_key(path, field),
            None,
            format!("is required{position}"),
        )
    } else if let Some(value) = backticked(rest, "unknown variant `") {
        let expected = rest.split_once(", expected ").map_or("", |(_, e)| e);
        subject.error(
            Kind::Invalid,
            path,
            Some(value.to_string()),
            format!("must be {expected}{position}"),
        )
    } else {
        let looks_like_syntax = ["while parsing", "while scanning", "found character"]
            .iter()
            .any(|m| rest.contains(m));
        let reason = if looks_like_syntax {
            format!("is not valid YAML: {rest}{position}")
        } else {
            format!("{}{position}", plain_serde_message(rest))
        };
        subject.error(Kind::Decode, path, None, reason)
    };
    LoadError::wrap(file, document, error)
}

/// Splits serde_yaml's `PATH: message` into its parts (an empty path for
/// the root).
fn split_path(msg: &str) -> (&str, &str) {
    match msg.split_once(": ") {
        Some((p, rest))
            if !p.is_empty()
                && !p.contains(|c: char| c.is_whitespace() || c == '`' || c == '"') =>
        {
            (p, rest)
        }
        _ => ("", msg),
    }
}

fn backticked<'a>(msg: &'a str, prefix: &str) -> Option<&'a str> {
    msg.strip_prefix(prefix)?.split('`').next()
}

pub(crate) fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Every problem found in a testbed directory, in file order.
#[derive(Debug)]
pub struct LoadErrors(pub Vec<LoadError>);

impl LoadErrors {
    /// The problems.
    pub fn problems(&self) -> &[LoadError] {
        &self.0
    }
}

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [] => f.write_str("the testbed cannot be loaded"),
            [one] => write!(f, "{one}"),
            many => {
                write!(f, "the testbed has {} problems:", many.len())?;
                for e in many {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for LoadErrors {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .first()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<LoadError> for LoadErrors {
    fn from(e: LoadError) -> Self {
        LoadErrors(vec![e])
    }
}
