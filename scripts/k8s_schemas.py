"""Lay out offline JSON schemas for kubeconform.

Two sources, both fetched by scripts/install_tools.sh through ordinary package clients:

  core  the Kubernetes schemas inside the kubernetes-validate wheel (PyPI). Its "local"
        sets keep every definition in one _definitions.json and point at it with
        absolute https://kubernetes.io/... ids; kubeconform resolves references relative
        to the schema file, so the ids are dropped and the references made relative.
  crd   a CustomResourceDefinition YAML (from the Go module that owns it): each served
        version's openAPIV3Schema becomes <group>/<kind>_<version>.json, made strict
        (unknown fields rejected) the way kubeconform's own openapi2jsonschema does.

Usage:
  k8s_schemas.py core WHEEL KUBE_VERSION OUT_DIR   -> OUT_DIR/v<KUBE_VERSION>-local-strict/
  k8s_schemas.py crd CRD_YAML... OUT_DIR           -> OUT_DIR/<group>/<kind>_<version>.json
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from typing import Any

DEFINITIONS_REF = "/api/_definitions.json"


def _relative_refs(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _relative_refs(v) for k, v in node.items() if k != "$id"}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith(DEFINITIONS_REF):
            out["$ref"] = "_definitions.json" + ref[len(DEFINITIONS_REF):]
        return out
    if isinstance(node, list):
        return [_relative_refs(v) for v in node]
    return node


def core(wheel: Path, kube_version: str, out_dir: Path) -> int:
    set_name = f"v{kube_version}-local-strict"
    prefix = f"kubernetes_validate/kubernetes-json-schema/{set_name}/"
    target = out_dir / set_name
    target.mkdir(parents=True, exist_ok=True)
    count = 0
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if not name.startswith(prefix) or not name.endswith(".json"):
                continue
            schema = _relative_refs(json.loads(zf.read(name)))
            (target / name[len(prefix):]).write_text(json.dumps(schema))
            count += 1
    if count == 0:
        raise SystemExit(
            f"{wheel.name} has no schema set {set_name}: pick a KUBE_VERSION it ships "
            "(one per minor, x.y.0) in scripts/k8s-tools.env"
        )
    return count


def _strict(node: Any) -> Any:
    """Reject unknown fields wherever the CRD lists the known ones."""
    if isinstance(node, list):
        return [_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    open_ended = out.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in out
    if "properties" in out and not open_ended:
        out["additionalProperties"] = False
    return out


def crd(yaml_files: list[Path], out_dir: Path) -> int:
    import yaml

    count = 0
    for path in yaml_files:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            group, kind = spec["group"], spec["names"]["kind"].lower()
            for version in spec["versions"]:
                schema = version.get("schema", {}).get("openAPIV3Schema")
                if not version.get("served") or schema is None:
                    continue
                target = out_dir / group / f"{kind}_{version['name']}.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(_strict(schema)))
                count += 1
    if count == 0:
        raise SystemExit(f"no served CRD versions with a schema in {[str(p) for p in yaml_files]}")
    return count


def main(argv: list[str]) -> None:
    if len(argv) >= 4 and argv[0] == "core":
        n = core(Path(argv[1]), argv[2], Path(argv[3]))
    elif len(argv) >= 3 and argv[0] == "crd":
        n = crd([Path(p) for p in argv[1:-1]], Path(argv[-1]))
    else:
        raise SystemExit(__doc__)
    print(f"{argv[0]}: wrote {n} schemas")


if __name__ == "__main__":
    main(sys.argv[1:])
