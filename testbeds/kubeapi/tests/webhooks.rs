//! Validating admission webhooks called over HTTPS by the embedded API
//! server: an AdmissionReview v1 server written here (tokio-rustls, an
//! rcgen certificate for `hook.default.svc`), a kube::Client on the
//! embedded server, and the ValidatingWebhookConfigurations it applies.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::Client;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use spur_kubeapi::{ApiServer, Denial, ServiceRef};

/// A CA (PEM) and a serving certificate and key for `names`.
struct Certs {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn certs(names: &[&str]) -> Certs {
    use rcgen::{
        BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
    };
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    Certs {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// What the test webhook answers.
#[derive(Clone, Debug)]
enum Answer {
    Allow,
    Deny(u16, &'static str),
    DenyWithoutStatus,
    Hang,
}

/// One review the test webhook received: the path and the `request`.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    request: Value,
}

type Decide = Arc<dyn Fn(&Value) -> Answer + Send + Sync>;

/// A running AdmissionReview server on 127.0.0.1.
struct HookServer {
    addr: SocketAddr,
    ca_pem: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl HookServer {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn hook_server(decide: impl Fn(&Value) -> Answer + Send + Sync + 'static) -> HookServer {
    let c = certs(&["hook.default.svc", "127.0.0.1"]);
    let chain = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let decide: Decide = Arc::new(decide);
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = seen2.clone();
            let decide = decide.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        let decide = decide.clone();
                        async move {
                            let path = req.uri().path_and_query().unwrap().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let review: Value = serde_json::from_slice(&body).unwrap();
                            let request = review["request"].clone();
                            seen.lock().unwrap().push(Seen {
                                path,
                                request: request.clone(),
                            });
                            let uid = request["uid"].clone();
                            let response = match decide(&request) {
                                Answer::Allow => json!({"uid": uid, "allowed": true}),
                                Answer::Deny(code, message) => json!({"uid": uid, "allowed": false,
                                "status": {"code": code, "message": message}}),
                                Answer::DenyWithoutStatus => json!({"uid": uid, "allowed": false}),
                                Answer::Hang => futures::future::pending().await,
                            };
                            let out = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response});
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                                out.to_string(),
                            ))))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    HookServer {
        addr,
        ca_pem: c.ca_pem,
        seen,
    }
}

/// The server, its client, and the resolver sending `default/hook:443` to
/// `addr`.
fn cluster(addr: Option<SocketAddr>) -> (ApiServer, Client) {
    let server = ApiServer::in_memory();
    if let Some(addr) = addr {
        server.set_service_resolver(move |s: &ServiceRef| {
            (s.namespace == "default" && s.name == "hook" && s.port == 443).then_some(addr)
        });
    }
    let client = Client::new(server.service(), "default");
    (server, client)
}

/// A webhook on configmaps (CREATE, UPDATE, DELETE) at the Service
/// default/hook, path /validate, failurePolicy Fail; `extra` overrides.
fn webhook(name: &str, ca_pem: &str, extra: Value) -> Value {
    use base64::Engine;
    let mut w = json!({
        "name": name,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",
        "clientConfig": {
            "service": {"namespace": "default", "name": "hook", "path": "/validate"},
            "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
        },
        "rules": [{"operations": ["CREATE", "UPDATE", "DELETE"], "apiGroups": [""],
                   "apiVersions": ["v1"], "resources": ["configmaps"], "scope": "Namespaced"}],
    });
    for (k, v) in extra.as_object().unwrap() {
        w[k] = v.clone();
    }
    w
}

