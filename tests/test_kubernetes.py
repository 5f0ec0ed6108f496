"""The Kubernetes manifests in integrations/kubernetes/ are valid and carry what the
README promises (schemas ship with kubernetes-validate: no cluster, no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

HERE = Path(__file__).resolve().parent.parent / "integrations" / "kubernetes"
VERSION = "1.30.0"  # the oldest Kubernetes still commonly run; the fields are all older


def documents() -> list[dict[str, Any]]:
    found = []
    for path in sorted(HERE.glob("*.yaml")):
        found.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return found


def deployment() -> dict[str, Any]:
    (found,) = [doc for doc in documents() if doc["kind"] == "Deployment"]
    return found


@pytest.mark.parametrize("doc", documents(), ids=lambda doc: f"{doc['kind']}")
def test_manifest_is_valid(doc: dict[str, Any]) -> None:
    """Every manifest validates strictly (unknown fields rejected) against the schema."""
    kubernetes_validate.validate(doc, VERSION, strict=True)


def test_validator_rejects_a_broken_manifest() -> None:
    """The check has teeth: a Deployment with a wrongly typed field fails."""
    broken = deployment()
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def test_deployment_has_limit_workers_probe_and_scrape_annotations() -> None:
    """Memory limit, WEB_CONCURRENCY, readiness on /_arenapool/ready, scrape annotations."""
    pod = deployment()["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert (
        "1Gi",
        "4",
        "auto",
        "/_arenapool/ready",
        {"true", "8080", "/_arenapool/metrics"},
    ) == (
        container["resources"]["limits"]["memory"],
        env["WEB_CONCURRENCY"],
        env["ARENAPOOL_BUDGET"],
        container["readinessProbe"]["httpGet"]["path"],
        {v for k, v in pod["metadata"]["annotations"].items() if k.startswith("prometheus.io")},
    )
