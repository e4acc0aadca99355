"""The one typed object each stage package exports: processor factory, state codec (with erasure), re-driver, replay.

`replay`, `dlq` and `lag` reach a stage only through its `StageSpec` (`clinstream.<stage>.SPEC`): they never
import a stage's modules nor name another stage's topics. A spec's factories import their stage's modules
lazily, so importing a package for its spec stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from clinstream.core.config import Settings
from clinstream.core.dead_letters import Redriver
from clinstream.core.records import BatchResult, InRecord
from clinstream.core.topics import Stage


class StateCodec(Protocol):
    """How a stage's state entries are stored (the host's table and its changelog) and how a participant is erased."""

    @property
    def table(self) -> str:
        """The host's table (its changelog topic is named by `stream_host.changelog_topic`)."""

    def encode(self, entry: Any) -> bytes:
        """An entry as stored."""

    def decode(self, raw: bytes) -> Any:
        """Inverse of `encode`."""

    def erase(self, state: MutableMapping[str, Any], pseudonym: str) -> int:
        """Remove every entry of a participant pseudonym from a state; how many went."""


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """What an operator asked a replay for."""

    version: int  # feature version to write (stages without versions: 0)
    participants: Sequence[str] = ()


class ReplayAdapter(Protocol):
    """A stage's processor as a replay drives it over a bounded range of its inputs."""

    @property
    def key_partitioned(self) -> bool:
        """Whether the inputs are keyed by the participant pseudonym (a participant filter reads fewer partitions)."""

    @property
    def store_topics(self) -> frozenset[str]:
        """Outputs written through the store stage's sink instead of their topic."""

    @property
    def unpublished_topics(self) -> frozenset[str]:
        """Outputs only counted, never re-published (their bytes are still in an input topic)."""

    def input_topics(self) -> tuple[str, ...]:
        """The topics a replay of this stage reads."""

    def prepare(self, saved_state: Any) -> None:
        """Build the processor over a fresh state (None) or a checkpoint's state."""

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        """Process one batch of input records (any partitions, offset order per partition)."""

    def finish(self) -> Iterable[BatchResult]:
        """The outputs held back until the end of the range, in chunks (each delivered on its own)."""

    def dump_state(self) -> Any:
        """The state in JSON-able form, for the checkpoint."""


class RecordSink(Protocol):
    """A sink stage's own write path (decode, check, write, dead letters), as a replay delivers through it."""

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        """Write the records durably; the result's outputs (dead letters) are produced next."""

    def transient(self, exc: BaseException) -> bool:
        """Whether a failure is an outage (retried) rather than a bug."""

    def close(self) -> None:
        """Release connections."""


@dataclass(frozen=True, slots=True)
class StageSpec:
    """Everything the tools need from one stage."""

    stage: Stage
    processor: Callable[[Settings], Any] | None  # the stage as the core host runs it (None: not hosted, ingest)
    redriver: Callable[[Settings], Redriver]
    state: StateCodec | None = None  # None: the stage keeps no state
    replay: Callable[[Settings, ReplayRequest], ReplayAdapter] | None = None  # None: not replayable
    sink: Callable[[Settings], RecordSink] | None = None  # a sink stage's write path (None: not a sink)
    live_version: Callable[[], int] | None = None  # the version of the stage's outputs now (None: unversioned)


def lazy(path: str) -> Callable[..., Any]:
    """A factory calling `module:attribute` (imported on the first call, so a spec stays cheap to import)."""
    module, _, attribute = path.partition(":")

    def make(*args: Any) -> Any:
        return getattr(importlib.import_module(module), attribute)(*args)

    return make


def by_stage(specs: Sequence[StageSpec]) -> Mapping[str, StageSpec]:
    """Specs by stage name."""
    return {s.stage.value: s for s in specs}
