"""Shared fixtures: settings pointing at the real local stack, with a fresh site per test for isolation."""

from __future__ import annotations

import fcntl
import os
import threading
import uuid
from collections.abc import Iterator

import pytest

from clinstream.core.config import Settings


def _base_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]


@pytest.fixture
def site_id() -> str:
    """A unique site id, so that each test gets its own topics and DB schema."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def settings(site_id: str) -> Settings:
    """Settings of the real local stack (CLINSTREAM_* env), for a fresh test site."""
    return _base_settings(site_id=site_id)


@pytest.fixture
def kafka_site(settings: Settings) -> Iterator[Settings]:
    """A test site whose topics exist on the real broker; deleted afterwards."""
    from clinstream.core.topic_admin import apply_topics, delete_site_topics

    apply_topics(settings)
    yield settings
    if not os.environ.get("CLINSTREAM_KEEP_TEST_TOPICS"):
        delete_site_topics(settings)


@pytest.fixture
def db_site(settings: Settings) -> Iterator[Settings]:
    """A test site whose feature-store schema is migrated in the real TimescaleDB; dropped afterwards."""
    from clinstream.core.db import connect
    from clinstream.store.migrate import migrate

    migrate(settings)
    yield settings
    with connect(settings, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')


# ---- the suite's phases and the parallel run's grouping ----------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    """`--phase`: scripts/test runs the tests that leave the shared services alone in parallel, then the fault tests
    that stop them, alone."""
    parser.addoption("--phase", choices=("all", "parallel", "faults"), default="all",
                     help="all: every selected test; parallel: those that leave the shared services alone (no faults "
                          "marker, or faults with own_stack); faults: the rest")


def _module_scoped(item: pytest.Item) -> bool:
    """True when the test uses a fixture set up once per module or class (its tests must share one worker)."""
    definitions = getattr(item, "_fixtureinfo", None)
    if definitions is None:
        return False
    return any(defs and defs[-1].scope in ("module", "class") for defs in definitions.name2fixturedefs.values())


def _stops_shared_services(item: pytest.Item) -> bool:
    """A fault test on the shared broker and database (one on its own cluster, `own_stack`, leaves them alone)."""
    return item.get_closest_marker("faults") is not None and item.get_closest_marker("own_stack") is None


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the tests of the requested phase; under `--dist loadgroup` keep a module's tests that share a
    module-scope fixture on one worker (one set-up, as in a serial run) unless the module names its own group."""
    phase = config.getoption("--phase")
    if phase != "all":
        wanted = phase == "faults"
        kept = [item for item in items if _stops_shared_services(item) == wanted]
        dropped = [item for item in items if _stops_shared_services(item) != wanted]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept
    # the controller sees `--dist loadgroup`; an xdist worker sees dist "no" and option.loadgroup set
    if config.getoption("dist", default="no") == "loadgroup" or getattr(config.option, "loadgroup", False):
        for item in items:
            if item.get_closest_marker("xdist_group") is None and _module_scoped(item):
                item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """On an xdist worker under `--dist loadgroup`, refuse to run when xdist did not tag the grouped tests with
    their group (it silently stopped doing so once: pytest-xdist#1386), since a module fixture would then be set up
    on several workers at once and the Flower federations would race for their fixed ports."""
    config = session.config
    if config.getoption("dist", default="no") != "no" or not getattr(config.option, "loadgroup", False):
        return
    lost = [item.nodeid for item in session.items
            if item.get_closest_marker("xdist_group") is not None and "@" not in item.nodeid]
    if lost:
        raise pytest.UsageError(f"--dist loadgroup is not grouping: {len(lost)} tests with an xdist_group mark lack "
                                f"their @group suffix (e.g. {lost[0]}); see pytest-xdist#1386")


# ---- shared services: only `faults` tests stop them, and only under the stack lock ---------------------------------

SERVICE_WATCH_S = 0.05  # how often a fault test's watcher looks at the shared ports


def _shared_pids(settings: Settings) -> tuple[int | None, int | None]:
    from clinstream_devtools.stack.kafka import kafka_pid
    from clinstream_devtools.stack.postgres import postgres_pid

    return kafka_pid(settings), postgres_pid(settings)


class _OutageWatcher:
    """Flags a shared service found down while nobody holds the stack lock (a fault test must hold it throughout)."""

    def __init__(self, settings: Settings, kafka_up: bool, postgres_up: bool) -> None:
        from clinstream_devtools.stack.kafka import broker_address
        from ports import port_refuses

        host, port = broker_address(settings)
        self._checks = [(name, check) for name, up, check in (
            ("the broker", kafka_up, lambda: port_refuses(host, port)),
            ("the database", postgres_up, lambda: port_refuses("127.0.0.1", settings.postgres_port))) if up]
        self._lock_path = settings.data_dir.resolve() / "stack.lock"
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="outage-watcher", daemon=True)

    def _down_without_lock(self) -> list[str]:
        down = [name for name, refuses in self._checks if refuses()]
        if not down:
            return []
        with self._lock_path.open("a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []  # the fault holds the lock
            try:  # still down now that we hold the lock: nobody was holding it during the outage
                return [name for name, refuses in self._checks if name in down and refuses()]
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _watch(self) -> None:
        while not self._stop.wait(SERVICE_WATCH_S):
            self.violations += [f"{name} was down while the stack lock was free" for name in self._down_without_lock()
                                if f"{name} was down while the stack lock was free" not in self.violations]

    def __enter__(self) -> _OutageWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(autouse=True)
def shared_services_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test without the `faults` marker leaves the shared broker and database running (the same processes
    before and after it); a `faults` test holds the stack lock while either is down."""
    base = _base_settings()
    before = _shared_pids(base)
    if request.node.get_closest_marker("faults") is None:
        yield
        after = _shared_pids(base)
        if after != before:
            pytest.fail(f"{request.node.nodeid} stopped or restarted a shared service (kafka, postgres pids "
                        f"{before} -> {after}) without the faults marker", pytrace=False)
        return
    with _OutageWatcher(base, before[0] is not None, before[1] is not None) as watcher:
        yield
    if watcher.violations:
        pytest.fail(f"{request.node.nodeid}: " + "; ".join(watcher.violations), pytrace=False)
