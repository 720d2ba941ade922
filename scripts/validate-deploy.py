#!/usr/bin/env python3
"""Validates Spur's deployment manifests (`make validate-deploy`).

What it checks:
- everything `kubectl kustomize deploy/` builds, and every YAML file under
  deploy/examples/;
- objects of built-in kinds: with kubernetes-validate (PyPI) in strict mode
  (unknown fields are errors), against every Kubernetes version in VERSIONS;
- objects of the CRDs in deploy/crds/ (IPPool, IPAMBlock,
  NetworkAttachmentDefinition), which kubernetes-validate has no schema for:
  against the CRD's openAPIV3Schema, strictly (fields the schema does not
  name are errors, as the API server's strict field validation makes them),
  their metadata as ObjectMeta, their scope (no namespace on cluster-scoped
  kinds), and a NetworkAttachmentDefinition's spec.config must be JSON;
- an object of a kind neither knows is an error.

What it does not check: Spur's own rules (pool overlaps, NAD config keys,
the ConfigMap's keys): core/tests/deploy_manifests.rs checks those with the
Rust types, and the controller's admission at apply time.

Every failure names the file (for built objects, the kustomization resource
it comes from), the object, the Kubernetes version and the error; the exit
code is 1 when anything failed.
"""

import copy
import glob
import json
import os
import subprocess
import sys

try:
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as e:  # deps.sh installs them
    sys.exit(f"validate-deploy: {e}: run scripts/deps.sh test (it installs kubernetes-validate with pip)")

# The Kubernetes versions Spur supports.
VERSIONS = ["1.30.0", "1.31.0", "1.32.0", "1.33.0"]

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DEPLOY = os.path.join(ROOT, "deploy")


def rel(path):
    return os.path.relpath(path, ROOT)


def load_docs(text, origin):
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise SystemExit(f"validate-deploy: {origin}: not YAML: {e}")


def obj_name(obj):
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    name = meta.get("name", "<no name>")
    return f"{obj.get('kind', '<no kind>')} {ns + '/' if ns else ''}{name}"


def group_of(api_version):
    return api_version.split("/")[0] if "/" in api_version else ""


def strict_schema(schema, root=False):
    """An openAPIV3Schema as a JSON schema the way the API server applies it:
    `nullable` allows null, and an object schema with `properties` allows no
    other field unless it says `additionalProperties` or
    `x-kubernetes-preserve-unknown-fields`. The root also allows apiVersion,
    kind and metadata (metadata is checked apart, as ObjectMeta)."""
    s = copy.deepcopy(schema)

    def walk(node, is_root):
        if not isinstance(node, dict):
            return
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        props = node.get("properties")
        if is_root:
            props = node.setdefault("properties", {})
            for key in ("apiVersion", "kind"):
                props.setdefault(key, {"type": "string"})
            props.setdefault("metadata", {"type": "object"})
        if props is not None:
            for child in props.values():
                walk(child, False)
            if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], False)
        if "items" in node:
            walk(node["items"], False)
        for key in ("allOf", "anyOf", "oneOf"):
            for child in node.get(key, []):
                walk(child, False)

    walk(s, root)
    return s


def load_crds():
    """(group, version, kind) -> (scope, strict JSON schema), from deploy/crds/."""
    crds = {}
    for path in sorted(glob.glob(os.path.join(DEPLOY, "crds", "*.yaml"))):
        with open(path) as f:
            for crd in load_docs(f.read(), rel(path)):
                if crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                for v in spec["versions"]:
                    schema = (v.get("schema") or {}).get("openAPIV3Schema")
                    if schema is None:
                        raise SystemExit(f"validate-deploy: {rel(path)}: version {v['name']} has no openAPIV3Schema")
                    key = (spec["group"], v["name"], spec["names"]["kind"])
                    crds[key] = (spec["scope"], strict_schema(schema, root=True))
    return crds


