"""The local Kafka cluster's layout and the replication settings derived from its size (no broker needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from clinstream.core.config import Settings
from clinstream_devtools.stack.common import StackError
from clinstream_devtools.stack.kafka import kafka_nodes, local_brokers, server_properties


def _settings(tmp: Path, **kw: object) -> Settings:
    base: dict[str, object] = {"data_dir": tmp, "kafka_bootstrap": "127.0.0.1:31000",
                               "kafka_controller_port": 31001}
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


def test_replication_defaults_follow_the_cluster_size(tmp_path: Path) -> None:
    single, cluster = _settings(tmp_path), _settings(tmp_path, kafka_brokers=3)
    assert (single.replication_factor, single.min_insync_replicas) == (1, 1)
    assert (cluster.replication_factor, cluster.min_insync_replicas) == (3, 2)
    explicit = _settings(tmp_path, kafka_brokers=3, replication_factor=2)
    assert (explicit.replication_factor, explicit.min_insync_replicas) == (2, 1)


@given(st.integers(min_value=1, max_value=9))
def test_a_default_cluster_survives_one_broker_and_writes_twice(brokers: int) -> None:
    s = Settings(kafka_brokers=brokers, data_dir=Path("/nonexistent"))
    assert 1 <= s.min_insync_replicas <= s.replication_factor <= brokers
    if s.replication_factor > 1:
        assert s.min_insync_replicas <= s.replication_factor - 1  # acks=all still succeeds with a broker down
    if brokers >= 3:
        assert s.min_insync_replicas >= 2  # an acknowledged record is on two brokers


@pytest.mark.parametrize(("kw", "field"), [({"replication_factor": 3}, "exceeds kafka_brokers"),
                                           ({"kafka_brokers": 3, "min_insync_replicas": 4}, "exceeds replication")])
def test_inconsistent_replication_is_refused(tmp_path: Path, kw: dict[str, int], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        _settings(tmp_path, **kw)


def test_node_ports_derive_from_the_configured_ones(tmp_path: Path) -> None:
    nodes = kafka_nodes(_settings(tmp_path), 3)
    assert [(n.node_id, n.port, n.controller_port) for n in nodes] == [
        (1, 31000, 31001), (2, 31002, 31003), (3, 31004, 31005)]
    assert len({n.directory for n in nodes}) == 3
    single = kafka_nodes(_settings(tmp_path), 1)
    assert [(n.port, n.controller_port, n.directory) for n in single] == [(31000, 31001, tmp_path / "kafka")]


def test_a_bootstrap_list_names_the_nodes(tmp_path: Path) -> None:
    s = _settings(tmp_path, kafka_bootstrap="127.0.0.1:32000,127.0.0.1:32010,127.0.0.1:32020")
    assert [n.port for n in kafka_nodes(s, 3)] == [32000, 32010, 32020]


def test_colliding_ports_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="collide"):
        kafka_nodes(_settings(tmp_path, kafka_controller_port=31002), 3)


def test_cluster_properties_have_a_static_quorum_and_the_replication_settings(tmp_path: Path) -> None:
    s = _settings(tmp_path, kafka_brokers=3)
    nodes = kafka_nodes(s, 3)
    props = dict(line.split("=", 1) for line in server_properties(s, nodes[1], nodes).splitlines()
                 if not line.startswith("#"))
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:31001,2@127.0.0.1:31003,3@127.0.0.1:31005"
    assert props["default.replication.factor"] == props["offsets.topic.replication.factor"] == "3"
    assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"
    assert "controller.quorum.bootstrap.servers" not in props
    single = dict(line.split("=", 1) for line in server_properties(_settings(tmp_path)).splitlines()
                  if not line.startswith("#"))
    assert single["controller.quorum.bootstrap.servers"] == "127.0.0.1:31001"
    assert single["min.insync.replicas"] == single["default.replication.factor"] == "1"


def test_a_data_dir_keeps_its_node_count(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    assert local_brokers(s, 3) == 3  # nothing formatted yet: as asked
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "layout").write_text("3\n")
    assert local_brokers(s) == 3
    with pytest.raises(StackError, match="holds a 3-broker Kafka, not 1"):
        local_brokers(s, 1)
