//! The HTTPS validating admission webhook: AdmissionReview v1 over TLS, and
//! the certificate it serves.
//!
//! What lives here:
//!
//! - AdmissionReview handling, pure: [`parse_review`] decodes a request
//!   body, [`hook_for_path`] picks the hook of a path
//!   (`/validate/ippools`, `/validate/network-attachment-definitions`, as
//!   `deploy/controller.yaml` registers them), [`answer`] runs the hook
//!   against an in-memory [`ObjectLister`](crate::admission::ObjectLister) and [`response`] writes the
//!   answering AdmissionReview (a refusal: `allowed: false`, `status.code`
//!   400 and the message spur-core words);
//! - the certificate: [`generate_certificates`] (a CA and a serving
//!   certificate, ECDSA P-256, one year), [`check_certificates`] (valid for
//!   the Service's DNS names at a given time), and the bootstrap against the
//!   API ([`bootstrap_certificates`]: Secret, created or updated with its
//!   resourceVersion, and [`ensure_ca_bundle`]: the
//!   ValidatingWebhookConfiguration's `caBundle`), or a cert-manager
//!   directory ([`WebhookConfig::cert_dir`]);
//! - the server: [`Webhook::bind`] then [`Webhook::run`], or [`serve`] for
//!   both: tokio-rustls (TLS 1.2 and 1.3) and hyper 1, HTTP/1.1, graceful
//!   shutdown.
//!
//! What does not: the admission rules (`crate::admission`, which calls
//! spur-core), the command line and leader election (the binary), metrics
//! of admission decisions (the binary counts what a [`DecisionSink`] is
//! told), the manifests (`deploy/`). A certificate mounted from a
//! cert-manager directory is read at start only: rotation needs a restart.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, ObjectMeta, PostParams};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::Deserialize;
use serde_json::{json, Value};
use spur_core::error::Invalid;
use spur_core::ipamblock::IPAMBlock;
use spur_core::ippool::{IPPool, GROUP};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admission::{
    hooks, Hook, Operation, Request, IPAMBLOCK_PLURAL, IPPOOL_HOOK, IPPOOL_PLURAL, NAD_HOOK,
};

