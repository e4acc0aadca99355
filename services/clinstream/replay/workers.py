"""A replay run split into worker processes: one `ReplayEngine` per shard of the plan, each with its own checkpoint.

`plan.shards` gives each worker whole partitions (every input topic's range of them); the processor's state is per
partition, so the workers share nothing but the database and the broker, and a participant's rows are written by
one of them. Each worker is a forked process (nothing to import again, no Kafka client open in the parent when it
forks) that runs the same engine, delivery and checkpoint order as a run in one process, into
`shard-<k>.json`. The parent shows the progress, forwards a stop (SIGTERM to the workers, each ends its batch and
checkpoints) and, when they are done, writes the run's `checkpoint.json`: every shard's next offsets, the sum of
their counters, completed when every shard is. A worker that dies stops the others; `--resume` then runs again
only the shards that did not complete, each from its own last checkpoint. A worker whose parent died stops after
its batch in hand.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from clinstream.core.config import Settings
from clinstream.core.constants import EXIT_INTERRUPTED, REPLAY_WORKER_POLL_S
from clinstream.replay import checkpoint as ckpt
from clinstream.replay.checkpoint import Checkpoint
from clinstream.replay.engine import Progress, ReplayOutcome
from clinstream.replay.plan import ReplayPlan, shards


class ReplayWorkerFailed(RuntimeError):
    """A worker process ended without completing or checkpointing its stop; the message names it and its exit."""


def run_in_workers(settings: Settings, plan: ReplayPlan, resumed: Checkpoint | None, *, batch_max: int,
                   checkpoint_every_s: float, max_rate: float | None, progress: Progress,
                   stop: threading.Event) -> ReplayOutcome:
    """Run (or resume) every incomplete shard of `plan` in its own process; the run's merged checkpoint.

    Call it with no Kafka client or database connection open and no other thread started: the workers are forked.
    """
    parts = shards(plan)
    run = resumed or Checkpoint(plan, {r.tp: r.start for r in plan.ranges})
    if resumed is None:
        ckpt.save(settings, run)  # the run exists, with its plan, before any worker starts
    rate = max_rate / len(parts) if max_rate else None
    ctx = multiprocessing.get_context("fork")
    done = ctx.Array("q", len(parts), lock=False)  # records read per shard in this session (one writer each)
    workers: list[BaseProcess] = []
    started = time.monotonic()
    for part in parts:  # a worker whose shard is already complete exits at once (it reads its checkpoint itself)
        proc = ctx.Process(target=_worker, name=f"clinstream-replay-{part.shard}",
                           args=(settings, part, batch_max, checkpoint_every_s, rate, done, os.getpid()))
        proc.start()
        workers.append(proc)
    failed = _supervise(workers, done, progress, stop)
    run.counters = {}
    completed = True
    for part in parts:
        cp = ckpt.load(settings, plan.run_id, part.shard)
        if cp is None:
            completed = False
            continue
        run.next_offsets.update(cp.next_offsets)
        for name, n in cp.counters.items():
            run.counters[name] = run.counters.get(name, 0) + n
        completed = completed and cp.completed
    run.completed = completed
    run.elapsed_s += time.monotonic() - started
    ckpt.save(settings, run)
    if failed:
        raise ReplayWorkerFailed("; ".join(failed))
    return ReplayOutcome(run, not completed)


def _supervise(workers: list[BaseProcess], done: Any, progress: Progress, stop: threading.Event) -> list[str]:
    """Wait for the workers, report their progress, stop them all when asked or when one fails; the failures."""
    reported = [0] * len(done)
    failed: list[str] = []
    stopping = False
    alive = list(workers)

    def report() -> None:
        for k in range(len(done)):
            n = done[k]
            if n > reported[k]:
                progress(n - reported[k])
                reported[k] = n

    while alive:
        wait([p.sentinel for p in alive], timeout=REPLAY_WORKER_POLL_S)
        report()
        for p in [p for p in alive if p.exitcode is not None]:
            alive.remove(p)
            if p.exitcode not in (0, EXIT_INTERRUPTED):
                failed.append(f"worker {p.name} exited with {p.exitcode}")
        if (failed or stop.is_set()) and not stopping:
            stopping = True
            for p in alive:
                p.terminate()  # SIGTERM: the worker ends its batch and checkpoints
    report()
    return failed


def _worker(settings: Settings, plan: ReplayPlan, batch_max: int, checkpoint_every_s: float, max_rate: float | None,
            done: Any, parent: int) -> None:
    """One shard's run in a forked process, from the shard's checkpoint if it has one; exits 0 when complete,
    EXIT_INTERRUPTED when stopped.

    It holds the shard's lock file while it runs, so a resumed run's worker waits for an orphaned worker of the same
    shard to checkpoint and leave, then reads that checkpoint."""
    from clinstream.core.kafka import DurableProducer
    from clinstream.replay.engine import Delivery, ReplayEngine, make_adapter
    from clinstream.replay.specs import SINK

    stop = threading.Event()

    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    shard = plan.shard
    assert shard is not None and SINK.sink is not None
    lock = (ckpt.run_dir(settings, plan.run_id) / f"shard-{shard}.lock").open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the process ends
    resume = ckpt.load(settings, plan.run_id, shard)
    if resume is not None and resume.completed:
        sys.exit(0)

    def advance(n: int) -> None:
        done[shard] += n
        if os.getppid() != parent:  # orphaned: nobody merges or reports; checkpoint and stop
            stop.set()

    producer = DurableProducer(settings)
    delivery = Delivery(settings, plan.run_id, producer, SINK.sink(settings))
    try:
        engine = ReplayEngine(settings, plan, make_adapter(settings, plan.stage, plan.version, plan.participants),
                              delivery, batch_max=batch_max, checkpoint_every_s=checkpoint_every_s,
                              max_rate=max_rate, progress=advance, stop=stop)
        outcome = engine.run(resume)
    finally:
        delivery.close()
        producer.close()
    sys.exit(EXIT_INTERRUPTED if outcome.interrupted else 0)
