//! In-process admission: validating and mutating functions registered from
//! Rust, so that a lab runs the controller's validation without a TLS
//! webhook. A refusal becomes a Kubernetes Status with the function's code
//! and message, worded as a webhook's would be.
//!
//! The chain also records the requests it admits (while the server dry-runs
//! a request for its admission webhooks) and checks that the real request
//! makes the same ones: see [`Admission::start_capture`],
//! [`Admission::expect`] and [`crate::webhook`].

use serde_json::Value;

use crate::error::ApiError;
use crate::resources::Resource;
use crate::store::Store;

/// What the request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Create.
    Create,
    /// Update or patch.
    Update,
    /// Delete.
    Delete,
}

/// What an admission function sees.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionRequest<'a> {
    /// The operation.
    pub operation: Operation,
    /// The resource.
    pub resource: &'a Resource,
    /// Namespace ("" for cluster-scoped objects).
    pub namespace: &'a str,
    /// Object name.
    pub name: &'a str,
    /// `status` for status updates.
    pub subresource: Option<&'a str>,
    /// True for dry runs.
    pub dry_run: bool,
    /// The stored object (update, delete).
    pub old_object: Option<&'a Value>,
}

/// A refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// HTTP code (default 400 in [`Denial::new`]).
    pub code: u16,
    /// Why.
    pub message: String,
}

impl Denial {
    /// A refusal with code 400.
    pub fn new(message: impl Into<String>) -> Denial {
        Denial {
            code: 400,
            message: message.into(),
        }
    }
}

/// Read access to the store for admission functions (e.g. to check a pool
/// against every other pool).
pub type StoreView<'a> = &'a Store;

/// A validating function: `object` is the new object (None on delete).
pub type ValidateFn = Box<
    dyn Fn(&AdmissionRequest<'_>, Option<&Value>, StoreView<'_>) -> Result<(), Denial>
        + Send
        + Sync,
>;
/// A mutating function.
pub type MutateFn = Box<
    dyn Fn(&AdmissionRequest<'_>, &mut Value, StoreView<'_>) -> Result<(), Denial> + Send + Sync,
>;

struct Hook<F> {
    name: String,
    group: String,
    plural: String,
    f: F,
}

/// One admission request as the validating functions see it, owned: what
/// the server records while it dry-runs a request to learn what the
/// webhooks must be shown (see [`crate::webhook`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CapturedRequest {
    /// The operation.
    pub operation: Operation,
    /// The resource (group, version, kind, plural, scope).
    pub resource: Resource,
    /// Namespace ("" for cluster-scoped objects).
    pub namespace: String,
    /// Object name (the generated one for a `generateName` create).
    pub name: String,
    /// Subresource (`status`), if any.
    pub subresource: Option<String>,
    /// The new object, after mutation (None on delete).
    pub object: Option<Value>,
    /// The stored object (update, delete).
    pub old_object: Option<Value>,
}

impl CapturedRequest {
    /// An owned copy of what validation saw.
    pub(crate) fn of(req: &AdmissionRequest<'_>, obj: Option<&Value>) -> CapturedRequest {
        CapturedRequest {
            operation: req.operation,
            resource: req.resource.clone(),
            namespace: req.namespace.to_string(),
            name: req.name.to_string(),
            subresource: req.subresource.map(str::to_string),
            object: obj.cloned(),
            old_object: req.old_object.cloned(),
        }
    }

    fn key(&self) -> (Operation, &str, &str, &str, &str, Option<&str>) {
        (
            self.operation,
            self.resource.group.as_str(),
            self.resource.plural.as_str(),
            self.namespace.as_str(),
            self.name.as_str(),
            self.subresource.as_deref(),
        )
    }

    fn old_rv(&self) -> Option<u64> {
        self.old_object.as_ref().map(crate::store::object_rv)
    }
}

/// What the admission chain does with the requests it validates, beside
/// running the functions.
#[derive(Debug, Default)]
enum Capture {
    /// Nothing.
    #[default]
    Off,
    /// Records every request that passed the in-process validators.
    Record(Vec<CapturedRequest>),
    /// Refuses (with 409, and remembers it) a request the webhooks were not
    /// shown, or whose stored object changed since.
    Expect {
        expected: Vec<CapturedRequest>,
        seen: Vec<CapturedRequest>,
        mismatch: bool,
    },
}

/// The registered functions, run in registration order.
#[derive(Default)]
pub struct Admission {
    validators: Vec<Hook<ValidateFn>>,
    mutators: Vec<Hook<MutateFn>>,
    capture: Capture,
}