/// Path of the IPPool hook.
pub const IPPOOL_PATH: &str = "/validate/ippools";
/// Path of the NetworkAttachmentDefinition hook.
pub const NAD_PATH: &str = "/validate/network-attachment-definitions";
/// Secret key of the CA certificate (PEM).
pub const CA_KEY: &str = "ca.crt";
/// Secret key of the serving certificate (PEM).
pub const CERT_KEY: &str = "tls.crt";
/// Secret key of the serving certificate's private key (PEM, PKCS#8).
pub const KEY_KEY: &str = "tls.key";
/// A certificate expiring within this margin is replaced at start.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Validity of generated certificates.
pub const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Largest request body read (the API server sends at most ~3 MiB objects,
/// twice in an update).
const MAX_BODY: usize = 8 * 1024 * 1024;
/// How long a TLS handshake or a connection's drain at shutdown may take.
const CONN_DEADLINE: Duration = Duration::from_secs(10);
/// Attempts at writing the Secret or the webhook configuration on conflicts.
const WRITE_ATTEMPTS: usize = 5;

/// Errors of the webhook.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A call to the Kubernetes API failed.
    #[error("{action} {object}: {source}")]
    Api {
        /// What was done (`get`, `create`, `replace`).
        action: &'static str,
        /// The object (`Secret kube-system/spur-webhook-tls`).
        object: String,
        /// The API's error.
        #[source]
        source: kube::Error,
    },
    /// Writing an object kept conflicting with other writers.
    #[error("{object}: still conflicting after {attempts} attempts")]
    Conflicts {
        /// The object.
        object: String,
        /// How many writes were tried.
        attempts: usize,
    },
    /// The ValidatingWebhookConfiguration does not exist (yet).
    #[error("ValidatingWebhookConfiguration {0}: not found")]
    ConfigurationMissing(String),
    /// Generating a certificate failed.
    #[error("generating the webhook certificate for {names:?}: {source}")]
    Generate {
        /// The DNS names.
        names: Vec<String>,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// Certificates or key that cannot be used.
    #[error("{source_name}: {problem}")]
    Certificate {
        /// Where they came from (Secret or file).
        source_name: String,
        /// What is wrong.
        problem: String,
    },
    /// Reading a file of the certificate directory failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Binding the listening socket failed.
    #[error("binding the webhook on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// How the webhook runs (the binary's `--webhook-*` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Address to listen on (`0.0.0.0:<--webhook-port>`).
    pub addr: SocketAddr,
    /// Namespace of the Secret and the Service (the controller's own,
    /// `kube-system` in the manifests).
    pub namespace: String,
    /// Name of the Secret holding `ca.crt`, `tls.crt`, `tls.key`
    /// (`--webhook-secret`).
    pub secret: String,
    /// Name of the Service in front of the webhook (`--webhook-service`).
    pub service: String,
    /// Name of the ValidatingWebhookConfiguration whose `caBundle` is kept
    /// (`--webhook-configuration`).
    pub configuration: String,
    /// cert-manager mode (`--webhook-cert-dir`): `tls.crt` and `tls.key`
    /// are read from this directory and neither the Secret nor the
    /// `caBundle` is touched.
    pub cert_dir: Option<PathBuf>,
}

impl WebhookConfig {
    /// The names the serving certificate must be valid for:
    /// `SERVICE.NAMESPACE.svc` and `SERVICE.NAMESPACE.svc.cluster.local`.
    pub fn dns_names(&self) -> Vec<String> {
        let base = format!("{}.{}.svc", self.service, self.namespace);
        vec![base.clone(), format!("{base}.cluster.local")]
    }

    fn secret_object(&self) -> String {
        format!("Secret {}/{}", self.namespace, self.secret)
    }
}

// ---------------------------------------------------------------------------
// AdmissionReview
// ---------------------------------------------------------------------------

/// A malformed AdmissionReview (answered with HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("AdmissionReview: {key}: {reason}")]
pub struct ReviewError {
    /// The key at fault (`request.uid`, `apiVersion`, or `body`).
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ReviewError {
    fn new(key: &str, reason: impl Into<String>) -> ReviewError {
        ReviewError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The `request` of an AdmissionReview v1, the fields Spur reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewRequest {
    /// The request's UID, echoed in the response.
    pub uid: String,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operation: String,
    /// The object as it would be stored.
    #[serde(default)]
    pub object: Option<Value>,
    /// The stored object.
    #[serde(default)]
    pub old_object: Option<Value>,
    /// The subresource written (`status`).
    #[serde(default)]
    pub sub_resource: Option<String>,
    /// The namespace ("" or absent for cluster-scoped objects).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The name (absent on a create with `generateName`).
    #[serde(default)]
    pub name: Option<String>,
}

impl ReviewRequest {
    /// The object's name: `name`, else the object's `metadata.name`.
    pub fn object_name(&self) -> &str {
        if let Some(name) = self.name.as_deref().filter(|n| !n.is_empty()) {
            return name;
        }
        self.object
            .as_ref()
            .or(self.old_object.as_ref())
            .and_then(|o| o.pointer("/metadata/name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: Option<String>,
    kind: Option<String>,
    request: Option<ReviewRequest>,
}

/// Decodes an AdmissionReview v1 request body.
pub fn parse_review(body: &[u8]) -> Result<ReviewRequest, ReviewError> {
    let review: Review = serde_json::from_slice(body).map_err(|e| {
        ReviewError::new(
            "body",
            format!(
                "not an AdmissionReview: {}",
                spur_core::error::plain_serde_message(&e.to_string())
            ),
        )
    })?;
    match review.api_version.as_deref() {
        Some("admission.k8s.io/v1") => {}
        other => {
            return Err(ReviewError::new(
                "apiVersion",
                format!("{other:?}: must be \"admission.k8s.io/v1\""),
            ))
        }
    }
    match review.kind.as_deref() {
        Some("AdmissionReview") => {}
        other => {
            return Err(ReviewError::new(
                "kind",
                format!("{other:?}: must be \"AdmissionReview\""),
            ))
        }
    }
    let request = review
        .request
        .ok_or_else(|| ReviewError::new("request", "missing"))?;
    if request.uid.is_empty() {
        return Err(ReviewError::new("request.uid", "missing"));
    }
    Ok(request)
}

/// The hook serving a path, by its name ([`IPPOOL_HOOK`], [`NAD_HOOK`]).
pub fn hook_for_path(path: &str) -> Option<&'static str> {
    match path {
        IPPOOL_PATH => Some(IPPOOL_HOOK),
        NAD_PATH => Some(NAD_HOOK),
        _ => None,
    }
}

/// Runs `hook` on a review request. Operations other than create, update
/// and delete (`CONNECT`) are allowed.
pub fn answer(
    hook: &Hook,
    req: &ReviewRequest,
    lister: &dyn crate::admission::ObjectLister,
) -> Result<(), Invalid> {
    let operation = match req.operation.as_str() {
        "CREATE" => Operation::Create,
        "UPDATE" => Operation::Update,
        "DELETE" => Operation::Delete,
        _ => return Ok(()),
    };
    let request = Request {
        operation,
        subresource: req.sub_resource.as_deref().filter(|s| !s.is_empty()),
        namespace: req.namespace.as_deref().unwrap_or_default(),
        name: req.object_name(),
        object: req.object.as_ref(),
        old_object: req.old_object.as_ref(),
    };
    (hook.check)(&request, lister)
}

/// The answering AdmissionReview: allowed, or refused with `code` and
/// `message`.
pub fn response(uid: &str, refusal: Option<(u16, &str)>) -> Value {
    let response = match refusal {
        None => json!({"uid": uid, "allowed": true}),
        Some((code, message)) => json!({
            "uid": uid,
            "allowed": false,
            "status": {"code": code, "message": message},
        }),
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    })
}

/// The IPPool hook's lists, fetched before the (synchronous) hook runs:
/// IPPools always, IPAMBlocks for updates and deletes.
async fn prefetch(
    client: &kube::Client,
    hook: &Hook,
    req: &ReviewRequest,
) -> Result<BTreeMap<(String, String), Vec<Value>>, WebhookError> {
    let mut lists = BTreeMap::new();
    if hook.group != GROUP {
        return Ok(lists);
    }
    let mut wanted = vec![(IPPOOL_PLURAL, ApiResource::erase::<IPPool>(&()))];
    if req.operation != "CREATE" {
        wanted.push((IPAMBLOCK_PLURAL, ApiResource::erase::<IPAMBlock>(&())));
    }
    for (plural, ar) in wanted {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|source| WebhookError::Api {
                action: "list",
                object: format!("{plural}.{GROUP}"),
                source,
            })?;
        let values = list
            .items
            .into_iter()
            .filter_map(|o| serde_json::to_value(o).ok())
            .collect();
        lists.insert((GROUP.to_string(), plural.to_string()), values);
    }
    Ok(lists)
}

/// Answers one HTTP request: a status and a JSON body.
async fn handle_review(
    client: &kube::Client,
    hooks: &[Hook],
    decisions: Option<&DecisionSink>,
    method: &Method,
    path: &str,
    body: &[u8],
) -> (StatusCode, Value) {
    let Some(hook) = hook_for_path(path).and_then(|n| hooks.iter().find(|h| h.name == n)) else {
        return (
            StatusCode::NOT_FOUND,
            json!({"error": format!("no admission hook at {path}")}),
        );
    };
    if method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": format!("{method} {path}: only POST")}),
        );
    }
    let req = match parse_review(body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(path, error = %e, "malformed AdmissionReview");
            return (StatusCode::BAD_REQUEST, json!({"error": e.to_string()}));
        }
    };
    let lists = match prefetch(client, hook, &req).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(hook = %hook.name, uid = %req.uid, error = %e, "cannot list for admission");
            return (
                StatusCode::OK,
                response(&req.uid, Some((500, &format!("cannot check: {e}")))),
            );
        }
    };
    let lister = |group: &str, plural: &str| -> Vec<Value> {
        lists
            .get(&(group.to_string(), plural.to_string()))
            .cloned()
            .unwrap_or_default()
    };
    let verdict = answer(hook, &req, &lister);
    if let Some(sink) = decisions {
        sink(
            &hook.plural,
            if verdict.is_ok() { "allowed" } else { "denied" },
        );
    }
    match verdict {
        Ok(()) => {
            tracing::debug!(hook = %hook.name, uid = %req.uid, operation = %req.operation,
                name = req.object_name(), decision = "allowed", "admission");
            (StatusCode::OK, response(&req.uid, None))
        }
        Err(e) => {
            let message = e.to_string();
            tracing::info!(hook = %hook.name, uid = %req.uid, operation = %req.operation,
                name = req.object_name(), decision = "denied", reason = %message, "admission");
            (StatusCode::OK, response(&req.uid, Some((400, &message))))
        }
    }
}

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// The webhook's certificates, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificates {
    /// The CA certificate (absent in cert-manager mode without `ca.crt`).
    pub ca_pem: Option<String>,
    /// The serving certificate (chain).
    pub cert_pem: String,
    /// The serving certificate's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// Generates a CA and a serving certificate for `dns_names` (ECDSA P-256),