async fn configure(client: &Client, webhooks: Vec<Value>) {
    let vwc: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "test-webhooks"},
        "webhooks": webhooks,
    }))
    .unwrap();
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &vwc)
        .await
        .unwrap();
}

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn status(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Refuses objects whose data has a `bad` key (400 "bad data").
fn refuse_bad(req: &Value) -> Answer {
    if req["object"]["data"].get("bad").is_some() {
        Answer::Deny(400, "bad data")
    } else {
        Answer::Allow
    }
}

async fn exists(api: &Api<ConfigMap>, name: &str) -> bool {
    api.get_opt(name).await.unwrap().is_some()
}

#[tokio::test]
async fn a_refused_create_is_not_stored_and_an_allowed_one_is() {
    let hook = hook_server(refuse_bad).await;
    let (_server, client) = cluster(Some(hook.addr));
    configure(
        &client,
        vec![webhook("cm.example.com", &hook.ca_pem, json!({}))],
    )
    .await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());

    let e = api
        .create(&PostParams::default(), &cm("no", &[("bad", "1")]))
        .await
        .unwrap_err();
    assert_eq!(
        status(e),
        (
            400,
            "BadRequest".into(),
            "admission webhook \"cm.example.com\" denied the request: bad data".into()
        )
    );
    assert!(!exists(&api, "no").await);

    api.create(&PostParams::default(), &cm("yes", &[("good", "1")]))
        .await
        .unwrap();
    assert!(exists(&api, "yes").await);

    let seen = hook.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].path, "/validate?timeout=10s");
    let r = &seen[1].request;
    assert_eq!(r["operation"], "CREATE");
    assert_eq!(r["namespace"], "default");
    assert_eq!(r["name"], "yes");
    assert_eq!(
        r["kind"],
        json!({"group": "", "version": "v1", "kind": "ConfigMap"})
    );
    assert_eq!(
        r["resource"],
        json!({"group": "", "version": "v1", "resource": "configmaps"})
    );
    assert_eq!(r["userInfo"]["username"], "system:admin");
    assert_eq!(r["dryRun"], false);
    assert_eq!(r["object"]["data"]["good"], "1");
    assert_eq!(r["oldObject"], Value::Null);
    assert_ne!(seen[0].request["uid"], seen[1].request["uid"]);
}

#[tokio::test]
async fn an_update_shows_the_old_object_and_a_refused_one_changes_nothing() {
    let hook = hook_server(refuse_bad).await;
    let (_server, client) = cluster(Some(hook.addr));
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &cm("c", &[("v", "1")]))
        .await
        .unwrap();
    configure(
        &client,
        vec![webhook("cm.example.com", &hook.ca_pem, json!({}))],
    )
    .await;

    let mut c = api.get("c").await.unwrap();
    c.data = Some(BTreeMap::from([("v".to_string(), "2".to_string())]));
    api.replace("c", &PostParams::default(), &c).await.unwrap();
    let r = hook.seen()[0].request.clone();
    assert_eq!(r["operation"], "UPDATE");
    assert_eq!(r["oldObject"]["data"]["v"], "1");
    assert_eq!(r["object"]["data"]["v"], "2");
    assert_eq!(r["options"]["kind"], "UpdateOptions");

    let mut c = api.get("c").await.unwrap();
    c.data = Some(BTreeMap::from([("bad".to_string(), "x".to_string())]));
    let (code, _, _) = status(
        api.replace("c", &PostParams::default(), &c)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400);
    let stored = api.get("c").await.unwrap();
    assert_eq!(stored.data.unwrap()["v"], "2");
}

#[tokio::test]
async fn a_refused_delete_leaves_the_object() {
    let hook = hook_server(|req| {
        if req["operation"] == "DELETE" && req["name"] == "keep" {
            Answer::DenyWithoutStatus
        } else {
            Answer::Allow
        }
    })
    .await;
    let (_server, client) = cluster(Some(hook.addr));
    configure(
        &client,
        vec![webhook("cm.example.com", &hook.ca_pem, json!({}))],
    )
    .await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    for n in ["keep", "drop"] {
        api.create(&PostParams::default(), &cm(n, &[]))
            .await
            .unwrap();
    }
    let e = api
        .delete("keep", &DeleteParams::default())
        .await
        .unwrap_err();
    assert_eq!(
        status(e),
        (
            403,
            "Forbidden".into(),
            "admission webhook \"cm.example.com\" denied the request without explanation".into()
        )
    );
    assert!(exists(&api, "keep").await);
    api.delete("drop", &DeleteParams::default()).await.unwrap();
    assert!(!exists(&api, "drop").await);
    let deletes: Vec<Seen> = hook
        .seen()
        .into_iter()
        .filter(|s| s.request["operation"] == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 2);
    assert_eq!(deletes[1].request["oldObject"]["metadata"]["name"], "drop");
    assert_eq!(deletes[1].request["object"], Value::Null);
}

