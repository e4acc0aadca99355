"""`clinstream simulate devices|lims`: synthetic wearables and a synthetic LIMS sending to the gateway over HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from clinstream.core.config import get_settings
from clinstream.core.logging import configure_logging
from clinstream.core.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, now_ms
from clinstream_devtools.simulate.client import GatewayClient, RunStats, run_devices, run_lims
from clinstream_devtools.simulate.lims import LimsOptions
from clinstream_devtools.simulate.profiles import make_cohort
from clinstream_devtools.simulate.provision import device_tokens, lims_token
from clinstream_devtools.simulate.telemetry import DeviceOptions

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()
_UNITS = {"s": 1000, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS, "w": 7 * DAY_MS}


def parse_duration(text: str) -> int:
    """'90m', '12h', '1d', '2w', '1d12h' -> milliseconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != text.strip().lower():
        raise typer.BadParameter("use e.g. 30m, 12h, 1d, 2w or 1d12h")
    return int(sum(float(n) * _UNITS[u] for n, u in parts))


def _window(duration: str, start: str | None) -> tuple[int, int]:
    length = parse_duration(duration)
    if start is None:
        end = now_ms() - MINUTE_MS
        return end - length, end
    begin = int(datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp() * 1000)
    if begin + length > now_ms():
        raise typer.BadParameter("the simulated window must end in the past (the gateway refuses future data)")
    return begin, begin + length


def _gateway_url(gateway: str | None) -> str:
    if gateway:
        return gateway
    settings = get_settings()
    return f"http://{settings.gateway_host}:{settings.gateway_port}"


async def _require_gateway(client: GatewayClient) -> None:
    if not await client.healthy():
        console.print(f"[red]error:[/] no gateway answers at {client.http.base_url} (start it with "
                      "`clinstream gateway`)", highlight=False)
        raise typer.Exit(2)


def _report(stats: RunStats, what: str, seconds: float) -> None:
    console.print(f"{what}: {stats.requests} requests ({dict(sorted(stats.statuses.items()))}), "
                  f"{stats.accepted} accepted, {stats.duplicates} duplicates, {stats.rejected} rejected, "
                  f"{stats.readings} readings, {stats.retried_requests} retried, {stats.failed_requests} failed, "
                  f"{seconds:.1f} s", highlight=False)


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                    TimeElapsedColumn(), console=console, transient=False)


def _send_with_progress(what: str, connect: Callable[[], GatewayClient], start_ms: int, end_ms: int,
                        send: Callable[[GatewayClient, Callable[[int], None]], Awaitable[RunStats]]) -> None:
    """Run `send` against the gateway behind a progress bar over the simulated window; report, exit 1 on failures."""

    async def main() -> RunStats:
        client = connect()
        try:
            await _require_gateway(client)
            with _progress() as bar:
                task = bar.add_task(what, total=end_ms - start_ms)
                stats = await send(client, lambda t: bar.update(task, completed=t - start_ms))
                bar.update(task, completed=end_ms - start_ms)
                return stats
        finally:
            await client.close()

    began = time.monotonic()
    stats = asyncio.run(main())
    _report(stats, what, time.monotonic() - began)
    raise typer.Exit(1 if stats.failed_requests else 0)


# Options both simulators take.
_SPEEDUP = typer.Option(0.0, help="Simulated seconds per wall-clock second; 0 = as fast as possible.")
_START = typer.Option(None, help="Window start (RFC 3339); default: now minus the duration.")
_GATEWAY = typer.Option(None, help="Gateway URL; default from CLINSTREAM_GATEWAY_HOST/PORT.")
_FIRST = typer.Option(1, min=0, help="Index of the first participant.")