impl Admission {
    /// Registers a validating function for a resource (`group`, `plural`).
    pub fn add_validator(&mut self, name: &str, group: &str, plural: &str, f: ValidateFn) {
        self.validators.push(Hook {
            name: name.into(),
            group: group.into(),
            plural: plural.into(),
            f,
        });
    }

    /// Registers a mutating function for a resource.
    pub fn add_mutator(&mut self, name: &str, group: &str, plural: &str, f: MutateFn) {
        self.mutators.push(Hook {
            name: name.into(),
            group: group.into(),
            plural: plural.into(),
            f,
        });
    }

    pub(crate) fn mutate(
        &self,
        req: &AdmissionRequest<'_>,
        obj: &mut Value,
        store: &Store,
    ) -> Result<(), ApiError> {
        for h in self.matching(&self.mutators, req.resource) {
            (h.f)(req, obj, store).map_err(|d| denied(&h.name, d))?;
        }
        Ok(())
    }

    pub(crate) fn validate(
        &self,
        req: &AdmissionRequest<'_>,
        obj: Option<&Value>,
        store: &Store,
    ) -> Result<(), ApiError> {
        for h in self.matching(&self.validators, req.resource) {
            (h.f)(req, obj, store).map_err(|d| denied(&h.name, d))?;
        }
        Ok(())
    }

    /// Records or checks one request that passed the validators, as the
    /// capture mode says (nothing when capture is off).
    pub(crate) fn capture_one(&mut self, seen: CapturedRequest) -> Result<(), ApiError> {
        match &mut self.capture {
            Capture::Off => Ok(()),
            Capture::Record(list) => {
                if !list.iter().any(|c| c.key() == seen.key()) {
                    list.push(seen);
                }
                Ok(())
            }
            Capture::Expect {
                expected,
                seen: done,
                mismatch,
            } => {
                // The same object again within one request (a cascade that
                // reaches it twice) was shown to the webhooks already.
                let again = done.iter().any(|c| c.key() == seen.key());
                let known = expected
                    .iter()
                    .any(|c| c.key() == seen.key() && c.old_rv() == seen.old_rv());
                if again || known {
                    done.push(seen);
                    return Ok(());
                }
                *mismatch = true;
                Err(ApiError::conflict_msg(
                    &seen.resource,
                    &seen.name,
                    "the object changed while admission webhooks were called; please try again",
                ))
            }
        }
    }

    /// True while requests are recorded or checked.
    pub(crate) fn capturing(&self) -> bool {
        !matches!(self.capture, Capture::Off)
    }

    /// True while requests are being recorded (a dry run for webhooks).
    pub(crate) fn recording(&self) -> bool {
        matches!(self.capture, Capture::Record(_))
    }

    /// Starts recording the requests that pass validation.
    pub fn start_capture(&mut self) {
        self.capture = Capture::Record(Vec::new());
    }

    /// Stops recording; the requests recorded since
    /// [`Admission::start_capture`], in order, one per object.
    pub fn finish_capture(&mut self) -> Vec<CapturedRequest> {
        match std::mem::take(&mut self.capture) {
            Capture::Record(list) => list,
            _ => Vec::new(),
        }
    }

    /// From now on, refuses with 409 every request that is not one of
    /// `expected` (same operation, resource, namespace, name, subresource
    /// and stored resourceVersion).
    pub fn expect(&mut self, expected: Vec<CapturedRequest>) {
        self.capture = Capture::Expect {
            expected,
            seen: Vec::new(),
            mismatch: false,
        };
    }

    /// Stops checking; true when a request was refused because it was not
    /// expected.
    pub fn finish_expect(&mut self) -> bool {
        match std::mem::take(&mut self.capture) {
            Capture::Expect { mismatch, .. } => mismatch,
            _ => false,
        }
    }

    fn matching<'a, F>(
        &'a self,
        hooks: &'a [Hook<F>],
        res: &'a Resource,
    ) -> impl Iterator<Item = &'a Hook<F>> {
        hooks
            .iter()
            .filter(move |h| h.group == res.group && h.plural == res.plural)
    }
}

fn denied(name: &str, d: Denial) -> ApiError {
    let reason = match d.code {
        403 => "Forbidden",
        409 => "Conflict",
        422 => "Invalid",
        _ => "BadRequest",
    };
    ApiError::new(
        d.code,
        reason,
        format!(
            "admission webhook \"{name}\" denied the request: {}",
            d.message
        ),
    )
}