#[tokio::test]
async fn a_namespace_selector_excludes_a_namespace() {
    let hook = hook_server(refuse_bad).await;
    let (_server, client) = cluster(Some(hook.addr));
    let nss: Api<Namespace> = Api::all(client.clone());
    for (name, labels) in [
        ("skipped", json!({"webhooks": "off"})),
        ("checked", json!({})),
    ] {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
        nss.create(&PostParams::default(), &ns).await.unwrap();
    }
    configure(
        &client,
        vec![webhook(
            "cm.example.com",
            &hook.ca_pem,
            json!({"namespaceSelector": {"matchExpressions": [{"key": "webhooks", "operator": "NotIn", "values": ["off"]}]}}),
        )],
    )
    .await;
    let skipped: Api<ConfigMap> = Api::namespaced(client.clone(), "skipped");
    skipped
        .create(&PostParams::default(), &cm("c", &[("bad", "1")]))
        .await
        .unwrap();
    assert_eq!(hook.calls(), 0);
    let checked: Api<ConfigMap> = Api::namespaced(client.clone(), "checked");
    let (code, _, _) = status(
        checked
            .create(&PostParams::default(), &cm("c", &[("bad", "1")]))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400);
    assert_eq!(hook.calls(), 1);
}

#[tokio::test]
async fn an_object_selector_picks_the_objects() {
    let hook = hook_server(refuse_bad).await;
    let (_server, client) = cluster(Some(hook.addr));
    configure(
        &client,
        vec![webhook(
            "cm.example.com",
            &hook.ca_pem,
            json!({"objectSelector": {"matchLabels": {"checked": "yes"}}}),
        )],
    )
    .await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &cm("plain", &[("bad", "1")]))
        .await
        .unwrap();
    assert_eq!(hook.calls(), 0);
    let mut labelled = cm("labelled", &[("bad", "1")]);
    labelled.metadata.labels = Some(BTreeMap::from([("checked".into(), "yes".into())]));
    assert_eq!(
        status(
            api.create(&PostParams::default(), &labelled)
                .await
                .unwrap_err()
        )
        .0,
        400
    );
    assert_eq!(hook.calls(), 1);
    assert!(!exists(&api, "labelled").await);
}

