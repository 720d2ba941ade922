//! The admission webhook against the embedded API server: certificate
//! bootstrap (Secret, caBundle, reuse, renewal, concurrent replicas,
//! cert-manager mode) and AdmissionReviews over HTTPS.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, CustomResourceExt};
use serde_json::{json, Value};
use spur_controller::webhook::{
    bootstrap_certificates, check_certificates, generate_certificates, serve, Certificates,
    Webhook, WebhookConfig, IPPOOL_PATH, NAD_PATH, RENEW_BEFORE, VALIDITY,
};
use spur_core::ipamblock::IPAMBlock;
use spur_core::ippool::{IPPool, IPPoolSpec, IpRange, SubnetInfo};
use spur_kubeapi::ApiServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config() -> WebhookConfig {
    WebhookConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        namespace: "kube-system".into(),
        secret: "spur-webhook-tls".into(),
        service: "spur-webhook".into(),
        configuration: "spur-webhook".into(),
        cert_dir: None,
    }
}

/// A server with Spur's CRDs and the webhook configuration of
/// deploy/controller.yaml (no caBundle yet).
async fn cluster() -> (ApiServer, Client) {
    let server = ApiServer::in_memory();
    let client = Client::new(server.service(), "default");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [IPPool::crd(), IPAMBlock::crd()] {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let hook = |name: &str, path: &str| {
        json!({"name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
               "clientConfig": {"service": {"name": "spur-webhook", "namespace": "kube-system",
                                            "path": path, "port": 443}}})
    };
    let vwc: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "spur-webhook"},
        "webhooks": [hook("ippools.spur.dev", IPPOOL_PATH),
                     hook("network-attachment-definitions.spur.dev", NAD_PATH)]
    }))
    .unwrap();
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &vwc)
        .await
        .unwrap();
    (server, client)
}

async fn secret(client: &Client) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), "kube-system")
        .get_opt("spur-webhook-tls")
        .await
        .unwrap()
}

async fn webhook_config(client: &Client) -> ValidatingWebhookConfiguration {
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get("spur-webhook")
        .await
        .unwrap()
}

fn ca_bundles(vwc: &ValidatingWebhookConfiguration) -> Vec<Option<Vec<u8>>> {
    vwc.webhooks
        .iter()
        .flatten()
        .map(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.clone()))
        .collect()
}

