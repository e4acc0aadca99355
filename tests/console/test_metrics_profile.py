"""The compose metrics profile: promtool checks the Prometheus config, the rules and every dashboard query; the
dashboard refers only to the provisioned datasource and to metric names a clinstream process exposes or is
listed as still missing; no metric label can identify a person."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry

from clinstream.console.health import CONSENT_METRIC, DLQ_METRIC, ERASURE_METRIC
from clinstream.ingest.metrics import GatewayMetrics

ROOT = Path(__file__).resolve().parents[2]
METRICS = ROOT / "ops" / "metrics"
DASHBOARD = METRICS / "grafana" / "dashboards" / "clinstream.json"
DATASOURCES = METRICS / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian package prometheus)")

# Metrics the dashboard shows that no process serves yet (none: the stream workers serve theirs since issue 15).
NOT_YET_SERVED: frozenset[str] = frozenset()
IDENTIFYING = re.compile(r"participant|pseudonym|device|serial|sample_id|donor|patient|ip|user|email|name")
_METRIC = re.compile(r"\b(clinstream_[a-z0-9_]+|kafka_[a-z0-9_]+)\b")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, check=False)


def _served_registries() -> list[CollectorRegistry]:
    import clinstream.core.stage_metrics  # registers the stream workers' metrics in REGISTRY
    import clinstream.pseudonymise.metrics  # noqa: F401 - registers the pseudonymise counter in REGISTRY

    return [GatewayMetrics().registry, REGISTRY]


def _served_names() -> dict[str, list[str]]:
    """Every clinstream sample name a process exposes, with its label names."""
    out: dict[str, list[str]] = {}
    for registry in _served_registries():
        for family in registry.collect():
            if family.name.startswith("clinstream_"):
                suffix = "_total" if family.type == "counter" else ""
                out[family.name + suffix] = list(getattr(family, "_labelnames", ()))
    return out


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@needs_promtool
def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    config = yaml.safe_load((METRICS / "prometheus.yml").read_text())
    config["rule_files"] = [str(METRICS / "rules.yml")]  # the container path, mapped to the repo's file
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = _promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_rules_pass_promtool() -> None:
    done = _promtool("check", "rules", str(METRICS / "rules.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    rules = [{"record": f"dashboard:panel{p['id']}:{t['refId']}", "expr": t["expr"]}
             for p in _dashboard()["panels"] for t in p["targets"]]
    assert rules
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = _promtool("check", "rules", str(tmp_path / "queries.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_uses_the_provisioned_datasource_and_unique_ids() -> None:
    dash = _dashboard()
    uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] and dash["title"]
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert all(t["datasource"]["uid"] == uid for t in panel["targets"])


def test_dashboard_and_rules_name_only_served_or_listed_metrics() -> None:
    served = _served_names()
    recorded = {r["record"] for g in yaml.safe_load((METRICS / "rules.yml").read_text())["groups"]
                for r in g["rules"] if "record" in r}
    text = DASHBOARD.read_text() + (METRICS / "rules.yml").read_text()
    names = set(_METRIC.findall(text))
    clinstream = {n for n in names if n.startswith("clinstream_")}
    histogram_parts = {n.rsplit("_", 1)[0] for n in clinstream if n.endswith(("_bucket", "_sum", "_count"))}
    unknown = {n for n in clinstream if n not in served and n not in NOT_YET_SERVED
               and n.rsplit("_", 1)[0] not in histogram_parts & set(served)}
    assert not unknown, f"dashboard/rules name metrics nobody exposes: {sorted(unknown)}"
    assert CONSENT_METRIC in served
    assert {DLQ_METRIC, ERASURE_METRIC} <= set(served)
    assert all(r.startswith("clinstream:") for r in recorded)


def test_metric_names_are_consistent_and_labels_never_identify() -> None:
    for name, labels in _served_names().items():
        assert re.fullmatch(r"clinstream_[a-z]+_[a-z0-9_]+", name), name
        for label in labels:
            assert not IDENTIFYING.search(label), (name, label)


def test_compose_metrics_profile_mounts_the_checked_files() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("prometheus", "grafana", "kafka-exporter"):
        assert services[name]["profiles"] == ["metrics"]
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
        for port in services[service]["ports"]:
            assert port.startswith("127.0.0.1:"), port