/// valid from `not_before` for [`VALIDITY`].
pub fn generate_certificates(
    dns_names: &[String],
    not_before: SystemTime,
) -> Result<Certificates, rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    };
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "spur-webhook-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before.into();
    ca.not_after = (not_before + VALIDITY).into();
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut leaf = CertificateParams::new(dns_names.to_vec())?;
    if let Some(first) = dns_names.first() {
        leaf.distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = not_before.into();
    leaf.not_after = (not_before + VALIDITY).into();
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(Certificates {
        ca_pem: Some(ca_cert.pem()),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Checks that `certs` chain to their CA and are valid for every name of
/// `dns_names` at `at` (pass now + [`RENEW_BEFORE`] to refuse certificates
/// about to expire), and that the key decodes. The error says what is
/// wrong.
pub fn check_certificates(
    certs: &Certificates,
    dns_names: &[String],
    at: SystemTime,
) -> Result<(), String> {
    let ca_pem = certs.ca_pem.as_deref().ok_or(format!("{CA_KEY} missing"))?;
    let ca =
        CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| format!("{CA_KEY}: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(certs.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{CERT_KEY}: {e}"))?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(format!("{CERT_KEY}: no certificate"))?;
    PrivateKeyDer::from_pem_slice(certs.key_pem.as_bytes())
        .map_err(|e| format!("{KEY_KEY}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(|e| format!("{CA_KEY}: {e}"))?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| format!("{CA_KEY}: {e}"))?;
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| format!("time before 1970: {e}"))?;
    for name in dns_names {
        let server_name =
            ServerName::try_from(name.clone()).map_err(|e| format!("DNS name {name:?}: {e}"))?;
        verifier
            .verify_server_cert(
                leaf,
                intermediates,
                &server_name,
                &[],
                UnixTime::since_unix_epoch(secs),
            )
            .map_err(|e| format!("{CERT_KEY} for {name}: {e}"))?;
    }
    Ok(())
}

fn secret_certificates(secret: &Secret) -> Option<Certificates> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    Some(Certificates {
        ca_pem: text(CA_KEY),
        cert_pem: text(CERT_KEY)?,
        key_pem: text(KEY_KEY)?,
    })
}

fn secret_data(certs: &Certificates) -> BTreeMap<String, ByteString> {
    let mut data = BTreeMap::new();
    if let Some(ca) = &certs.ca_pem {
        data.insert(CA_KEY.to_string(), ByteString(ca.clone().into_bytes()));
    }
    data.insert(
        CERT_KEY.to_string(),
        ByteString(certs.cert_pem.clone().into_bytes()),
    );
    data.insert(
        KEY_KEY.to_string(),
        ByteString(certs.key_pem.clone().into_bytes()),
    );
    data
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Makes sure Secret `cfg.secret` holds certificates valid for the
/// Service's names for at least [`RENEW_BEFORE`], generating and storing
/// new ones otherwise, and returns them. Writes are optimistic: a create
/// that finds the Secret made by another replica, or an update that lost
/// to one (409), re-reads the Secret and uses what is there when it is
/// valid.
pub async fn bootstrap_certificates(
    cfg: &WebhookConfig,
    client: &kube::Client,
) -> Result<Certificates, WebhookError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let names = cfg.dns_names();
    let object = cfg.secret_object();
    for attempt in 1..=WRITE_ATTEMPTS {
        let stored = secrets
            .get_opt(&cfg.secret)
            .await
            .map_err(|source| WebhookError::Api {
                action: "get",
                object: object.clone(),
                source,
            })?;
        if let Some(certs) = stored.as_ref().and_then(secret_certificates) {
            match check_certificates(&certs, &names, SystemTime::now() + RENEW_BEFORE) {
                Ok(()) => {
                    tracing::info!(secret = %object, "using the stored webhook certificate");
                    return Ok(certs);
                }
                Err(problem) => {
                    tracing::info!(secret = %object, %problem, "replacing the webhook certificate")
                }
            }
        }
        let certs = generate_certificates(&names, SystemTime::now()).map_err(|source| {
            WebhookError::Generate {
                names: names.clone(),
                source,
            }
        })?;
        let written = match stored {
            Some(mut secret) => {
                secret.data = Some(secret_data(&certs));
                secret.string_data = None;
                secrets
                    .replace(&cfg.secret, &PostParams::default(), &secret)
                    .await
                    .map(|_| ())
                    .map_err(|e| ("replace", e))
            }
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(cfg.secret.clone()),
                        namespace: Some(cfg.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/part-of".to_string(),
                            "spur".to_string(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(secret_data(&certs)),
                    ..Secret::default()
                };
                secrets
                    .create(&PostParams::default(), &secret)
                    .await
                    .map(|_| ())
                    .map_err(|e| ("create", e))
            }
        };
        match written {
            Ok(()) => {
                tracing::info!(secret = %object, "stored a new webhook certificate");
                return Ok(certs);
            }
            Err((_, e)) if is_conflict(&e) => {
                tracing::info!(secret = %object, attempt, "another writer won: re-reading");
            }
            Err((action, source)) => {
                return Err(WebhookError::Api {
                    action,
                    object,
                    source,
                })
            }
        }
    }
    Err(WebhookError::Conflicts {
        object,
        attempts: WRITE_ATTEMPTS,
    })
}

/// Sets every webhook's `clientConfig.caBundle` to `ca_pem`; whether
/// anything changed.
pub fn set_ca_bundle(config: &mut ValidatingWebhookConfiguration, ca_pem: &[u8]) -> bool {
    let mut changed = false;
    for webhook in config.webhooks.iter_mut().flatten() {
        let bundle = &mut webhook.client_config.ca_bundle;
        if bundle.as_ref().map(|b| b.0.as_slice()) != Some(ca_pem) {
            *bundle = Some(ByteString(ca_pem.to_vec()));
            changed = true;
        }
    }
    changed
}

/// Writes `ca_pem` into the `caBundle` of ValidatingWebhookConfiguration
/// `cfg.configuration` when it differs (replace with its resourceVersion,
/// retried on conflicts); whether it wrote.
pub async fn ensure_ca_bundle(
    cfg: &WebhookConfig,
    client: &kube::Client,
    ca_pem: &str,
) -> Result<bool, WebhookError> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let object = format!("ValidatingWebhookConfiguration {}", cfg.configuration);
    for _ in 0..WRITE_ATTEMPTS {
        let mut config = api
            .get_opt(&cfg.configuration)
            .await
            .map_err(|source| WebhookError::Api {
                action: "get",
                object: object.clone(),
                source,
            })?
            .ok_or_else(|| WebhookError::ConfigurationMissing(cfg.configuration.clone()))?;
        if !set_ca_bundle(&mut config, ca_pem.as_bytes()) {
            return Ok(false);
        }
        match api
            .replace(&cfg.configuration, &PostParams::default(), &config)
            .await
        {
            Ok(_) => {
                tracing::info!(configuration = %cfg.configuration, "caBundle updated");
                return Ok(true);
            }
            Err(e) if is_conflict(&e) => continue,
            Err(source) => {
                return Err(WebhookError::Api {
                    action: "replace",
                    object,
                    source,
                })
            }
        }
    }
    Err(WebhookError::Conflicts {
        object,
        attempts: WRITE_ATTEMPTS,
    })
}

/// Reads `tls.crt`, `tls.key` (and `ca.crt` when present) from a
/// cert-manager directory.
pub fn read_cert_dir(dir: &Path) -> Result<Certificates, WebhookError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| WebhookError::Read { path, source })
    };
    Ok(Certificates {
        ca_pem: read(CA_KEY).ok(),
        cert_pem: read(CERT_KEY)?,
        key_pem: read(KEY_KEY)?,
    })
}

