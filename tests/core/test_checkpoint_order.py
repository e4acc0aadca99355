"""The host's one checkpoint order (outputs, state, offsets) and its crash points, for every hosting mode."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from clinstream.core.crash_points import CrashPoint, CrashPoints
from clinstream.core.stream_host import checkpoint_in_order


class _Died(Exception):
    """Stands for the process exit at a crash point."""


class _RecordingCrash(CrashPoints):
    def __init__(self, tmp: Path, point: CrashPoint | None, steps: list[str]) -> None:
        super().__init__(tmp, environ={"CLINSTREAM_CRASH_POINT": point.value} if point else {})
        self.steps = steps

    def reached(self, point: CrashPoint, counters: Mapping[str, int]) -> None:
        self.steps.append(point.value)
        if self.should_fire(point, counters):
            raise _Died(point.value)


_ALL = ["after-process", "outputs", "after-outputs", "state", "after-state-before-ack", "offsets"]


def test_the_order_is_outputs_then_state_then_offsets(tmp_path: Path) -> None:
    steps: list[str] = []
    crash = _RecordingCrash(tmp_path, None, steps)
    checkpoint_in_order(crash, {}, lambda: steps.append("outputs"), lambda: steps.append("state"),
                        lambda: steps.append("offsets"))
    assert steps == _ALL


@pytest.mark.parametrize("point", list(CrashPoint))
def test_a_crash_point_stops_the_order_before_every_later_step(tmp_path: Path, point: CrashPoint) -> None:
    steps: list[str] = []
    crash = _RecordingCrash(tmp_path, point, steps)
    with pytest.raises(_Died):
        checkpoint_in_order(crash, {}, lambda: steps.append("outputs"), lambda: steps.append("state"),
                            lambda: steps.append("offsets"))
    assert steps == _ALL[:_ALL.index(point.value) + 1]  # nothing after the point ran


def test_a_stage_qualified_crash_point_stops_only_that_stage(tmp_path: Path) -> None:
    env = {"CLINSTREAM_CRASH_POINT": "after-process", "CLINSTREAM_CRASH_WHEN": "features:erasures"}
    assert not CrashPoints(tmp_path, env, stage="store").should_fire(CrashPoint.AFTER_PROCESS, {"erasures": 1})
    assert not CrashPoints(tmp_path, env, stage="features").should_fire(CrashPoint.AFTER_PROCESS, {"records": 1})
    assert CrashPoints(tmp_path, env, stage="features").should_fire(CrashPoint.AFTER_PROCESS, {"erasures": 1})