@app.command("devices")
def devices(
    participants: int = typer.Option(10, min=1, help="Number of simulated participants (one device each)."),
    duration: str = typer.Option("1d", help="Simulated time span, e.g. 6h, 1d, 2w."),
    speedup: float = _SPEEDUP,
    seed: int = typer.Option(1, help="Seed of the cohort (same seed, same people and data)."),
    start: str | None = _START,
    gateway: str | None = _GATEWAY,
    prefix: str = typer.Option("P", help="Participant id prefix (P -> P-000001)."),
    first: int = _FIRST,
    credentials: Path | None = typer.Option(None, help="JSON file {device_id: token}; default: register the "
                                                       "simulated devices in the site's database."),
    batch_blocks: int = typer.Option(100, min=1, help="Blocks per request."),
    concurrency: int = typer.Option(4, min=1, help="Requests in flight."),
    hr_period_s: int = typer.Option(5, min=1, help="Heart-rate sampling period in seconds."),
    acceleration: bool = typer.Option(False, help="Also send short 25 Hz acceleration windows."),
    use_gzip: bool = typer.Option(True, "--gzip/--no-gzip", help="gzip request bodies."),
) -> None:
    """Simulated wearables: heart rate, RR intervals, steps, SpO2, skin temperature, sleep; with flares."""
    configure_logging("simulate")
    start_ms, end_ms = _window(duration, start)
    cohort = make_cohort(seed, participants, first_index=first, prefix=prefix)
    tokens = json.loads(credentials.read_text()) if credentials else device_tokens(get_settings(), cohort)
    options = DeviceOptions(hr_period_s=hr_period_s, acceleration=acceleration)

    async def send(client: GatewayClient, progress: Callable[[int], None]) -> RunStats:
        return await run_devices(client, cohort, tokens, start_ms, end_ms, seed=seed, options=options, speedup=speedup,
                                 batch_blocks=batch_blocks, concurrency=concurrency, progress=progress)

    _send_with_progress("devices", lambda: GatewayClient(_gateway_url(gateway), use_gzip=use_gzip), start_ms, end_ms,
                        send)


@app.command("lims")
def lims(
    participants: int = typer.Option(10, min=1, help="Number of simulated participants."),
    duration: str = typer.Option("30d", help="Simulated time span, e.g. 7d, 30d."),
    speedup: float = _SPEEDUP,
    seed: int = typer.Option(1, help="Seed of the cohort (use the devices' seed: same people, same flares)."),
    start: str | None = _START,
    gateway: str | None = _GATEWAY,
    prefix: str = typer.Option("P", help="Participant id prefix."),
    first: int = _FIRST,
    lims_key: str | None = typer.Option(None, envvar="CLINSTREAM_LIMS_KEY", show_default=False,
                                        help="LIMS API key; default: register a new one in the site's database."),
    visit_every_days: float = typer.Option(7.0, min=0.5, help="Mean days between routine visits."),
    bad_fraction: float = typer.Option(0.02, min=0.0, max=1.0, help="Share of deliberately broken events."),
    withdraw: int = typer.Option(0, min=0, help="How many participants withdraw consent at the end."),
    batch_events: int = typer.Option(200, min=1, help="Events per request."),
) -> None:
    """Simulated LIMS: consent, sample lifecycles with SPREC-relevant delays, CRP results, some bad records."""
    configure_logging("simulate")
    start_ms, end_ms = _window(duration, start)
    cohort = make_cohort(seed, participants, first_index=first, prefix=prefix)
    token = lims_key or lims_token(get_settings())
    withdrawing = frozenset(p.index for p in cohort[:withdraw])

    options = LimsOptions(visit_every_days=visit_every_days, bad_fraction=bad_fraction)

    async def send(client: GatewayClient, progress: Callable[[int], None]) -> RunStats:
        stats, _ = await run_lims(client, cohort, token, start_ms, end_ms, seed=seed, options=options,
                                  withdrawing=withdrawing, speedup=speedup, batch_events=batch_events,
                                  progress=progress)
        return stats

    _send_with_progress("lims", lambda: GatewayClient(_gateway_url(gateway)), start_ms, end_ms, send)