/// A rustls server configuration (TLS 1.2 and 1.3, HTTP/1.1) serving
/// `certs`.
pub fn tls_config(
    certs: &Certificates,
    source_name: &str,
) -> Result<rustls::ServerConfig, WebhookError> {
    let bad = |problem: String| WebhookError::Certificate {
        source_name: source_name.to_string(),
        problem,
    };
    let chain = CertificateDer::pem_slice_iter(certs.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{CERT_KEY}: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(certs.key_pem.as_bytes())
        .map_err(|e| bad(format!("{KEY_KEY}: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| bad(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| bad(format!("{CERT_KEY}/{KEY_KEY}: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// A bound webhook, ready to [`run`](Webhook::run).
pub struct Webhook {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    client: kube::Client,
    certificates: Certificates,
    decisions: Option<DecisionSink>,
}

/// Told of every admission decision: the hook's resource (plural) and
/// `allowed` or `refused` (the binary counts them in its metrics).
pub type DecisionSink = Arc<dyn Fn(&str, &str) + Send + Sync>;

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Gets the certificate (Secret bootstrap and `caBundle`, or the
    /// cert-manager directory) and binds `cfg.addr`. A missing
    /// ValidatingWebhookConfiguration is not an error here: [`run`](Webhook::run)
    /// keeps trying to set its `caBundle`.
    pub async fn bind(cfg: &WebhookConfig, client: kube::Client) -> Result<Webhook, WebhookError> {
        let (certificates, source_name) = match &cfg.cert_dir {
            Some(dir) => (read_cert_dir(dir)?, dir.display().to_string()),
            None => (
                bootstrap_certificates(cfg, &client).await?,
                cfg.secret_object(),
            ),
        };
        let tls = tls_config(&certificates, &source_name)?;
        let listener = TcpListener::bind(cfg.addr)
            .await
            .map_err(|source| WebhookError::Bind {
                addr: cfg.addr,
                source,
            })?;
        Ok(Webhook {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            client,
            certificates,
            decisions: None,
        })
    }

    /// The bound address (the port chosen when binding port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, std::io::Error> {
        self.listener.local_addr()
    }

    /// The certificates served.
    pub fn certificates(&self) -> &Certificates {
        &self.certificates
    }

    /// Reports every decision to `sink`.
    pub fn with_decisions(mut self, sink: DecisionSink) -> Webhook {
        self.decisions = Some(sink);
        self
    }

    /// Serves until `shutdown` completes, then stops accepting and lets
    /// open connections finish their request (up to 10 s). Outside
    /// cert-manager mode, keeps the webhook configuration's `caBundle` set
    /// (retried every 10 s until it succeeds).
    pub async fn run(
        self,
        cfg: &WebhookConfig,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), WebhookError> {
        let hooks: Arc<Vec<Hook>> = Arc::new(hooks());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        if let (None, Some(ca)) = (&cfg.cert_dir, self.certificates.ca_pem.clone()) {
            let (cfg, client, mut stop) = (cfg.clone(), self.client.clone(), stop_rx.clone());
            tasks.spawn(async move {
                loop {
                    match ensure_ca_bundle(&cfg, &client, &ca).await {
                        Ok(_) => return,
                        Err(e) => tracing::warn!(error = %e, "cannot set the caBundle; retrying"),
                    }
                    tokio::select! {
                        biased;
                        _ = stop.changed() => return,
                        () = tokio::time::sleep(Duration::from_secs(10)) => {}
                    }
                }
            });
        }
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook accept failed");
                        continue;
                    }
                },
            };
            let acceptor = self.acceptor.clone();
            let client = self.client.clone();
            let hooks = Arc::clone(&hooks);
            let decisions = self.decisions.clone();
            let mut stop = stop_rx.clone();
            tasks.spawn(async move {
                let tls = match tokio::time::timeout(CONN_DEADLINE, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let client = client.clone();
                    let hooks = Arc::clone(&hooks);
                    let decisions = decisions.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            serve_request(&client, &hooks, decisions.as_ref(), req).await,
                        )
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service);
                tokio::pin!(conn);
                // Stop first: a connection being served then ends
                // gracefully.
                tokio::select! {
                    biased;
                    _ = stop.changed() => {
                        conn.as_mut().graceful_shutdown();
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, error = %e, "webhook connection at shutdown");
                        }
                    }
                    r = conn.as_mut() => {
                        if let Err(e) = r { tracing::debug!(%peer, error = %e, "webhook connection"); }
                    }
                }
            });
            // Reap finished connections.
            while tasks.try_join_next().is_some() {}
        }
        drop(self.listener);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(CONN_DEADLINE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("webhook connections still open after the shutdown deadline");
            tasks.abort_all();
        }
        Ok(())
    }
}

