"""The local Kafka: one KRaft node, or a cluster of them (broker and controller in each JVM), from the cached jars."""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinstream.core import constants as c
from clinstream.core.config import Settings
from clinstream_devtools.stack.common import (
    ServiceStatus,
    StackError,
    port_in_use,
    process_alive,
    process_exists,
    read_pid,
    split_host_port,
    stack_lock,
    terminate,
)

log = logging.getLogger(__name__)

MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL_CLASS = "kafka.tools.StorageTool"
JVM_HEAP = ("-Xms256m", "-Xmx512m")
# The JVM flags of Kafka's own kafka-run-class.sh, plus exit on OOM so that a wedged broker does not linger.
JVM_FLAGS = (
    "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
    "-Dlog4j2.shutdownHookEnabled=false",  # keep logging through the broker's own shutdown
)
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
COMPLETE_MARKER = ".complete"
BOOTSTRAP_HINT = "run scripts/bootstrap"


def kafka_home(settings: Settings) -> Path:
    """Cache dir of the pinned Kafka version (outside the repo)."""
    return settings.cache_dir.expanduser() / f"kafka-{c.KAFKA_VERSION}"


def kafka_libs(settings: Settings) -> Path:
    """The broker's classpath directory (every jar in it)."""
    return kafka_home(settings) / "libs"


def broker_address(settings: Settings) -> tuple[str, int]:
    """Host and port of the broker listener (the first bootstrap server)."""
    return split_host_port(settings.kafka_bootstrap, c.KAFKA_BROKER_PORT)


@dataclass(frozen=True)
class KafkaNode:
    """One node of the local Kafka (broker and controller in one JVM), its loopback ports and directory."""

    node_id: int
    host: str
    port: int
    controller_port: int
    directory: Path

    @property
    def address(self) -> str:
        """host:port of the broker listener."""
        return f"{self.host}:{self.port}"


def _bootstrap_entries(settings: Settings) -> list[tuple[str, int]]:
    return [split_host_port(entry, c.KAFKA_BROKER_PORT) for entry in settings.kafka_bootstrap.split(",")
            if entry.strip()]


def kafka_nodes(settings: Settings, brokers: int) -> list[KafkaNode]:
    """The nodes of a local Kafka of `brokers` nodes.

    One node keeps the historical layout (the configured ports, `<data>/kafka`). A cluster takes its broker
    addresses from CLINSTREAM_KAFKA_BOOTSTRAP when that lists one per node, else node i listens on the first
    bootstrap port + STRIDE * (i - 1); controller ports follow CLINSTREAM_KAFKA_CONTROLLER_PORT the same way.
    """
    entries = _bootstrap_entries(settings)
    host, port = entries[0]
    stride = c.KAFKA_NODE_PORT_STRIDE
    if brokers == 1:
        return [KafkaNode(1, host, port, settings.kafka_controller_port, settings.kafka_dir)]
    if len(entries) != brokers:
        entries = [(host, port + stride * i) for i in range(brokers)]
    nodes = [KafkaNode(i + 1, h, p, settings.kafka_controller_port + stride * i, settings.kafka_dir / f"node-{i + 1}")
             for i, (h, p) in enumerate(entries)]
    ports = [n.port for n in nodes] + [n.controller_port for n in nodes]
    if len(set(ports)) != len(ports) or max(ports) > 65535:
        raise StackError(f"the {brokers} Kafka nodes' ports {sorted(ports)} collide or exceed 65535: choose "
                         "CLINSTREAM_KAFKA_BOOTSTRAP and CLINSTREAM_KAFKA_CONTROLLER_PORT further apart")
    return nodes


def quorum_leader(node: KafkaNode) -> int | None:
    """The node id of the active controller as `node` last recorded it (its raft quorum state); None if unknown."""
    path = node.directory / "data" / "__cluster_metadata-0" / "quorum-state"
    try:
        leader = json.loads(path.read_text(encoding="utf-8")).get("leaderId", -1)
    except (OSError, ValueError):
        return None
    return int(leader) if isinstance(leader, int) and leader >= 0 else None


def cluster_bootstrap(settings: Settings, brokers: int) -> str:
    """The CLINSTREAM_KAFKA_BOOTSTRAP value that names every node of a local Kafka of `brokers` nodes."""
    return ",".join(node.address for node in kafka_nodes(settings, brokers))