def check_custom(obj, scope, schema, versions):
    """Errors of one object of a CRD kind."""
    errors = []
    validator = jsonschema.validators.Draft202012Validator(schema)
    for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        errors.append(f"{where}: {e.message}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        errors.append("metadata.name: missing")
    else:
        if scope == "Cluster" and "namespace" in meta:
            errors.append(f"metadata.namespace: {meta['namespace']!r} set on a cluster-scoped kind")
        # ObjectMeta through kubernetes-validate: a ConfigMap carrying it.
        for version in versions:
            probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}
            try:
                kubernetes_validate.validate(probe, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = "/".join(str(p) for p in e.absolute_path) or "(root)"
                errors.append(f"{where} (Kubernetes {version}): {e.message}")
    if obj.get("kind") == "NetworkAttachmentDefinition":
        config = (obj.get("spec") or {}).get("config", "")
        if isinstance(config, str) and config.strip():
            try:
                json.loads(config)
            except json.JSONDecodeError as e:
                errors.append(f"spec.config: not JSON: {e}")
    return errors


def check_builtin(obj, versions):
    errors = []
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = "/".join(str(p) for p in e.absolute_path) or "(root)"
            errors.append(f"{where} (Kubernetes {version}, strict): {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"unknown kind: {e.message}")
            break
    return errors


def check(obj, crds, versions):
    if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
        return ["not a Kubernetes object (apiVersion and kind are required)"]
    api_version = obj["apiVersion"]
    version = api_version.split("/")[-1]
    key = (group_of(api_version), version, obj["kind"])
    if key in crds:
        scope, schema = crds[key]
        return check_custom(obj, scope, schema, versions)
    return check_builtin(obj, versions)


def kustomize_sources():
    """(kind, namespace, name) -> the kustomization resource file it comes from."""
    with open(os.path.join(DEPLOY, "kustomization.yaml")) as f:
        kust = yaml.safe_load(f)
    sources = {}
    for res in kust.get("resources", []):
        path = os.path.join(DEPLOY, res)
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            for obj in load_docs(f.read(), rel(path)):
                meta = obj.get("metadata") or {}
                sources[(obj.get("kind"), meta.get("namespace"), meta.get("name"))] = rel(path)
    return sources


def main():
    versions = VERSIONS
    known = kubernetes_validate.utils.all_versions()
    missing = [v for v in versions if not any(k.startswith(v.rsplit(".", 1)[0]) for k in known)]
    if missing:
        sys.exit(f"validate-deploy: the installed kubernetes-validate has no schemas for {missing} (it has {known})")
    crds = load_crds()
    failures = []
    checked = 0

    build = subprocess.run(["kubectl", "kustomize", DEPLOY], capture_output=True, text=True)
    if build.returncode != 0:
        sys.exit(f"validate-deploy: `kubectl kustomize deploy/` failed:\n{build.stderr}")
    sources = kustomize_sources()
    built = load_docs(build.stdout, "kubectl kustomize deploy/")
    if not built:
        sys.exit("validate-deploy: `kubectl kustomize deploy/` built nothing")
    for obj in built:
        meta = obj.get("metadata") or {}
        src = sources.get((obj.get("kind"), meta.get("namespace"), meta.get("name")), "deploy/kustomization.yaml")
        for err in check(obj, crds, versions):
            failures.append(f"{src} (kubectl kustomize deploy/): {obj_name(obj)}: {err}")
        checked += 1

    examples = sorted(glob.glob(os.path.join(DEPLOY, "examples", "**", "*.yaml"), recursive=True))
    if not examples:
        sys.exit("validate-deploy: no YAML file under deploy/examples/")
    # Opt-in manifests kept out of the base.
    examples.append(os.path.join(DEPLOY, "agent-admission-policy.yaml"))
    for path in examples:
        with open(path) as f:
            docs = load_docs(f.read(), rel(path))
        if not docs:
            failures.append(f"{rel(path)}: no object")
        for obj in docs:
            for err in check(obj, crds, versions):
                failures.append(f"{rel(path)}: {obj_name(obj)}: {err}")
            checked += 1

    if failures:
        for line in failures:
            print(f"validate-deploy: FAIL {line}", file=sys.stderr)
        sys.exit(f"validate-deploy: {len(failures)} error(s) in {checked} objects")
    print(f"validate-deploy: {checked} objects valid (kustomize base and {len(examples)} example files; "
          f"Kubernetes {', '.join(v.rsplit('.', 1)[0] for v in versions)}, strict)")


if __name__ == "__main__":
    main()
