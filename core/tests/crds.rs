//! The committed CRD manifests in `deploy/crds/` are exactly what the Rust
//! types generate: run `make crds` after changing the types.

#[test]
fn committed_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    for (file, yaml) in spur_core::ippool::crd_manifests().unwrap() {
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            committed == yaml,
            "deploy/crds/{file} differs from what the Rust types generate; run `make crds`"
        );
        insta::assert_snapshot!(file, yaml);
    }
}

#[test]
fn ippool_crd_has_the_reference_shape() {
    use kube::CustomResourceExt;
    let crd = spur_core::ippool::IPPool::crd();
    assert_eq!(crd.spec.group, "spur.dev");
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.kind, "IPPool");
    assert_eq!(crd.spec.names.short_names, Some(vec!["ipp".to_string()]));
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1beta1");
    assert!(v.subresources.as_ref().unwrap().status.is_some());
    let cols: Vec<&str> = v
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(cols, ["Total", "Used", "Age"]);
}
