"""The cluster manifests as the tools that read them would: every Ray cluster they start turns on Ray token
auth and keeps its dashboard private, one Ray version runs through pyproject, images and manifests, and the
RayService serves with serve/config.yaml's settings (both validated by Ray Serve's own schema)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema
from vilaray.serve.config import ServeConfig

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
# Where each KubeRay kind keeps the RayCluster spec it creates.
CLUSTER_SPEC = {
    "RayCluster": lambda doc: doc["spec"],
    "RayJob": lambda doc: doc["spec"]["rayClusterSpec"],
    "RayService": lambda doc: doc["spec"]["rayClusterConfig"],
}


def all_docs() -> list[tuple[str, dict]]:
    return [
        (path.name, doc)
        for path in sorted(CLUSTER.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") in CLUSTER_SPEC
    ]


def kuberay_docs() -> list[tuple[str, dict]]:
    """Manifests that define a cluster (a RayJob with `clusterSelector` runs on raycluster.yaml's)."""
    return [(name, doc) for name, doc in all_docs() if "clusterSelector" not in doc["spec"]]


def test_jobs_on_the_long_lived_cluster_name_it_and_run_shipped_files():
    clusters = {doc["metadata"]["name"] for _, doc in kuberay_docs() if doc["kind"] == "RayCluster"}
    selected = [(name, doc) for name, doc in all_docs() if "clusterSelector" in doc["spec"]]
    assert "rayjob-tune.yaml" in {name for name, _ in selected}
    for name, doc in selected:
        assert doc["spec"]["clusterSelector"]["ray.io/cluster"] in clusters, name
        words = doc["spec"]["entrypoint"].replace('"', " ").split()
        for flag in ("--recipe", "--space"):
            if flag in words:
                assert (ROOT / words[words.index(flag) + 1]).is_file(), (name, flag)


def pinned_ray_minor() -> str:
    """The pyproject's Ray pin, e.g. "2.60" from `ray[...]>=2.60,<2.61`."""
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'"ray\[[^\]]*\]>=(\d+\.\d+)', text).group(1)


def containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_manifests_cover_cluster_job_and_service():
    kinds = {doc["kind"] for _, doc in kuberay_docs()}
    assert kinds == {"RayCluster", "RayJob", "RayService"}


@pytest.mark.parametrize("name,doc", kuberay_docs(), ids=lambda x: x if isinstance(x, str) else x["kind"])
def test_kuberay_cluster_has_token_auth_one_ray_version_and_a_private_head(name, doc):
    spec = CLUSTER_SPEC[doc["kind"]](doc)
    # KubeRay makes the token Secret and sets RAY_AUTH_MODE/RAY_AUTH_TOKEN in every container.
    assert spec["authOptions"] == {"mode": "token"}, name
    version = spec["rayVersion"]
    assert version.rsplit(".", 1)[0] == pinned_ray_minor(), (name, version)
    for c in containers(spec):
        tag = c["image"].rsplit(":", 1)[1]
        assert tag.startswith(f"{version}-"), (name, c["image"])
    # The dashboard (and its Jobs API, which runs arbitrary code) is reached by port-forward or an
    # authenticated Ingress, never a public load balancer.
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", name


def test_dockerfile_base_image_is_the_manifests_ray_version():
    text = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=rayproject/ray:(\S+)$", text, re.M).group(1)
    tags = {
        c["image"].rsplit(":", 1)[1]
        for _, doc in kuberay_docs()
        for c in containers(CLUSTER_SPEC[doc["kind"]](doc))
    }
    assert tags == {base}


def test_ray_up_starts_every_node_with_token_auth_and_a_local_dashboard():
    config = yaml.safe_load((CLUSTER / "ray-up.yaml").read_text())
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    # `ray start` runs in a login shell; the node env exported from ~/.bashrc turns token auth on.
    env_line = next(c for c in config["setup_commands"] if "vilaray-node-env" in c)
    assert "RAY_AUTH_MODE=token" in env_line
    head_start = " ".join(config["head_start_ray_commands"])
    assert "ray start --head" in head_start and "--dashboard-host" not in head_start


def serve_app(config: dict) -> dict:
    (app,) = ServeDeploySchema.model_validate(config).model_dump()["applications"]
    return app


def test_rayservice_serves_serve_config_settings():
    (doc,) = [doc for _, doc in kuberay_docs() if doc["kind"] == "RayService"]
    service = serve_app(yaml.safe_load(doc["spec"]["serveConfigV2"]))
    local = serve_app(yaml.safe_load((ROOT / "serve" / "config.yaml").read_text()))
    assert service["import_path"] == local["import_path"]
    args, local_args = ServeConfig(**service["args"]), ServeConfig(**local["args"])
    # The same limits and queueing; replicas on GPUs and more of them; the export on shared storage.
    assert args.limits == local_args.limits
    same = (
        "max_batch_size",
        "batch_wait_s",
        "max_waiting",
        "max_queued_requests",
        "drain_timeout_s",
        "request_timeout_s",
    )
    assert {k: getattr(args, k) for k in same} == {k: getattr(local_args, k) for k in same}
    assert args.num_gpus == 1 and args.autoscaling.max_replicas >= local_args.autoscaling.max_replicas
    assert Path(args.model).is_absolute() and args.model.startswith("/runs/")
    # The API key comes from a Secret in the replicas' environment, never from the config.
    assert args.api_key_file is None and "api_key" not in service["args"]
    for c in containers(doc["spec"]["rayClusterConfig"]):
        key = next(e for e in c["env"] if e["name"] == args.api_key_env)
        assert "secretKeyRef" in key["valueFrom"]
