"""deploy/k8s/: every manifest passes the Kubernetes schemas offline (kubernetes-validate bundles
them), strictly (an unknown or misspelt field fails), for the oldest and newest versions we
support; and the manifests agree with the node: the flags they set exist, the probes hit the
paths and port the node serves, the conf they mount is one the node accepts."""

import os
import socket
from pathlib import Path

import kubernetes_validate  # tests/requirements-dev.txt: a missing validator fails, never skips
import pytest
import yaml

from node import config

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
VERSIONS = ("1.29.0", "1.37.0")  # oldest still common on managed clusters; newest bundled
WORKLOADS = ("daemonset.yaml", "statefulset.yaml")


def documents():
    return [(path.relative_to(K8S), doc) for path in sorted(K8S.rglob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture
def no_network(monkeypatch):
    """Validation must not fetch schemas: any connect attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during validation: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_every_kind_we_ship_is_there():
    kinds = sorted(doc["kind"] for _, doc in documents())
    assert kinds == ["ConfigMap", "DaemonSet", "Service", "StatefulSet"]


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_pass_strict_schema_validation_offline(version, no_network):
    errors = []
    for path, doc in documents():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(map(str, e.absolute_path))
            errors.append(f"{path}: {doc['kind']} fails the {version} schema at {where}: {e.message}")
    assert not errors, "\n".join(errors)


def test_the_validator_catches_a_misspelt_field(no_network):
    doc = yaml.safe_load((K8S / "common" / "service.yaml").read_text())
    doc["spec"]["publishNotReadyAdresses"] = doc["spec"].pop("publishNotReadyAddresses")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)


def _service():
    return next(doc for _, doc in documents() if doc["kind"] == "Service")


def _workload(name):
    return yaml.safe_load((K8S / name).read_text())


def _env(container):
    return {e["name"]: e["value"] for e in container["env"]}


def test_service_is_headless_and_lists_pods_before_they_are_ready():
    spec = _service()["spec"]
    assert spec["clusterIP"] == "None" and spec["publishNotReadyAddresses"] is True


@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_env_is_config_the_node_accepts(name, tmp_path):
    pod = _workload(name)["spec"]["template"]["spec"]
    node = next(c for c in pod["containers"] if c["name"] == "node")
    env = _env(node)
    assert env["NODE_PEERS_DNS"] == _service()["metadata"]["name"]
    conf = tmp_path / "torrent.conf"
    conf.write_text(next(doc for _, doc in documents() if doc["kind"] == "ConfigMap")["data"]["torrent.conf"])
    cfg = config.load([], {**env, "NODE_CONF": str(conf)})
    assert cfg.discovery is False and cfg.file_info is not None
    ports = {p["name"]: p["containerPort"] for p in node["ports"]}
    assert (cfg.port, cfg.http_port) == (ports["peer"], ports["http"])
    assert os.path.dirname(env["NODE_CONF"]) in {m["mountPath"] for m in node["volumeMounts"]}
    assert os.path.dirname(env["NODE_DATA"]) in {m["mountPath"] for m in node["volumeMounts"]}


@pytest.mark.parametrize("name", WORKLOADS)
def test_probes_hit_what_the_node_serves(name):
    """The paths test_http.py exercises, on the port named http (its number: the test above)."""
    node = _workload(name)["spec"]["template"]["spec"]["containers"][0]
    assert node["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert node["readinessProbe"]["httpGet"]["path"].split("?")[0] == "/readyz"


@pytest.mark.parametrize("name", WORKLOADS)
def test_node_runs_non_root_on_a_read_only_root(name):
    pod = _workload(name)["spec"]["template"]["spec"]
    node = pod["containers"][0]
    ctx = {**pod.get("securityContext", {}), **node["securityContext"]}
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
    assert node["securityContext"]["capabilities"]["drop"] == ["ALL"]
    limits, requests = node["resources"]["limits"], node["resources"]["requests"]
    assert limits["memory"] and requests["memory"] and limits["cpu"]