def _layout_file(settings: Settings) -> Path:
    return settings.kafka_dir / "layout"


def recorded_brokers(settings: Settings) -> int | None:
    """How many nodes the Kafka formatted in this data dir has (None: none formatted yet)."""
    try:
        return int(_layout_file(settings).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        pass
    return 1 if (settings.kafka_dir / "data" / "meta.properties").is_file() else None


def local_brokers(settings: Settings, requested: int | None = None) -> int:
    """The node count to act on: what this data dir holds; StackError if a request asks for another count."""
    if requested is None and "kafka_brokers" in settings.model_fields_set:
        requested = settings.kafka_brokers
    recorded = recorded_brokers(settings)
    if recorded is not None and requested is not None and requested != recorded:
        raise StackError(f"{settings.kafka_dir} holds a {recorded}-broker Kafka, not {requested}: "
                         "`clinstream stack down`, then remove that directory or choose another CLINSTREAM_DATA_DIR")
    return recorded or requested or 1


def _pid_file(node: KafkaNode) -> Path:
    return node.directory / "kafka.pid"


def _log_file(node: KafkaNode) -> Path:
    return node.directory / "logs" / "server.log"


def _out_file(node: KafkaNode) -> Path:
    return node.directory / "kafka.out"


def _marker(node: KafkaNode) -> str:
    """A string in the command line of this node's JVM, and in no other process's."""
    return str(node.directory / "server.properties")


def node_pid(node: KafkaNode) -> int | None:
    """Pid of a node if it runs, else None."""
    pid = read_pid(_pid_file(node))
    return pid if process_alive(pid, marker=_marker(node)) else None


def kafka_pid(settings: Settings) -> int | None:
    """Pid of this data dir's first node if it runs, else None."""
    return node_pid(kafka_nodes(settings, local_brokers(settings))[0])


def _answers(bootstrap: str, timeout_s: float) -> int:
    """Brokers in the metadata the given bootstrap servers return (0: no answer)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "socket.connection.setup.timeout.ms": 2000,
        "log.connection.close": False,
        "logger": logging.getLogger("clinstream.stack.rdkafka"),  # librdkafka's own log, not stderr
    }
    admin = AdminClient(config)
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException:
        return 0
    return len(metadata.brokers)


def _port_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def kafka_is_up(settings: Settings, timeout_s: float = 3.0) -> bool:
    """True when the broker answers a metadata request."""
    host, port = broker_address(settings)
    return _port_answers(host, port) and _answers(f"{host}:{port}", timeout_s) > 0


def node_is_up(node: KafkaNode, brokers: int, timeout_s: float = 3.0) -> bool:
    """True when the node itself answers a metadata request that lists all `brokers` nodes."""
    return _port_answers(node.host, node.port) and _answers(node.address, timeout_s) >= brokers


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise StackError("java not found: install a Java 17 runtime (openjdk-17-jre-headless), then " + BOOTSTRAP_HINT)
    return found


def check_kafka_prerequisites(settings: Settings) -> str:
    """The java executable; StackError if java or the cached Kafka jars are missing."""
    java = _java()
    libs = kafka_libs(settings)
    if not (kafka_home(settings) / COMPLETE_MARKER).is_file() or not any(libs.glob(f"kafka_*-{c.KAFKA_VERSION}.jar")):
        raise StackError(f"Kafka {c.KAFKA_VERSION} jars are missing from {libs}: {BOOTSTRAP_HINT}")
    return java


def _check_ports_free(node: KafkaNode) -> None:
    wanted = (("Kafka broker", node.port, "CLINSTREAM_KAFKA_BOOTSTRAP"),
              ("Kafka controller", node.controller_port, "CLINSTREAM_KAFKA_CONTROLLER_PORT"))
    for what, p, env in wanted:
        if port_in_use(node.host, p):
            raise StackError(f"port {node.host}:{p} for the {what} of node {node.node_id} is already in use by "
                             f"another process: stop that process or choose another port with {env}")


def _replication_props(settings: Settings, brokers: int) -> dict[str, str]:
    """Replication of topics the broker creates itself (internal topics) and their min ISR."""
    rf = str(min(settings.replication_factor, brokers))
    isr = str(min(settings.min_insync_replicas, brokers))
    return {
        "default.replication.factor": rf,
        "min.insync.replicas": isr,
        "offsets.topic.replication.factor": rf,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": isr,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": isr,
    }


def server_properties(settings: Settings, node: KafkaNode | None = None, nodes: list[KafkaNode] | None = None) -> str:
    """server.properties of one combined broker+controller node, tuned for a dev box."""
    nodes = nodes or kafka_nodes(settings, 1)
    node = node or nodes[0]
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "listeners": f"PLAINTEXT://{node.address},CONTROLLER://{node.host}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{node.address},CONTROLLER://{node.host}:{node.controller_port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(node.directory / "data"),
        "num.partitions": str(settings.topic_partitions),
        **_replication_props(settings, len(nodes)),
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.num.partitions": "8",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "2",
        "log.retention.hours": "168",
        "log.segment.bytes": str(256 * 1024 * 1024),
    }
    if len(nodes) == 1:  # a standalone (single-voter, dynamic) quorum, as formatted before clusters existed
        props["controller.quorum.bootstrap.servers"] = f"{node.host}:{node.controller_port}"
    else:  # a static quorum of every node; a dead broker is fenced (its partitions move) after the session timeout
        props["controller.quorum.voters"] = ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in nodes)
        props["broker.session.timeout.ms"] = str(c.KAFKA_BROKER_SESSION_TIMEOUT_MS)
        props["broker.heartbeat.interval.ms"] = str(c.KAFKA_BROKER_HEARTBEAT_INTERVAL_MS)
        props["unclean.leader.election.enable"] = "false"
        props["controller.quorum.fetch.timeout.ms"] = str(c.KAFKA_QUORUM_FETCH_TIMEOUT_MS)
        props["controller.quorum.election.timeout.ms"] = str(c.KAFKA_QUORUM_ELECTION_TIMEOUT_MS)
    lines = ["# Generated by `clinstream stack up` on every start; edit clinstream/stack/kafka.py instead."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


_LOG4J2 = """\
# Generated by `clinstream stack up`. The broker logs to logs/server.log (rolled at 20 MB, 5 kept).
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {logs}/server.log
appender.file.filePattern = {logs}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 5
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def _write_config(settings: Settings, node: KafkaNode, nodes: list[KafkaNode]) -> None:
    ndir = node.directory
    (ndir / "logs").mkdir(parents=True, exist_ok=True)
    (ndir / "server.properties").write_text(server_properties(settings, node, nodes), encoding="utf-8")
    (ndir / "log4j2.properties").write_text(_LOG4J2.format(logs=ndir / "logs"), encoding="utf-8")


def _new_cluster_id() -> str:
    """A Kafka Uuid string (URL-safe base64 of 16 random bytes) that does not start with '-'."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):
            return text


def _jvm_command(settings: Settings, node: KafkaNode, java: str, main_class: str, *args: str,
                 heap: tuple[str, ...] = JVM_HEAP) -> list[str]:
    ndir = node.directory
    return [java, *heap, *JVM_FLAGS,
            f"-Dlog4j2.configurationFile={ndir / 'log4j2.properties'}", f"-Dkafka.logs.dir={ndir / 'logs'}",
            "-cp", str(kafka_libs(settings) / "*"), main_class, *args]


def _cluster_id(settings: Settings) -> str:
    """The data dir's cluster id, made on first use: every node of the cluster is formatted with it."""
    id_file = settings.kafka_dir / "cluster.id"
    if not id_file.is_file():
        id_file.write_text(_new_cluster_id() + "\n", encoding="ascii")
    return id_file.read_text(encoding="ascii").strip()


def _format_storage(settings: Settings, java: str, node: KafkaNode, brokers: int) -> None:
    """Format a node's log dir once: standalone quorum for one node, the static voters of a cluster otherwise."""
    if (node.directory / "data" / "meta.properties").is_file():
        return
    cluster_id = _cluster_id(settings)
    quorum = ("--standalone",) if brokers == 1 else ()
    cmd = _jvm_command(settings, node, java, STORAGE_TOOL_CLASS, "format", *quorum, "--ignore-formatted",
                       "--config", str(node.directory / "server.properties"), "--cluster-id", cluster_id,
                       heap=("-Xmx256m",))
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise StackError(f"formatting Kafka storage in {node.directory / 'data'} failed: {lines[-1]}")
    _layout_file(settings).write_text(f"{brokers}\n", encoding="ascii")


def _wait_until_up(node: KafkaNode, brokers: int, pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process_exists(pid):  # the pid is this start's own (or marker-checked): no reuse to guard against
            raise StackError(f"Kafka node {node.node_id} exited during start-up: see {_log_file(node)} "
                             f"and {_out_file(node)}")
        if node_is_up(node, brokers, timeout_s=2.0):
            return
        time.sleep(0.3)
    raise StackError(f"Kafka node {node.node_id} (pid {pid}) did not answer within {timeout_s:.0f} s: see "
                     f"{_log_file(node)}, then `clinstream stack down` and `up`")


def _launch(settings: Settings, java: str, node: KafkaNode, nodes: list[KafkaNode]) -> int:
    """Start one node's JVM (config written, storage formatted on first use); its pid."""
    _check_ports_free(node)
    node.directory.mkdir(parents=True, exist_ok=True)
    _write_config(settings, node, nodes)
    _format_storage(settings, java, node, len(nodes))
    cmd = _jvm_command(settings, node, java, MAIN_CLASS, str(node.directory / "server.properties"))
    with _out_file(node).open("ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=node.directory, start_new_session=True, close_fds=True)
    _pid_file(node).write_text(f"{proc.pid}\n", encoding="ascii")
    log.info("Kafka node %d starting (pid %s)", node.node_id, proc.pid)
    return proc.pid


def start_kafka(settings: Settings, timeout_s: float | None = None, brokers: int | None = None) -> None:
    """Start every node that does not run (all at once: a quorum needs a majority), and wait until each answers."""
    with stack_lock(settings):
        java = check_kafka_prerequisites(settings)
        nodes = kafka_nodes(settings, local_brokers(settings, brokers))
        for node in nodes:  # a taken port is refused before anything is written
            if node_pid(node) is None:
                _check_ports_free(node)
        settings.kafka_dir.mkdir(parents=True, exist_ok=True)
        _cluster_id(settings)  # before the nodes are formatted in parallel
        with ThreadPoolExecutor(len(nodes)) as pool:  # formatting is a JVM per node: in parallel
            pids = dict(zip([n.node_id for n in nodes],
                            pool.map(lambda n: node_pid(n) or _launch(settings, java, n, nodes), nodes), strict=True))
        if timeout_s is None:
            timeout_s = START_TIMEOUT_S if len(nodes) == 1 else c.KAFKA_CLUSTER_START_TIMEOUT_S
        deadline = time.monotonic() + timeout_s
        for node in nodes:
            _wait_until_up(node, len(nodes), pids[node.node_id], max(deadline - time.monotonic(), 1.0))


def stop_node(node: KafkaNode, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop one node: SIGTERM (controlled shutdown), wait, SIGKILL after `timeout_s`. No-op if it does not run."""
    pid = node_pid(node)
    if pid is not None:
        killed = terminate(pid, marker=_marker(node), timeout_s=timeout_s)
        if killed:
            log.warning("Kafka node %d (pid %s) ignored SIGTERM for %.0f s and was killed", node.node_id, pid,
                        timeout_s)
    _pid_file(node).unlink(missing_ok=True)


def stop_kafka(settings: Settings, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop every node of this data dir at once (one by one, the last would wait for a lost quorum)."""
    with stack_lock(settings):
        nodes = kafka_nodes(settings, local_brokers(settings))
        with ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(lambda n: stop_node(n, timeout_s), nodes))


def ensure_kafka(settings: Settings, brokers: int | None = None) -> None:
    """Kafka runs and answers; started (and formatted on first use) if needed. Idempotent."""
    start_kafka(settings, brokers=brokers)


def kafka_status(settings: Settings) -> list[ServiceStatus]:
    """Pid and liveness of each node, for `stack status`."""
    try:
        brokers = local_brokers(settings)
    except StackError as exc:
        return [ServiceStatus("kafka", settings.kafka_bootstrap, None, False, str(exc))]
    rows = []
    for node in kafka_nodes(settings, brokers):
        pid = node_pid(node)
        answers = node_is_up(node, 1)
        name = "kafka" if brokers == 1 else f"kafka-{node.node_id}"
        detail = f"Kafka {c.KAFKA_VERSION} KRaft; controller :{node.controller_port}"
        if brokers > 1:
            detail += f"; node {node.node_id} of {brokers}"
        if answers and pid is None:
            detail = "answering, but not started from this data dir"
        rows.append(ServiceStatus(name, node.address, pid, answers, detail))
    return rows
