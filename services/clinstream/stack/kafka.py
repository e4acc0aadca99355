"""The local Kafka: one KRaft node (broker and controller in one JVM) run from the jars scripts/bootstrap caches."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from clinstream.core import constants as c
from clinstream.core.config import Settings
from clinstream.stack.common import (
    ServiceStatus,
    StackError,
    port_in_use,
    process_alive,
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


def _pid_file(settings: Settings) -> Path:
    return settings.kafka_dir / "kafka.pid"


def _log_file(settings: Settings) -> Path:
    return settings.kafka_dir / "logs" / "server.log"


def _out_file(settings: Settings) -> Path:
    return settings.kafka_dir / "kafka.out"


def _marker(settings: Settings) -> str:
    """A string in the command line of this data dir's broker, and in no other process's."""
    return str(settings.kafka_dir / "server.properties")


def kafka_pid(settings: Settings) -> int | None:
    """Pid of this data dir's broker if it runs, else None."""
    pid = read_pid(_pid_file(settings))
    return pid if process_alive(pid, marker=_marker(settings)) else None


def kafka_is_up(settings: Settings, timeout_s: float = 3.0) -> bool:
    """True when the broker answers a metadata request."""
    host, port = broker_address(settings)
    try:
        with socket.create_connection((host, port), timeout=1.0):
            pass
    except OSError:
        return False
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    config: dict[str, Any] = {
        "bootstrap.servers": f"{host}:{port}",
        "socket.connection.setup.timeout.ms": 2000,
        "log.connection.close": False,
        "logger": logging.getLogger("clinstream.stack.rdkafka"),  # librdkafka's own log, not stderr
    }
    admin = AdminClient(config)
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return bool(metadata.brokers)


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


def _check_ports_free(settings: Settings) -> None:
    host, port = broker_address(settings)
    wanted = (("Kafka broker", port, "CLINSTREAM_KAFKA_BOOTSTRAP"),
              ("Kafka controller", settings.kafka_controller_port, "CLINSTREAM_KAFKA_CONTROLLER_PORT"))
    for what, p, env in wanted:
        if port_in_use(host, p):
            raise StackError(f"port {host}:{p} for the {what} is already in use by another process: "
                             f"stop that process or choose another port with {env}")


def server_properties(settings: Settings) -> str:
    """server.properties of a single combined broker+controller node, tuned for a dev box."""
    host, port = broker_address(settings)
    cport = settings.kafka_controller_port
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"{host}:{cport}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(settings.kafka_dir / "data"),
        "num.partitions": str(settings.topic_partitions),
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "8",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "2",
        "log.retention.hours": "168",
        "log.segment.bytes": str(256 * 1024 * 1024),
    }
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


def _write_config(settings: Settings) -> None:
    kdir = settings.kafka_dir
    (kdir / "logs").mkdir(parents=True, exist_ok=True)
    (kdir / "server.properties").write_text(server_properties(settings), encoding="utf-8")
    (kdir / "log4j2.properties").write_text(_LOG4J2.format(logs=kdir / "logs"), encoding="utf-8")


def _new_cluster_id() -> str:
    """A Kafka Uuid string (URL-safe base64 of 16 random bytes) that does not start with '-'."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):
            return text


def _jvm_command(settings: Settings, java: str, main_class: str, *args: str,
                 heap: tuple[str, ...] = JVM_HEAP) -> list[str]:
    kdir = settings.kafka_dir
    return [java, *heap, *JVM_FLAGS,
            f"-Dlog4j2.configurationFile={kdir / 'log4j2.properties'}", f"-Dkafka.logs.dir={kdir / 'logs'}",
            "-cp", str(kafka_libs(settings) / "*"), main_class, *args]


def _format_storage(settings: Settings, java: str) -> None:
    """Format the log dir once, as a standalone (single-voter, dynamic) KRaft quorum."""
    kdir = settings.kafka_dir
    if (kdir / "data" / "meta.properties").is_file():
        return
    id_file = kdir / "cluster.id"
    if not id_file.is_file():
        id_file.write_text(_new_cluster_id() + "\n", encoding="ascii")
    cluster_id = id_file.read_text(encoding="ascii").strip()
    cmd = _jvm_command(settings, java, STORAGE_TOOL_CLASS, "format", "--standalone", "--ignore-formatted",
                       "--config", str(kdir / "server.properties"), "--cluster-id", cluster_id,
                       heap=("-Xmx256m",))
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise StackError(f"formatting Kafka storage in {kdir / 'data'} failed: {lines[-1]}")


def _wait_until_up(settings: Settings, pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process_alive(pid, marker=_marker(settings)):
            raise StackError(f"Kafka exited during start-up: see {_log_file(settings)} and {_out_file(settings)}")
        if kafka_is_up(settings, timeout_s=2.0):
            return
        time.sleep(0.3)
    raise StackError(f"Kafka (pid {pid}) did not answer within {timeout_s:.0f} s: see {_log_file(settings)}, "
                     "then `clinstream stack down` and `up`")


def start_kafka(settings: Settings, timeout_s: float = START_TIMEOUT_S) -> None:
    """Start the broker if it does not run, and wait until it answers a metadata request."""
    with stack_lock(settings):
        java = check_kafka_prerequisites(settings)
        pid = kafka_pid(settings)
        if pid is not None:
            _wait_until_up(settings, pid, timeout_s)
            return
        _check_ports_free(settings)
        settings.kafka_dir.mkdir(parents=True, exist_ok=True)
        _write_config(settings)
        _format_storage(settings, java)
        cmd = _jvm_command(settings, java, MAIN_CLASS, str(settings.kafka_dir / "server.properties"))
        with _out_file(settings).open("ab") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=settings.kafka_dir, start_new_session=True, close_fds=True)
        _pid_file(settings).write_text(f"{proc.pid}\n", encoding="ascii")
        log.info("Kafka starting (pid %s)", proc.pid)
        _wait_until_up(settings, proc.pid, timeout_s)


def stop_kafka(settings: Settings, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop the broker: SIGTERM (controlled shutdown), wait, SIGKILL after `timeout_s`. No-op if it does not run."""
    with stack_lock(settings):
        pid = kafka_pid(settings)
        if pid is not None:
            killed = terminate(pid, marker=_marker(settings), timeout_s=timeout_s)
            if killed:
                log.warning("Kafka (pid %s) ignored SIGTERM for %.0f s and was killed", pid, timeout_s)
        _pid_file(settings).unlink(missing_ok=True)


def ensure_kafka(settings: Settings) -> None:
    """Kafka runs and answers; started (and formatted on first use) if needed. Idempotent."""
    start_kafka(settings)


def kafka_status(settings: Settings) -> ServiceStatus:
    """Pid and liveness of the broker, for `stack status`."""
    host, port = broker_address(settings)
    pid = kafka_pid(settings)
    answers = kafka_is_up(settings)
    detail = f"Kafka {c.KAFKA_VERSION} KRaft; controller :{settings.kafka_controller_port}"
    if answers and pid is None:
        detail = "answering, but not started from this data dir"
    return ServiceStatus("kafka", f"{host}:{port}", pid, answers, detail)
