"""deploy/: the KubeRay recipe is valid against the schemas, and consistent with Tidal's CLI.

- Core Kubernetes objects (Secret, Deployment, Service) and every pod template inside the
  RayCluster are validated against the Kubernetes OpenAPI schemas that `kubernetes-validate`
  ships (strict: unknown fields are errors).
- The RayCluster's own fields are checked against the subset of KubeRay's ``ray.io/v1`` CRD
  that the recipe uses, written from the KubeRay API reference
  (https://docs.ray.io/en/master/cluster/kubernetes/references/api.html); the CRD itself is
  not on this machine, and no cluster is available to apply it to (docs/deploy.md).
- Cross-checks: the gateway's command uses options `tidal serve` has, it plans for the worker
  group's maxReplicas nodes, the head hosts no replica, and the Dockerfile's commands exist.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tidal.core.shared import repo_root

DEPLOY = repo_root() / "deploy"
K8S_VERSION = "1.33.0"

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_TEMPLATE = {"type": "object"}  # validated separately as a core PodTemplateSpec
_GROUP = {
    "type": "object",
    "additionalProperties": False,
    "required": ["groupName", "rayStartParams", "template"],
    "properties": {
        "groupName": {"type": "string"},
        "replicas": {"type": "integer", "minimum": 0},
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 0},
        "rayStartParams": _STR_MAP,
        "template": _TEMPLATE,
    },
}
RAYCLUSTER_SUBSET: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayCluster"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["headGroupSpec"],
            "properties": {
                "rayVersion": {"type": "string"},
                "enableInTreeAutoscaling": {"type": "boolean"},
                "autoscalerOptions": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                        "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
                        "imagePullPolicy": {"type": "string"},
                        "resources": {"type": "object"},
                        "env": {"type": "array"},
                    },
                },
                "headGroupSpec": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["rayStartParams", "template"],
                    "properties": {
                        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                        "rayStartParams": _STR_MAP,
                        "template": _TEMPLATE,
                    },
                },
                "workerGroupSpecs": {"type": "array", "items": _GROUP},
            },
        },
    },
}


def docs() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in sorted((DEPLOY / "kuberay").glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in docs() if d["kind"] == kind]


@pytest.mark.parametrize("kind", ["Secret", "Deployment", "Service"])
def test_core_objects_validate_strictly(kind: str) -> None:
    objs = by_kind(kind)
    assert objs, f"no {kind} in deploy/kuberay"
    for obj in objs:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_raycluster_fields_and_pod_templates() -> None:
    (rc,) = by_kind("RayCluster")
    jsonschema.validate(rc, RAYCLUSTER_SUBSET)
    spec = rc["spec"]
    templates = [spec["headGroupSpec"]["template"]] + [
        g["template"] for g in spec["workerGroupSpecs"]
    ]
    for i, tpl in enumerate(templates):
        pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"t{i}"}}
        kubernetes_validate.validate({**pod, "template": tpl}, K8S_VERSION, strict=True)
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # head hosts nothing
    for g in spec["workerGroupSpecs"]:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]


def test_bad_manifest_is_caught() -> None:
    (dep,) = by_kind("Deployment")
    broken = {**dep, "spec": {**dep["spec"], "replicas": "one"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    (rc,) = by_kind("RayCluster")
    bad = {**rc, "spec": {**rc["spec"], "workerGroupSpecs": [{"groupName": "x"}]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, RAYCLUSTER_SUBSET)


def _serve_help() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "tidal.cli.main", "serve", "--help"],
        capture_output=True,
        text=True,
        env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return out.stdout


def test_gateway_command_matches_the_cli_and_the_worker_group() -> None:
    (dep,) = by_kind("Deployment")
    (rc,) = by_kind("RayCluster")
    cmd = dep["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:2] == ["tidal", "serve"]
    helptext = _serve_help()
    for flag in (a for a in cmd if a.startswith("--")):
        assert flag in helptext, f"`tidal serve` has no option {flag}"
    max_nodes = int(cmd[cmd.index("--ray-max-nodes") + 1])
    assert max_nodes == sum(g["maxReplicas"] for g in rc["spec"]["workerGroupSpecs"])
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    env = {e["name"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "TIDAL_TOKEN" in env  # a non-loopback bind needs the admin token


def test_dockerfile_commands_exist() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    m = re.search(r"tidal models export (\S+)", text)
    assert m is not None
    out = subprocess.run(
        [sys.executable, "-m", "tidal.cli.main", "models", "export", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    (rc,) = by_kind("RayCluster")
    assert f"RAY_VERSION={rc['spec']['rayVersion']}" in text  # one Ray version everywhere


def test_manifests_name_no_real_secret() -> None:
    for s in by_kind("Secret"):
        for v in s.get("stringData", {}).values():
            assert str(v).startswith("REPLACE-"), "a real secret must never be committed"