/// An address where nothing listens.
async fn dead_address() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn failure_policy_fail_refuses_when_the_webhook_is_down() {
    let ca = certs(&["hook.default.svc"]).ca_pem;
    let (_server, client) = cluster(Some(dead_address().await));
    configure(&client, vec![webhook("cm.example.com", &ca, json!({}))]).await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let (code, reason, message) = status(
        api.create(&PostParams::default(), &cm("c", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (500, "InternalError"));
    assert!(
        message.starts_with(
            "Internal error occurred: failed calling webhook \"cm.example.com\": failed to call webhook: Post \"https://hook.default.svc:443/validate?timeout=10s\": dial tcp"
        ),
        "{message}"
    );
    assert!(!exists(&api, "c").await);

    // Without a resolver the Service has no endpoint.
    let (_server, client) = cluster(None);
    configure(&client, vec![webhook("cm.example.com", &ca, json!({}))]).await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let (code, _, message) = status(
        api.create(&PostParams::default(), &cm("c", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 500);
    assert!(
        message.ends_with("failed to call webhook: service default/hook:443 has no endpoint"),
        "{message}"
    );
}

#[tokio::test]
async fn failure_policy_ignore_stores_when_the_webhook_is_down() {
    let ca = certs(&["hook.default.svc"]).ca_pem;
    let (_server, client) = cluster(Some(dead_address().await));
    configure(
        &client,
        vec![webhook(
            "cm.example.com",
            &ca,
            json!({"failurePolicy": "Ignore"}),
        )],
    )
    .await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &cm("c", &[]))
        .await
        .unwrap();
    assert!(exists(&api, "c").await);
}

#[tokio::test]
async fn a_wrong_ca_bundle_is_a_tls_failure() {
    let hook = hook_server(|_| Answer::Allow).await;
    let other_ca = certs(&["hook.default.svc"]).ca_pem;
    let (_server, client) = cluster(Some(hook.addr));
    configure(
        &client,
        vec![webhook("cm.example.com", &other_ca, json!({}))],
    )
    .await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let (code, _, message) = status(
        api.create(&PostParams::default(), &cm("c", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 500);
    assert!(
        message.contains("tls: invalid peer certificate"),
        "{message}"
    );
    assert!(!exists(&api, "c").await);
    assert_eq!(hook.calls(), 0);
}

#[tokio::test]
async fn a_url_webhook_is_dialed_directly() {
    let hook = hook_server(refuse_bad).await;
    // No resolver: a url needs none. The certificate names 127.0.0.1 too.
    let (_server, client) = cluster(None);
    let url = format!("https://{}/validate", hook.addr);
    configure(
        &client,
        vec![webhook(
            "cm.example.com",
            &hook.ca_pem,
            json!({"clientConfig": {"url": url, "caBundle": base64_of(&hook.ca_pem)}}),
        )],
    )
    .await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let (code, _, _) = status(
        api.create(&PostParams::default(), &cm("c", &[("bad", "1")]))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400);
    api.create(&PostParams::default(), &cm("c", &[]))
        .await
        .unwrap();
    assert_eq!(hook.calls(), 2);
    assert_eq!(hook.seen()[0].path, "/validate?timeout=10s");
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn timeout_seconds_is_honoured() {
    let hook = hook_server(|_| Answer::Hang).await;
    let (_server, client) = cluster(Some(hook.addr));
    configure(
        &client,
        vec![
            webhook(
                "ignored.example.com",
                &hook.ca_pem,
                json!({"failurePolicy": "Ignore", "timeoutSeconds": 1}),
            ),
            webhook(
                "failing.example.com",
                &hook.ca_pem,
                json!({"timeoutSeconds": 1, "objectSelector": {"matchLabels": {"strict": "yes"}}}),
            ),
        ],
    )
    .await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let start = Instant::now();
    api.create(&PostParams::default(), &cm("c", &[]))
        .await
        .unwrap();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert!(exists(&api, "c").await);
    assert_eq!(hook.calls(), 1);

    let mut strict = cm("s", &[]);
    strict.metadata.labels = Some(BTreeMap::from([("strict".into(), "yes".into())]));
    let (code, _, message) = status(
        api.create(&PostParams::default(), &strict)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 500);
    assert!(
        message
            .starts_with("Internal error occurred: failed calling webhook \"failing.example.com\""),
        "{message}"
    );
    assert!(message.ends_with("context deadline exceeded"), "{message}");
    assert!(!exists(&api, "s").await);
}

#[tokio::test]
async fn other_resources_never_reach_the_webhook() {
    let hook = hook_server(refuse_bad).await;
    let (server, client) = cluster(Some(hook.addr));
    configure(
        &client,
        vec![webhook("cm.example.com", &hook.ca_pem, json!({}))],
    )
    .await;
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let s: Secret =
        serde_json::from_value(json!({"metadata": {"name": "s"}, "stringData": {"bad": "1"}}))
            .unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();
    secrets
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    secrets.delete("s", &DeleteParams::default()).await.unwrap();
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "other"}})).unwrap();
    nss.create(&PostParams::default(), &ns).await.unwrap();
    // The configuration itself is never sent either.
    let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    vwcs.patch(
        "test-webhooks",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
    )
    .await
    .unwrap();
    assert_eq!(hook.calls(), 0);
    assert_eq!(server.stats()["secrets"].writes, 3);
}

#[tokio::test]
async fn a_merge_patch_is_validated_on_the_patched_object() {
    let hook = hook_server(refuse_bad).await;
    let (_server, client) = cluster(Some(hook.addr));
    configure(
        &client,
        vec![webhook("cm.example.com", &hook.ca_pem, json!({}))],
    )
    .await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &cm("c", &[("a", "1")]))
        .await
        .unwrap();
    let e = api
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"bad": "1"}})),
        )
        .await
        .unwrap_err();
    assert_eq!(status(e).0, 400);
    assert_eq!(api.get("c").await.unwrap().data.unwrap().len(), 1);
    api.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"b": "2"}})),
    )
    .await
    .unwrap();
    let last = hook.seen().last().unwrap().request.clone();
    assert_eq!(last["operation"], "UPDATE");
    assert_eq!(last["object"]["data"], json!({"a": "1", "b": "2"}));
    assert_eq!(last["oldObject"]["data"], json!({"a": "1"}));
}