async fn serve_request(
    client: &kube::Client,
    hooks: &[Hook],
    decisions: Option<&DecisionSink>,
    req: http::Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let (status, value) = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => {
            handle_review(
                client,
                hooks,
                decisions,
                &parts.method,
                parts.uri.path(),
                &collected.to_bytes(),
            )
            .await
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            json!({"error": format!("AdmissionReview: body: {e}")}),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The webhook: certificate, bind, serve until `shutdown` completes
/// ([`Webhook::bind`] then [`Webhook::run`]).
pub async fn serve(
    cfg: WebhookConfig,
    client: kube::Client,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WebhookError> {
    serve_with(cfg, client, None, shutdown).await
}

/// [`serve`], reporting every decision to `decisions`.
pub async fn serve_with(
    cfg: WebhookConfig,
    client: kube::Client,
    decisions: Option<DecisionSink>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WebhookError> {
    let mut webhook = Webhook::bind(&cfg, client).await?;
    if let Some(sink) = decisions {
        webhook = webhook.with_decisions(sink);
    }
    tracing::info!(addr = ?webhook.local_addr().ok(), "admission webhook listening");
    webhook.run(&cfg, shutdown).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use spur_core::ippool::{IPPoolSpec, IpRange, SubnetInfo};

    fn pool(name: &str, cidr: &str) -> Value {
        serde_json::to_value(IPPool::new(
            name,
            IPPoolSpec {
                ip_ranges: vec![IpRange::cidr(cidr)],
                subnet_info: SubnetInfo {
                    gateway: "10.10.1.1".into(),
                    prefix_length: 24,
                    vlan: Some(100),
                },
                exclude: vec![],
            },
        ))
        .unwrap()
    }

    fn review(operation: &str, object: Option<Value>, old: Option<Value>) -> Vec<u8> {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "spur.dev", "version": "v1beta1", "kind": "IPPool"},
                "resource": {"group": "spur.dev", "version": "v1beta1", "resource": "ippools"},
                "operation": operation,
                "name": object.as_ref().or(old.as_ref()).and_then(|o| o.pointer("/metadata/name")).cloned(),
                "object": object,
                "oldObject": old,
                "userInfo": {"username": "admin"},
            }
        })
        .to_string()
        .into_bytes()
    }

    fn hook(name: &str) -> Hook {
        hooks().into_iter().find(|h| h.name == name).unwrap()
    }

    fn decide(name: &str, body: &[u8], pools: Vec<Value>) -> Value {
        let req = parse_review(body).unwrap();
        let lister = move |_: &str, plural: &str| -> Vec<Value> {
            if plural == IPPOOL_PLURAL {
                pools.clone()
            } else {
                vec![]
            }
        };
        match answer(&hook(name), &req, &lister) {
            Ok(()) => response(&req.uid, None),
            Err(e) => response(&req.uid, Some((400, &e.to_string()))),
        }
    }

    #[test]
    fn paths_name_the_hooks() {
        assert_eq!(hook_for_path("/validate/ippools"), Some(IPPOOL_HOOK));
        assert_eq!(
            hook_for_path("/validate/network-attachment-definitions"),
            Some(NAD_HOOK)
        );
        assert_eq!(hook_for_path("/validate/pods"), None);
        assert_eq!(hook_for_path("/"), None);
    }

    #[test]
    fn a_valid_pool_is_allowed() {
        let body = review("CREATE", Some(pool("vlan100-ipv4", "10.10.1.0/26")), None);
        assert_eq!(
            decide(IPPOOL_HOOK, &body, vec![]),
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                   "response": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true}})
        );
    }

    #[test]
    fn an_overlapping_pool_is_refused_naming_the_other() {
        let body = review(
            "CREATE",
            Some(pool("overlapping-pool", "10.10.1.32/27")),
            None,
        );
        let answer = decide(
            IPPOOL_HOOK,
            &body,
            vec![pool("vlan100-ipv4", "10.10.1.0/26")],
        );
        assert_eq!(
            answer["response"],
            json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": false,
                   "status": {"code": 400, "message":
                   "IPPool overlapping-pool: spec.ipRanges[0].cidr = \"10.10.1.32/27\": overlaps \
                    10.10.1.0/26 (spec.ipRanges[0].cidr) of IPPool vlan100-ipv4"}})
        );
    }

    #[test]
    fn a_nad_with_vlan_5000_is_refused() {
        let config =
            json!({"cniVersion": "1.0.0", "type": "spur", "networkType": "vlan", "vlan": 5000});
        let nad = json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": "net", "namespace": "default"},
            "spec": {"config": config.to_string()}});
        let mut body: Value = serde_json::from_slice(&review("CREATE", Some(nad), None)).unwrap();
        body["request"]["namespace"] = json!("default");
        let answer = decide(NAD_HOOK, body.to_string().as_bytes(), vec![]);
        assert_eq!(answer["response"]["allowed"], json!(false));
        assert_eq!(answer["response"]["status"]["code"], json!(400));
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("NetworkAttachmentDefinition default/net: spec.config.vlan = 5000"),
            "{message}"
        );
    }

    #[test]
    fn status_updates_and_connect_are_allowed() {
        let p = pool("overlapping-pool", "10.10.1.32/27");
        let mut body: Value =
            serde_json::from_slice(&review("UPDATE", Some(p.clone()), Some(p))).unwrap();
        body["request"]["subResource"] = json!("status");
        let others = vec![pool("vlan100-ipv4", "10.10.1.0/26")];
        let answer = decide(IPPOOL_HOOK, body.to_string().as_bytes(), others.clone());
        assert_eq!(answer["response"]["allowed"], json!(true));
        let connect = review("CONNECT", None, None);
        assert_eq!(
            decide(IPPOOL_HOOK, &connect, others)["response"]["allowed"],
            json!(true)
        );
    }

    #[test]
    fn malformed_reviews_name_the_key() {
        let e = parse_review(b"{not json").unwrap_err();
        assert_eq!(e.key, "body");
        let e = parse_review(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u","operation":"CREATE"}}"#).unwrap_err();
        assert_eq!(e.key, "apiVersion");
        assert!(e.to_string().contains("v1beta1"), "{e}");
        let e = parse_review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#)
            .unwrap_err();
        assert_eq!(e.key, "request");
        let e = parse_review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"","operation":"CREATE"}}"#).unwrap_err();
        assert_eq!(e.key, "request.uid");
        let e = parse_review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod","request":{"uid":"u","operation":"CREATE"}}"#).unwrap_err();
        assert_eq!(e.key, "kind");
    }

    #[test]
    fn the_name_comes_from_the_object_when_absent() {
        let req = parse_review(&review("CREATE", Some(pool("p1", "10.10.1.0/26")), None)).unwrap();
        let mut req2 = req.clone();
        req2.name = None;
        assert_eq!(req2.object_name(), "p1");
    }

    fn names() -> Vec<String> {
        WebhookConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            namespace: "kube-system".into(),
            secret: "spur-webhook-tls".into(),
            service: "spur-webhook".into(),
            configuration: "spur-webhook".into(),
            cert_dir: None,
        }
        .dns_names()
    }

    #[test]
    fn generated_certificates_check_for_the_service_names_until_they_expire() {
        assert_eq!(
            names(),
            [
                "spur-webhook.kube-system.svc",
                "spur-webhook.kube-system.svc.cluster.local"
            ]
        );
        let now = SystemTime::now();
        let certs = generate_certificates(&names(), now).unwrap();
        assert_eq!(
            check_certificates(&certs, &names(), now + RENEW_BEFORE),
            Ok(())
        );
        let late = check_certificates(&certs, &names(), now + VALIDITY + Duration::from_secs(60))
            .unwrap_err();
        assert!(late.contains("tls.crt"), "{late}");
        let other =
            check_certificates(&certs, &["other.kube-system.svc".to_string()], now).unwrap_err();
        assert!(other.contains("other.kube-system.svc"), "{other}");
        // Another CA does not vouch for this certificate.
        let foreign = generate_certificates(&names(), now).unwrap();
        let mixed = Certificates {
            ca_pem: foreign.ca_pem,
            ..certs.clone()
        };
        assert!(check_certificates(&mixed, &names(), now).is_err());
        let no_ca = Certificates {
            ca_pem: None,
            ..certs.clone()
        };
        assert_eq!(
            check_certificates(&no_ca, &names(), now),
            Err("ca.crt missing".to_string())
        );
        assert!(tls_config(&certs, "test").is_ok());
    }

    #[test]
    fn ca_bundle_is_set_on_every_webhook_once() {
        let mut config: ValidatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": "spur-webhook"},
            "webhooks": [
                {"name": "a", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                 "clientConfig": {"service": {"name": "s", "namespace": "kube-system"}}},
                {"name": "b", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                 "clientConfig": {"service": {"name": "s", "namespace": "kube-system"}, "caBundle": "b2xk"}},
            ]
        }))
        .unwrap();
        assert!(set_ca_bundle(&mut config, b"PEM"));
        assert!(!set_ca_bundle(&mut config, b"PEM"));
        let v = serde_json::to_value(&config).unwrap();
        assert_eq!(v["webhooks"][0]["clientConfig"]["caBundle"], json!("UEVN"));
        assert_eq!(v["webhooks"][1]["clientConfig"]["caBundle"], json!("UEVN"));
    }
}
