//! In-process admission: validating and mutating functions registered from
//! Rust, so that a lab runs the controller's validation without a TLS
//! webhook. A refusal becomes a Kubernetes Status with the function's code
//! and message, worded as a webhook's would be.

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

/// The registered functions, run in registration order.
#[derive(Default)]
pub struct Admission {
    validators: Vec<Hook<ValidateFn>>,
    mutators: Vec<Hook<MutateFn>>,
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
