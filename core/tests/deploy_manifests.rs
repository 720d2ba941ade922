//! The hand-written manifests in `deploy/crds/` are well-formed
//! CustomResourceDefinitions.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

#[test]
fn network_attachment_definition_crd_is_well_formed() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/crds/k8s.cni.cncf.io_network-attachment-definitions.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("network-attachment-definitions.k8s.cni.cncf.io")
    );
    assert_eq!(crd.spec.group, "k8s.cni.cncf.io");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "NetworkAttachmentDefinition");
    assert_eq!(
        crd.spec.names.short_names,
        Some(vec!["net-attach-def".into()])
    );
    let v1 = &crd.spec.versions[0];
    assert!(v1.served && v1.storage);
    let schema = v1
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .as_ref()
        .unwrap();
    let config = &schema.properties.as_ref().unwrap()["spec"]
        .properties
        .as_ref()
        .unwrap()["config"];
    assert_eq!(config.type_.as_deref(), Some("string"));
}
