"""`clinstream replay`: re-run the pseudonymise or features processor over a range of its input topics."""

from __future__ import annotations

import signal
import threading
from enum import StrEnum
from types import FrameType
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from clinstream.core.collector import configure_collector
from clinstream.core.config import Settings, get_settings
from clinstream.core.constants import EXIT_INTERRUPTED, REPLAY_BATCH_MAX, REPLAY_CHECKPOINT_EVERY_S
from clinstream.core.timeutil import from_ms
from clinstream.core.topics import Stage, dlq
from clinstream.replay import checkpoint as ckpt
from clinstream.replay.plan import (
    PlanError,
    ReplayPlan,
    check_run_id,
    make_plan,
    new_run_id,
    parse_instant,
    parse_offsets,
    shards,
)
from clinstream.replay.specs import live_feature_version

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()
err = Console(stderr=True)


class ReplayStageName(StrEnum):
    """Stages a replay can re-run."""

    pseudonymise = "pseudonymise"
    features = "features"


class _Rate(ProgressColumn):
    """Records per second of a task."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rec/s" if speed else "- rec/s", style="progress.data.speed")


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


def _targets(settings: Settings, plan: ReplayPlan) -> list[str]:
    site = settings.site_id
    if plan.stage == Stage.FEATURES.value:
        where = (f"version {plan.version} beside the live version {live_feature_version()}" if not plan.in_place
                 else f"in place (version {plan.version}, idempotent upserts)")
        return [f"feature store {settings.db_schema}.wearable_features and .sample_features: {where} "
                "(written directly by the replay with the store writer)",
                f"dead letters: {dlq(Stage.FEATURES).name(site)} (header clinstream.replay-run)",
                "late blocks: counted, not re-published (their bytes stay in the input topic)"]
    return ["in place: the live pseudonymised, consent, erasure and audit topics "
            "(downstream stages deduplicate by block, event, audit and request id)",
            f"dead letters: {dlq(Stage.PSEUDONYMISE).name(site)} (header clinstream.replay-run)"]


def _print_plan(settings: Settings, plan: ReplayPlan, *, dry_run: bool) -> None:
    title = "Dry run: nothing is read or written" if dry_run else "Replay plan"
    table = Table("topic", "partition", "from offset", "to offset (excl.)", "records (est.)", title=title)
    for r in plan.ranges:
        table.add_row(r.topic, str(r.partition), str(r.start), str(r.end), f"{r.count:,}")
    table.add_row("total", "", "", "", f"{plan.estimate:,}", style="bold")
    console.print(table)
    console.print(f"run id:          {plan.run_id}")
    console.print(f"stage:           {plan.stage}")
    if plan.from_ms is not None or plan.to_ms is not None:
        frm = from_ms(plan.from_ms).isoformat() if plan.from_ms is not None else "beginning"
        to = from_ms(plan.to_ms).isoformat() if plan.to_ms is not None else "current end"
        console.print(f"record times:    {frm} .. {to} (Kafka record timestamps)")
    console.print(f"participants:    {len(plan.participants) or 'all'}")
    console.print(f"consumer group:  {plan.group_id} (assign() only; live groups untouched)")
    console.print(f"checkpoint:      {ckpt.checkpoint_path(settings, plan.run_id)}")
    if plan.workers > 1:
        parts = shards(plan)
        split = "; ".join(f"{p.shard}: " + ",".join(str(q) for q in sorted({r.partition for r in p.ranges}))
                          for p in parts)
        console.print(f"workers:         {len(parts)} processes by partition ({split}), "
                      f"checkpoints shard-<k>.json beside it")
    for line in _targets(settings, plan):
        console.print(f"target:          {line}")


def _summary(cp: ckpt.Checkpoint, interrupted: bool) -> None:
    c = cp.counters
    table = Table("", "", title="Replay interrupted (resumable)" if interrupted else "Replay complete")
    rows: list[tuple[str, Any]] = [
        ("records read", c.get("records_read", 0)),
        ("readings", c.get("readings", 0)),
        ("feature records emitted", c.get("feature_records_delivered", 0)),
        ("features written (rows changed)", c.get("features_written", 0)),
        ("features unchanged (already stored)", c.get("features_unchanged", 0)),
        ("records dead-lettered", c.get("dead_lettered", 0)),
        ("late blocks (not re-published)", c.get("late_not_republished", 0)),
        ("records produced", c.get("produced", 0)),
        ("filtered out (participants)", c.get("filtered_out", 0)),
    ]
    for name, value in rows:
        if value or name in ("records read", "records dead-lettered") or name.startswith("features written"):
            table.add_row(name, f"{value:,}")
    elapsed = max(cp.elapsed_s, 1e-9)
    table.add_row("elapsed", f"{cp.elapsed_s:,.1f} s")
    table.add_row("rate", f"{c.get('records_read', 0) / elapsed:,.0f} records/s, "
                          f"{c.get('readings', 0) / elapsed:,.0f} readings/s")
    console.print(table)


@app.command()
def replay(
    stage: ReplayStageName | None = typer.Option(None, "--stage", help="Stage whose processor re-runs."),
    from_: str | None = typer.Option(None, "--from", help="ISO instant: first record time (inclusive)."),
    to: str | None = typer.Option(None, "--to", help="ISO instant: last record time (exclusive)."),
    offsets: str | None = typer.Option(None, "--offsets", help="P:START-END or TOPIC:P:START-END, comma-separated "
                                                                "(end exclusive; empty end = now)."),
    participant: list[str] = typer.Option([], "--participant", help="Only this pseudonym (repeatable)."),
    version: int | None = typer.Option(None, "--version", min=1,
                                       help="Write features as this version, beside the live one."),
    in_place: bool = typer.Option(False, "--in-place", help="Write over the live version (idempotent store)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be read and written; read nothing."),
    resume: str | None = typer.Option(None, "--resume", help="Continue an interrupted run by its run id."),
    run_id: str | None = typer.Option(None, "--run-id", help="Id of a new run (default: time-based)."),
    batch_size: int = typer.Option(REPLAY_BATCH_MAX, "--batch-size", min=1),
    checkpoint_every: float = typer.Option(REPLAY_CHECKPOINT_EVERY_S, "--checkpoint-every", min=0.0,
                                           help="Seconds between checkpoints (0: after every batch)."),
    max_rate: float | None = typer.Option(None, "--max-rate", min=1.0,
                                          help="At most this many records/s (spare the broker and database)."),
    workers: int = typer.Option(1, "--workers", min=1,
                                help="Processes, each replaying whole partitions (features; at most the partition "
                                     "count). Kept by --resume."),
) -> None:
    """Re-run a stage's processor over a range of its input topics, into a versioned target or in place.

    Uses its own consumer group with assign(), so the live consumers' offsets and lag are untouched.
    """
    settings = get_settings()
    resumed: ckpt.Checkpoint | None = None
    try:
        if resume is not None:
            resumed = ckpt.load(settings, check_run_id(resume))
            if resumed is None:
                raise _fail(f"no checkpoint for run {resume} under {ckpt.run_dir(settings, resume)}")
            if (any(v is not None for v in (stage, from_, to, offsets, version, run_id)) or participant or in_place
                    or workers != 1):
                err.print("note: --resume continues the stored plan; the other range/target options are ignored")
            plan = resumed.plan
        else:
            plan = _new_plan(settings, stage, from_, to, offsets, participant, version, in_place,
                             check_run_id(run_id) if run_id else new_run_id(), workers)
    except PlanError as exc:
        raise _fail(str(exc)) from None
    _print_plan(settings, plan, dry_run=dry_run)
    if dry_run:
        return
    if resumed is not None and resumed.completed:
        console.print(f"run {plan.run_id} is already complete")
        _summary(resumed, False)
        return
    outcome = _execute(settings, plan, resumed, batch_size, checkpoint_every, max_rate)
    _summary(outcome.checkpoint, outcome.interrupted)
    if outcome.interrupted:
        console.print(f"resume with: clinstream replay --resume {plan.run_id}")
        raise typer.Exit(EXIT_INTERRUPTED)


def _new_plan(settings: Settings, stage: ReplayStageName | None, from_: str | None, to: str | None,
              offsets: str | None, participants: list[str], version: int | None, in_place: bool,
              run_id: str, workers: int) -> ReplayPlan:
    from clinstream.core.stream_host import tool_consumer
    from clinstream.replay.engine import make_adapter

    if stage is None:
        raise PlanError("--stage is required (or --resume <run id>)")
    if ckpt.load(settings, run_id) is not None:
        raise PlanError(f"run {run_id} exists; use --resume {run_id} or another --run-id")
    if stage is ReplayStageName.features:
        if (version is None) == (not in_place):
            raise PlanError("features: give --version N (a new version beside the live one) or --in-place")
        if version is not None and version == live_feature_version():
            raise PlanError(f"version {live_feature_version()} is the live version: say --in-place to overwrite it")
        target = version if version is not None else live_feature_version()
    else:
        if version is not None or not in_place:
            raise PlanError("pseudonymise has no versions: its replay writes into the live pseudonymised topics; "
                            "say --in-place")
        target = 0
    adapter = make_adapter(settings, stage.value, target, participants)
    topics = adapter.input_topics()
    consumer = tool_consumer(settings, f"clinstream-{settings.site_id}-replay-planner")
    try:
        return make_plan(consumer, run_id=run_id, site_id=settings.site_id, stage=stage.value, topics=topics,
                         version=target, in_place=in_place,
                         from_ms=parse_instant(from_) if from_ else None, to_ms=parse_instant(to) if to else None,
                         offsets=parse_offsets(offsets, topics[0]) if offsets else None,
                         participants=participants, key_partitioned=adapter.key_partitioned, workers=workers)
    finally:
        consumer.close()


_COLUMNS = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn())


def _done_before(plan: ReplayPlan, resumed: ckpt.Checkpoint | None) -> int:
    """Records of the plan already read by the run being resumed."""
    return sum(n - r.start for r in plan.ranges for tp, n in (resumed.next_offsets.items() if resumed else [])
               if tp == r.tp)


def _execute(settings: Settings, plan: ReplayPlan, resumed: ckpt.Checkpoint | None, batch_size: int,
             checkpoint_every: float, max_rate: float | None) -> Any:
    from clinstream.core.kafka import DurableProducer
    from clinstream.replay.engine import Delivery, ReplayEngine, make_adapter
    from clinstream.replay.specs import SINK

    configure_collector()  # before the workers are forked: they inherit it
    stop = threading.Event()

    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()  # finish the batch in hand, checkpoint, exit

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if plan.workers > 1:
        return _execute_in_workers(settings, plan, resumed, batch_size, checkpoint_every, max_rate, stop)
    producer = DurableProducer(settings)
    assert SINK.sink is not None
    delivery = Delivery(settings, plan.run_id, producer, SINK.sink(settings))
    done_before = _done_before(plan, resumed)
    try:
        with Progress(*_COLUMNS, console=err) as progress:
            task = progress.add_task(f"replay {plan.stage}", total=plan.estimate, completed=done_before)
            engine = ReplayEngine(settings, plan, make_adapter(settings, plan.stage, plan.version, plan.participants),
                                  delivery, batch_max=batch_size, checkpoint_every_s=checkpoint_every,
                                  max_rate=max_rate, progress=lambda n: progress.advance(task, n), stop=stop)
            outcome = engine.run(resumed)
            if not outcome.interrupted:
                progress.update(task, total=progress.tasks[0].completed)
        return outcome
    finally:
        delivery.close()
        producer.close()


def _execute_in_workers(settings: Settings, plan: ReplayPlan, resumed: ckpt.Checkpoint | None, batch_size: int,
                        checkpoint_every: float, max_rate: float | None, stop: threading.Event) -> Any:
    """`_execute` for a plan split into worker processes (`replay.workers`); a failed worker exits 1, resumable."""
    from clinstream.replay.workers import ReplayWorkerFailed, run_in_workers

    progress = Progress(*_COLUMNS, console=err)
    task = progress.add_task(f"replay {plan.stage} ({len(shards(plan))} workers)", total=plan.estimate,
                             completed=_done_before(plan, resumed))
    try:
        # the workers are forked before the progress display starts its thread
        outcome = run_in_workers(settings, plan, resumed, batch_max=batch_size, checkpoint_every_s=checkpoint_every,
                                 max_rate=max_rate, progress=lambda n: _advance(progress, task, n), stop=stop)
    except ReplayWorkerFailed as exc:
        progress.stop()
        err.print(f"[red]error:[/red] {exc}; resume with: clinstream replay --resume {plan.run_id}")
        raise typer.Exit(1) from None
    if not outcome.interrupted:
        progress.update(task, total=progress.tasks[0].completed)
    progress.stop()
    return outcome


def _advance(progress: Progress, task: Any, n: int) -> None:
    if not progress.live.is_started:
        progress.start()
    progress.advance(task, n)