#[tokio::test]
async fn a_generate_name_create_stores_the_name_the_webhook_saw() {
    let hook = hook_server(|_| Answer::Allow).await;
    let (_server, client) = cluster(Some(hook.addr));
    configure(
        &client,
        vec![webhook("cm.example.com", &hook.ca_pem, json!({}))],
    )
    .await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let mut c = cm("", &[]);
    c.metadata.name = None;
    c.metadata.generate_name = Some("gen-".into());
    let created = api.create(&PostParams::default(), &c).await.unwrap();
    let name = created.metadata.name.unwrap();
    assert!(name.starts_with("gen-"));
    let seen = hook.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].request["name"], json!(name));
    assert_eq!(
        seen[0].request["object"]["metadata"]["uid"],
        json!(created.metadata.uid.unwrap())
    );
}

#[tokio::test]
async fn a_dry_run_is_sent_as_one_and_stores_nothing() {
    let hook = hook_server(|_| Answer::Allow).await;
    let (_server, client) = cluster(Some(hook.addr));
    configure(
        &client,
        vec![webhook("cm.example.com", &hook.ca_pem, json!({}))],
    )
    .await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    api.create(&pp, &cm("c", &[])).await.unwrap();
    assert!(!exists(&api, "c").await);
    assert_eq!(hook.seen()[0].request["dryRun"], true);
}

#[tokio::test]
async fn a_change_while_the_webhook_runs_starts_the_request_again() {
    let server_slot: Arc<Mutex<Option<ApiServer>>> = Arc::default();
    let slot = server_slot.clone();
    let hook = hook_server(move |req| {
        // On the first UPDATE, someone else changes the object meanwhile.
        if req["operation"] == "UPDATE" && req["object"]["data"]["v"] == "mine" {
            if let Some(server) = slot.lock().unwrap().take() {
                let mut store = server.store();
                let res = store
                    .registry()
                    .get("", "v1", "configmaps")
                    .cloned()
                    .unwrap();
                let mut cur = store.get(&res, Some("default"), "c").unwrap();
                cur["data"]["other"] = json!("x");
                store
                    .update(&res, Some("default"), "c", cur, None, false)
                    .unwrap();
            }
        }
        Answer::Allow
    })
    .await;
    let (server, client) = cluster(Some(hook.addr));
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &cm("c", &[("v", "1")]))
        .await
        .unwrap();
    configure(
        &client,
        vec![webhook("cm.example.com", &hook.ca_pem, json!({}))],
    )
    .await;
    *server_slot.lock().unwrap() = Some(server.clone());
    api.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "mine"}})),
    )
    .await
    .unwrap();
    let seen = hook.seen();
    assert_eq!(
        seen.len(),
        2,
        "the webhook is asked again about the new state"
    );
    assert_eq!(seen[1].request["oldObject"]["data"]["other"], "x");
    let data = api.get("c").await.unwrap().data.unwrap();
    assert_eq!((data["v"].as_str(), data["other"].as_str()), ("mine", "x"));
}