fn data(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

/// Binds, runs until the returned sender fires, and sets the caBundle.
async fn start(
    cfg: &WebhookConfig,
    client: &Client,
) -> (
    std::net::SocketAddr,
    Certificates,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    start_with(cfg, client, None).await
}

async fn start_with(
    cfg: &WebhookConfig,
    client: &Client,
    decisions: Option<spur_controller::webhook::DecisionSink>,
) -> (
    std::net::SocketAddr,
    Certificates,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let mut webhook = Webhook::bind(cfg, client.clone()).await.unwrap();
    if let Some(sink) = decisions {
        webhook = webhook.with_decisions(sink);
    }
    let addr = webhook.local_addr().unwrap();
    let certs = webhook.certificates().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = cfg.clone();
    let task = tokio::spawn(async move {
        webhook
            .run(&cfg, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (addr, certs, tx, task)
}

/// Polls `cond` every 20 ms until it holds or 10 s pass.
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_creates_the_secret_and_the_ca_bundle_then_reuses_them() {
    let (_server, client) = cluster().await;
    let cfg = config();
    let (_addr, certs, stop, task) = start(&cfg, &client).await;
    let stored = secret(&client).await.expect("Secret created");
    assert_eq!(stored.type_.as_deref(), Some("kubernetes.io/tls"));
    let ca = certs.ca_pem.clone().unwrap();
    assert_eq!(data(&stored, "ca.crt"), ca);
    assert_eq!(data(&stored, "tls.crt"), certs.cert_pem);
    assert_eq!(data(&stored, "tls.key"), certs.key_pem);
    assert_eq!(
        check_certificates(&certs, &cfg.dns_names(), SystemTime::now() + RENEW_BEFORE),
        Ok(())
    );
    let want = vec![Some(ca.clone().into_bytes()); 2];
    eventually("caBundle set", || async {
        ca_bundles(&webhook_config(&client).await) == want
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();

    // A second start (a restart, the other replica) reuses both.
    let secret_rv = stored.metadata.resource_version.clone();
    let vwc_rv = webhook_config(&client).await.metadata.resource_version;
    let (_addr, again, stop, task) = start(&cfg, &client).await;
    assert_eq!(again, certs);
    stop.send(()).unwrap();
    task.await.unwrap();
    assert_eq!(
        secret(&client).await.unwrap().metadata.resource_version,
        secret_rv
    );
    let vwc = webhook_config(&client).await;
    assert_eq!(
        vwc.metadata.resource_version, vwc_rv,
        "caBundle not rewritten"
    );
    assert_eq!(ca_bundles(&vwc), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_near_expiry_or_for_other_names_is_replaced() {
    let (_server, client) = cluster().await;
    let cfg = config();
    let names = cfg.dns_names();
    // Expires in 10 days: inside the 30-day margin.
    let old_start = SystemTime::now() - VALIDITY + Duration::from_secs(10 * 24 * 3600);
    let old = generate_certificates(&names, old_start).unwrap();
    assert_eq!(check_certificates(&old, &names, SystemTime::now()), Ok(()));
    let secrets = Api::<Secret>::namespaced(client.clone(), "kube-system");
    let mut s = Secret::default();
    s.metadata.name = Some("spur-webhook-tls".into());
    s.metadata.labels = Some([("keep".to_string(), "me".to_string())].into());
    s.data = Some(
        [
            ("ca.crt", old.ca_pem.clone().unwrap()),
            ("tls.crt", old.cert_pem.clone()),
            ("tls.key", old.key_pem.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.into_bytes())))
        .collect(),
    );
    secrets.create(&PostParams::default(), &s).await.unwrap();

    let renewed = bootstrap_certificates(&cfg, &client).await.unwrap();
    assert_ne!(renewed, old);
    assert_eq!(
        check_certificates(&renewed, &names, SystemTime::now() + RENEW_BEFORE),
        Ok(())
    );
    let stored = secret(&client).await.unwrap();
    assert_eq!(data(&stored, "tls.crt"), renewed.cert_pem);
    assert_eq!(
        stored
            .metadata
            .labels
            .unwrap()
            .get("keep")
            .map(String::as_str),
        Some("me"),
        "the Secret is updated, not recreated"
    );

    // A certificate for another Service name is replaced too.
    let other = WebhookConfig {
        service: "renamed".into(),
        ..cfg.clone()
    };
    let for_other = bootstrap_certificates(&other, &client).await.unwrap();
    assert_ne!(for_other, renewed);
    assert_eq!(
        check_certificates(&for_other, &other.dns_names(), SystemTime::now()),
        Ok(())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bootstraps_converge_on_one_secret() {
    for _ in 0..5 {
        let (_server, client) = cluster().await;
        let cfg = config();
        let (a, b, c) = tokio::join!(
            bootstrap_certificates(&cfg, &client),
            bootstrap_certificates(&cfg, &client),
            bootstrap_certificates(&cfg, &client),
        );
        let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
        assert_eq!(a, b);
        assert_eq!(b, c);
        let stored = secret(&client).await.unwrap();
        assert_eq!(data(&stored, "tls.crt"), a.cert_pem);

        // Renewals of an expiring certificate race too (updates with the
        // resourceVersion read).
        let expiring = generate_certificates(
            &cfg.dns_names(),
            SystemTime::now() - VALIDITY + Duration::from_secs(24 * 3600),
        )
        .unwrap();
        let mut s = stored;
        for (k, v) in [
            ("ca.crt", expiring.ca_pem.clone().unwrap()),
            ("tls.crt", expiring.cert_pem.clone()),
            ("tls.key", expiring.key_pem.clone()),
        ] {
            s.data
                .as_mut()
                .unwrap()
                .insert(k.to_string(), k8s_openapi::ByteString(v.into_bytes()));
        }
        Api::<Secret>::namespaced(client.clone(), "kube-system")
            .replace("spur-webhook-tls", &PostParams::default(), &s)
            .await
            .unwrap();
        let (d, e) = tokio::join!(
            bootstrap_certificates(&cfg, &client),
            bootstrap_certificates(&cfg, &client),
        );
        let (d, e) = (d.unwrap(), e.unwrap());
        assert_eq!(d, e);
        assert_ne!(d, expiring);
        assert_ne!(d, a);
        let stored = secret(&client).await.unwrap();
        assert_eq!(data(&stored, "tls.crt"), d.cert_pem);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_manager_mode_uses_the_directory_and_leaves_the_api_alone() {
    let (_server, client) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    let certs = generate_certificates(&cfg.dns_names(), SystemTime::now()).unwrap();
    std::fs::write(dir.path().join("tls.crt"), &certs.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &certs.key_pem).unwrap();
    cfg.cert_dir = Some(dir.path().to_path_buf());
    let (addr, served, stop, task) = start(&cfg, &client).await;
    assert_eq!(served.cert_pem, certs.cert_pem);
    let (status, _) = post(addr, certs.ca_pem.as_deref().unwrap(), "/nowhere", "{}").await;
    assert_eq!(status, 404);
    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(secret(&client).await.is_none());
    assert_eq!(ca_bundles(&webhook_config(&client).await), vec![None, None]);

    cfg.cert_dir = Some(dir.path().join("missing"));
    let e = Webhook::bind(&cfg, client.clone()).await.unwrap_err();
    assert!(e.to_string().contains("missing/tls.crt"), "{e}");
}

/// POSTs `body` over HTTPS (SNI and verification for the Service's name,
/// trusting `ca_pem`); the status and the body.
async fn post(addr: std::net::SocketAddr, ca_pem: &str, path: &str, body: &str) -> (u16, String) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("spur-webhook.kube-system.svc").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: spur-webhook.kube-system.svc\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    let mut raw = Vec::new();
    // The server closes after the answer; a missing close_notify is fine.
    if let Err(e) = stream.read_to_end(&mut raw).await {
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    }
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

fn pool(name: &str, cidr: &str) -> IPPool {
    IPPool::new(
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
    )
}

fn review(uid: &str, operation: &str, object: Value) -> String {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "spur.dev", "version": "v1beta1", "kind": "IPPool"},
            "resource": {"group": "spur.dev", "version": "v1beta1", "resource": "ippools"},
            "operation": operation,
            "name": object["metadata"]["name"],
            "object": object,
        }
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_over_https() {
    let (_server, client) = cluster().await;
    Api::<IPPool>::all(client.clone())
        .create(
            &PostParams::default(),
            &pool("vlan100-ipv4", "10.10.1.0/26"),
        )
        .await
        .unwrap();
    let seen: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
    let record = seen.clone();
    let sink: spur_controller::webhook::DecisionSink = Arc::new(move |r: &str, d: &str| {
        record.lock().unwrap().push((r.to_string(), d.to_string()));
    });
    let (addr, certs, stop, task) = start_with(&config(), &client, Some(sink)).await;
    let ca = certs.ca_pem.clone().unwrap();

    let overlapping = serde_json::to_value(pool("overlapping-pool", "10.10.1.32/27")).unwrap();
    let (status, body) = post(
        addr,
        &ca,
        IPPOOL_PATH,
        &review("u-1", "CREATE", overlapping),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer,
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
               "response": {"uid": "u-1", "allowed": false, "status": {"code": 400, "message":
               "IPPool overlapping-pool: spec.ipRanges[0].cidr = \"10.10.1.32/27\": overlaps \
                10.10.1.0/26 (spec.ipRanges[0].cidr) of IPPool vlan100-ipv4"}}})
    );

    let next_door = serde_json::to_value(pool("next-door", "10.10.1.64/26")).unwrap();
    let (status, body) = post(addr, &ca, IPPOOL_PATH, &review("u-2", "CREATE", next_door)).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"], json!({"uid": "u-2", "allowed": true}));

    let config =
        json!({"cniVersion": "1.0.0", "type": "spur", "networkType": "vlan", "vlan": 5000});
    let nad = json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "net", "namespace": "default"}, "spec": {"config": config.to_string()}});
    let (status, body) = post(addr, &ca, NAD_PATH, &review("u-3", "CREATE", nad)).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], json!(false));
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("spec.config.vlan = 5000"), "{message}");

    let (status, body) = post(addr, &ca, IPPOOL_PATH, "{\"kind\": ").await;
    assert_eq!(status, 400);
    assert!(body.contains("AdmissionReview: body"), "{body}");
    let (status, _) = post(addr, &ca, "/validate/pods", "{}").await;
    assert_eq!(status, 404);
    // Every decision was reported, malformed and unknown requests none.
    let pair = |r: &str, d: &str| (r.to_string(), d.to_string());
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            pair("ippools", "denied"),
            pair("ippools", "allowed"),
            pair("network-attachment-definitions", "denied"),
        ]
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("run returns after shutdown")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_returns_when_shutdown_completes() {
    let (_server, client) = cluster().await;
    serve(config(), client.clone(), async {}).await.unwrap();
    assert!(secret(&client).await.is_some());
}
