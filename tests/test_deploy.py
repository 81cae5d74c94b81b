"""The deployment files under ``docs/deploy/``: valid, and saying what the guides say they say.

Rules: the Kubernetes manifests are validated against the API schemas that
``kubernetes-validate`` ships (no download at run time), then checked for
the fields that matter to a graceful, observable reuseport pod; the systemd
units and the Dockerfile are parsed and checked the same way; every
``reuseport serve`` command line in them goes through reuseport's own parser
and configuration, so a renamed flag breaks this test, not a deployment.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from reuseport.cli import build_config, make_parser
from reuseport.config import Config

DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy"
K8S_VERSION = "1.30"
_STOP_GRACE = 5  # the master's grace after --graceful-timeout before it kills a worker


def _config(argv: list[str], *, file: Path | None = None) -> Config:
    """What ``reuseport ARGV`` would run with (``serve`` first)."""
    assert argv[0] == "serve", argv
    if file is not None:
        argv = [a if a != "/etc/reuseport/app.toml" else str(file) for a in argv]
    args = make_parser().parse_args(argv)
    return build_config(args, environ={})


# ------------------------------------------------------------------ Kubernetes
@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()))
    return {doc["kind"]: doc for doc in docs}


def test_manifests_are_valid_for_the_api(manifests: dict[str, dict[str, Any]]) -> None:
    assert set(manifests) == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    for doc in manifests.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_schema_check_can_fail(manifests: dict[str, dict[str, Any]]) -> None:
    broken = json.loads(json.dumps(manifests["Service"]))
    broken["spec"]["portz"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_pod_stops_gracefully_and_is_probed_on_the_master(
    manifests: dict[str, dict[str, Any]],
) -> None:
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = _config(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config.metrics is not None
    assert ports["metrics"] == config.metrics.port
    assert config.metrics.host == "0.0.0.0"  # the kubelet probes from outside the pod
    assert ports["http"] == config.binds[0].port  # type: ignore[union-attr]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    pre_stop_seconds = int(pre_stop[1])
    assert pre_stop_seconds >= 3
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= pre_stop_seconds + config.graceful_timeout + _STOP_GRACE
    # The default worker count follows the CPU limit: requests equal to it.
    resources = container["resources"]
    assert resources["limits"]["cpu"] == resources["requests"]["cpu"]
    assert "-w" not in container["args"]
    assert "--workers" not in container["args"]


def test_prometheus_annotations_service_and_autoscaler_match(
    manifests: dict[str, dict[str, Any]],
) -> None:
    deployment = manifests["Deployment"]
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    config = _config(container["args"])
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert config.metrics is not None
    assert annotations["prometheus.io/port"] == str(config.metrics.port)
    assert annotations["prometheus.io/path"] == "/metrics"
    labels = template["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = manifests["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["ports"]} == {"http"}
    target = manifests["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    budget = manifests["PodDisruptionBudget"]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["minAvailable"] < manifests["HorizontalPodAutoscaler"]["spec"]["minReplicas"]


# ------------------------------------------------------------------ systemd
def _unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / name).read_text())
    return parser


def _lines(name: str, section: str, key: str) -> list[str]:
    """Every value of a key that systemd allows more than once (configparser keeps the last)."""
    text = (DEPLOY / name).read_text()
    body = text.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
    return [m[1].strip() for m in re.finditer(rf"^{key}=(.*)$", body, re.MULTILINE)]


def test_service_unit_is_notify_with_a_stop_timeout_above_the_graceful_timeout() -> None:
    service = _unit("reuseport.service")["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["KillMode"] == "mixed"
    assert int(service["WatchdogSec"]) > 0
    (start,) = _lines("reuseport.service", "Service", "ExecStart")
    argv = shlex.split(start)
    assert argv[0].endswith("/reuseport")
    config = _config(argv[1:], file=DEPLOY / "app.toml")
    assert int(service["TimeoutStopSec"]) > config.graceful_timeout + _STOP_GRACE
    assert config.pid_file is not None
    assert config.control is not None
    assert config.app == "web:app"
    # Reload: check the new code, then the rolling reload.
    check, hup = _lines("reuseport.service", "Service", "ExecReload")
    assert hup == "/bin/kill -HUP $MAINPID"
    check_argv = shlex.split(check)
    assert "--check-config" in check_argv
    assert _config(check_argv[1:], file=DEPLOY / "app.toml").app == config.app
    (pre,) = _lines("reuseport.service", "Service", "ExecStartPre")
    assert "--check-config" in shlex.split(pre)


def test_socket_unit_hands_the_service_a_named_socket() -> None:
    socket_unit = _unit("reuseport.socket")
    assert socket_unit["Socket"]["ListenStream"]
    assert socket_unit["Socket"]["FileDescriptorName"] == "web"
    assert socket_unit["Socket"]["Service"].endswith(".service")
    assert socket_unit["Install"]["WantedBy"] == "sockets.target"


def test_the_settings_file_is_valid() -> None:
    data = tomllib.loads((DEPLOY / "app.toml").read_text())
    assert data["serve"]["app"] == "web:app"
    args = make_parser().parse_args(["serve", "--config", str(DEPLOY / "app.toml")])
    config = build_config(args, environ={})
    assert config.metrics is not None
    assert config.metrics.host == "127.0.0.1"


# ------------------------------------------------------------------ the image
def test_dockerfile_runs_the_master_as_pid_1_with_its_probes() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.MULTILINE)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert entrypoint is not None
    assert cmd is not None  # exec form: the master is PID 1 and gets SIGTERM
    assert json.loads(entrypoint[1]) == ["reuseport"]
    config = _config(json.loads(cmd[1]))
    assert config.metrics is not None
    assert f"127.0.0.1:{config.metrics.port}/readyz" in text
    assert re.search(r"^RUN reuseport serve \S+ --check-config$", text, re.MULTILINE)
    assert "reuseport[metrics]" in text


def test_every_guide_links_its_files() -> None:
    index = (DEPLOY / "README.md").read_text()
    for name in (
        "systemd.md",
        "containers.md",
        "kubernetes.md",
        "multi-host.md",
        "reuseport.service",
        "reuseport.socket",
        "kubernetes.yaml",
        "Dockerfile",
    ):
        assert f"]({name})" in index, name
        assert (DEPLOY / name).exists(), name