#[tokio::test]
async fn in_process_admission_still_works_alongside() {
    let hook = hook_server(refuse_bad).await;
    let (server, client) = cluster(Some(hook.addr));
    server.store().admission_mut().add_validator(
        "local.example.com",
        "",
        "configmaps",
        Box::new(|_, obj, _| {
            if obj.and_then(|o| o.pointer("/data/local")).is_some() {
                Err(Denial::new("refused locally"))
            } else {
                Ok(())
            }
        }),
    );
    configure(
        &client,
        vec![webhook("cm.example.com", &hook.ca_pem, json!({}))],
    )
    .await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let (code, _, message) = status(
        api.create(&PostParams::default(), &cm("l", &[("local", "1")]))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400);
    assert_eq!(
        message,
        "admission webhook \"local.example.com\" denied the request: refused locally"
    );
    assert_eq!(
        hook.calls(),
        0,
        "a request refused in process never reaches the webhook"
    );
    let (_, _, message) = status(
        api.create(&PostParams::default(), &cm("w", &[("bad", "1")]))
            .await
            .unwrap_err(),
    );
    assert!(message.contains("cm.example.com"), "{message}");
    api.create(&PostParams::default(), &cm("ok", &[]))
        .await
        .unwrap();
    assert!(exists(&api, "ok").await);
}

#[tokio::test]
async fn a_cascading_delete_shows_the_dependents_to_the_webhook() {
    let hook = hook_server(|req| {
        if req["operation"] == "DELETE" && req["name"] == "child" {
            Answer::Deny(403, "the child stays")
        } else {
            Answer::Allow
        }
    })
    .await;
    let (_server, client) = cluster(Some(hook.addr));
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let owner = secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap(),
        )
        .await
        .unwrap();
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let mut child = cm("child", &[]);
    child.metadata.owner_references = Some(vec![serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "name": "owner", "uid": owner.metadata.uid.unwrap()
    }))
    .unwrap()]);
    api.create(&PostParams::default(), &child).await.unwrap();
    configure(
        &client,
        vec![webhook("cm.example.com", &hook.ca_pem, json!({}))],
    )
    .await;
    let (code, _, message) = status(
        secrets
            .delete("owner", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403);
    assert!(
        message.ends_with("denied the request: the child stays"),
        "{message}"
    );
    assert!(secrets.get_opt("owner").await.unwrap().is_some());
    assert!(exists(&api, "child").await);
}

#[tokio::test]
async fn a_namespace_delete_shows_its_contents_to_the_webhook() {
    let hook = hook_server(|req| {
        if req["operation"] == "DELETE" && req["name"] == "keep" {
            Answer::Deny(403, "keep stays")
        } else {
            Answer::Allow
        }
    })
    .await;
    let (_server, client) = cluster(Some(hook.addr));
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap();
    nss.create(&PostParams::default(), &ns).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    api.create(&PostParams::default(), &cm("keep", &[]))
        .await
        .unwrap();
    configure(
        &client,
        vec![webhook("cm.example.com", &hook.ca_pem, json!({}))],
    )
    .await;
    let (code, _, _) = status(
        nss.delete("team", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403);
    let team = nss.get("team").await.unwrap();
    assert!(team.metadata.deletion_timestamp.is_none());
    assert!(exists(&api, "keep").await);
    assert_eq!(hook.calls(), 1);
}

#[tokio::test]
async fn the_status_subresource_is_sent_only_when_a_rule_names_it() {
    use k8s_openapi::api::core::v1::Pod;
    let hook = hook_server(|_| Answer::Allow).await;
    let (_server, client) = cluster(Some(hook.addr));
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let rule = |resources: Value| json!({"rules": [{"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": resources}]});
    configure(
        &client,
        vec![
            webhook("pods.example.com", &hook.ca_pem, rule(json!(["pods"]))),
            webhook(
                "status.example.com",
                &hook.ca_pem,
                rule(json!(["pods/status"])),
            ),
        ],
    )
    .await;
    pods.patch_status(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();
    let seen = hook.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].request["subResource"], "status");
    assert_eq!(seen[0].request["object"]["status"]["phase"], "Running");
    pods.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
    )
    .await
    .unwrap();
    let seen = hook.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].request.get("subResource"), None);
}
