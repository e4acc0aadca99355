"""Order, duplicates and batching never change the final features (byte-identical final records)."""

from __future__ import annotations

import numpy as np
import pytest
from features_factories import MIN, clock_block, finals, generate, in_records, latest, run


@pytest.fixture(scope="module", params=[1, 2], ids=["v1", "v2"])
def version(request):  # type: ignore[no-untyped-def]
    return request.param


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return generate(n_participants=2, hours=26, seed=5)


@pytest.fixture(scope="module")
def reference(data, version):  # type: ignore[no-untyped-def]
    last = max(b.record["received_at"] for b in data.blocks)
    outs, state = run(in_records([*data.blocks, clock_block(last)]), batch=400, version=version)
    return finals(outs), latest(outs), state, clock_block(last)


def _shuffled_within(blocks, jitter_ms, seed):  # type: ignore[no-untyped-def]
    """Arrival order with every block delayed by a random 0..jitter (less than the shortest horizon)."""
    rng = np.random.default_rng(seed)
    keys = [b.record["received_at"] + int(rng.integers(0, jitter_ms)) for b in blocks]
    return [blocks[i] for _, i in sorted(zip(keys, range(len(blocks)), strict=True))]


def test_shuffled_within_the_horizon_gives_identical_finals(data, reference, version) -> None:  # type: ignore[no-untyped-def]
    want, want_latest, _, clock = reference
    blocks = _shuffled_within(data.blocks, 30 * MIN, seed=1)
    assert [b.record["block_id"] for b in blocks] != [b.record["block_id"] for b in data.blocks]
    outs, _ = run(in_records([*blocks, clock]), batch=333, version=version)
    got = finals(outs)
    assert got == want
    assert latest(outs) == want_latest


def test_every_block_duplicated_gives_identical_finals(data, reference, version) -> None:  # type: ignore[no-untyped-def]
    want, want_latest, _, clock = reference
    rng = np.random.default_rng(2)
    doubled = []
    pending = []
    for b in data.blocks:  # each block once in order, and again a few blocks later (redelivery)
        doubled.append(b)
        pending.append(b)
        if rng.random() < 0.3:
            doubled.extend(pending)
            pending = []
    doubled.extend(pending)
    assert len(doubled) == 2 * len(data.blocks)
    outs, _ = run(in_records([*doubled, clock]), batch=250, version=version)
    assert finals(outs) == want
    assert latest(outs) == want_latest


def test_batch_size_and_single_record_batches_do_not_matter(data, version) -> None:  # type: ignore[no-untyped-def]
    blocks = data.blocks[:800]
    clock = clock_block(max(b.record["received_at"] for b in blocks))
    want, state = run(in_records([*blocks, clock]), batch=800, version=version)
    outs, state1 = run(in_records([*blocks, clock]), batch=1, version=version)
    assert finals(outs) == finals(want)
    assert state1 == state  # the same durable state too (the clock's open windows and the watermark)
