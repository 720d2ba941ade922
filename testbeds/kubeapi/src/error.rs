//! API errors, rendered as Kubernetes `Status` objects.

use serde_json::{json, Value};

use crate::resources::Resource;

/// An error answer: HTTP code, Kubernetes reason and message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Kubernetes `StatusReason` (`NotFound`, `Conflict`, `Invalid`, ...).
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// `details` of the Status.
    pub details: Option<Value>,
}

impl ApiError {
    /// Any error.
    pub fn new(code: u16, reason: &str, message: String) -> ApiError {
        ApiError {
            code,
            reason: reason.into(),
            message,
            details: None,
        }
    }

    /// Adds `details` naming the object.
    pub fn with_details(mut self, name: &str, group: &str, kind: &str) -> ApiError {
        self.details = Some(json!({"name": name, "group": group, "kind": kind}));
        self
    }

    fn about(res: &Resource, name: &str, code: u16, reason: &str, message: String) -> ApiError {
        ApiError::new(code, reason, message).with_details(name, &res.group, &res.plural)
    }

    /// 404: the object does not exist.
    pub fn not_found(res: &Resource, name: &str) -> ApiError {
        let m = format!("{} \"{name}\" not found", res.qualified());
        ApiError::about(res, name, 404, "NotFound", m)
    }

    /// 409: the object exists already.
    pub fn already_exists(res: &Resource, name: &str) -> ApiError {
        let m = format!("{} \"{name}\" already exists", res.qualified());
        ApiError::about(res, name, 409, "AlreadyExists", m)
    }

    /// 409: a stale resourceVersion.
    pub fn conflict(res: &Resource, name: &str) -> ApiError {
        ApiError::conflict_msg(
            res,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 with a specific message.
    pub fn conflict_msg(res: &Resource, name: &str, why: &str) -> ApiError {
        let m = format!(
            "Operation cannot be fulfilled on {} \"{name}\": {why}",
            res.qualified()
        );
        ApiError::about(res, name, 409, "Conflict", m)
    }

    /// 422: the object is invalid. `field` and `why` become the Status's
    /// `details.causes`, which kubectl prints as `* field: why`.
    pub fn invalid(res: &Resource, name: &str, field: &str, why: &str) -> ApiError {
        let m = format!("{} \"{name}\" is invalid: {field}: {why}", res.kind);
        let mut e = ApiError::new(422, "Invalid", m);
        e.details = Some(json!({
            "name": name, "group": res.group, "kind": res.kind,
            "causes": [{"reason": "FieldValueInvalid", "message": why, "field": field}],
        }));
        e
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: String) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// 405: the verb is not allowed here.
    pub fn method_not_allowed(message: String) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    /// The Status object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}
