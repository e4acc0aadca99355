"""Benchmark of the ingest gateway against the real local broker: accepted readings/s and latency per concurrency.

By default it creates a throw-away site (topics + DB schema), registers one device, starts `clinstream gateway`
as a subprocess on a free port, and drives it with an asyncio httpx client at several concurrency levels.
Every counted reading was acknowledged by the broker (acks=all) before its 202. Afterwards it stops the gateway
and removes the site (unless --keep).

    .venv/bin/python scripts/bench_gateway.py                      # heart-rate blocks of 1,000 samples, 20 per request
    .venv/bin/python scripts/bench_gateway.py --payload sim        # the simulator's realistic mix of blocks
    .venv/bin/python scripts/bench_gateway.py --levels 1,8 --seconds 5 --gzip
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import orjson
import psutil

from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.core.topic_admin import apply_topics, delete_site_topics
from clinstream.ingest.credentials import credentials_schema, register_device
from clinstream.store.migrate import migrate
from clinstream_devtools.simulate.profiles import make_participant
from clinstream_devtools.simulate.telemetry import batch_payloads, device_blocks, iso_ms

PARTICIPANT = "P-BENCH01"


@dataclass
class LevelResult:
    concurrency: int
    seconds: float
    requests: int = 0
    readings: int = 0
    errors: dict[int | str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    server_cpu_percent: float = 0.0
    produce_ms: float = float("nan")  # mean time the gateway waited for broker acks per request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hr_bodies(count: int, blocks: int, samples: int, seed: int = 1) -> list[tuple[bytes, int]]:
    """Distinct request bodies of heart-rate blocks at 1 Hz that ended within the last hour."""
    rng = np.random.default_rng(seed)
    now = int(time.time() * 1000)
    offsets = (np.arange(samples) * 1000).tolist()
    out = []
    sequence = 0
    for _ in range(count):
        batch = []
        for _ in range(blocks):
            start = now - 3_600_000 - int(rng.integers(0, 20 * 3_600_000))
            batch.append({"block_id": str(uuid.uuid4()), "participant_id": PARTICIPANT, "sequence": sequence,
                          "start": iso_ms(start), "utc_offset_minutes": 60, "schema": "heart-rate",
                          "unit": "beats/min", "offsets_ms": offsets,
                          "values": np.round(rng.normal(68, 6, samples), 1).tolist()})
            sequence += 1
        out.append((orjson.dumps({"blocks": batch}), blocks * samples))
    return out


def sim_bodies(blocks_per_request: int) -> list[tuple[bytes, int]]:
    """Request bodies of the device simulator's realistic mix (one participant-day, re-labelled)."""
    p = make_participant(1, 1)
    end = (int(time.time() * 1000) // 60_000) * 60_000 - 3_600_000
    blocks = device_blocks(p, end - 86_400_000, end, seed=1)
    out = []
    for _, body in batch_payloads(blocks, blocks_per_request):
        readings = 0
        for block in body["blocks"]:
            block["participant_id"] = PARTICIPANT
            readings += len(block.get("offsets_ms", block.get("episodes", [])))
        out.append((orjson.dumps(body), readings))
    return out


async def run_level(url: str, token: str, bodies: list[tuple[bytes, int]], concurrency: int, seconds: float,
                    use_gzip: bool, server: psutil.Process | None) -> LevelResult:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if use_gzip:
        headers["Content-Encoding"] = "gzip"
        bodies = [(gzip.compress(b, 5), n) for b, n in bodies]
    result = LevelResult(concurrency, seconds)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as client:
        for content, _ in bodies[:concurrency]:  # warm up the connections
            await client.post("/v1/telemetry", content=content, headers=headers)
        stop = time.monotonic() + seconds
        counter = [0]

        async def worker() -> None:
            while time.monotonic() < stop:
                content = bodies[counter[0] % len(bodies)][0]
                counter[0] += 1
                began = time.perf_counter()
                try:
                    response = await client.post("/v1/telemetry", content=content, headers=headers)
                except httpx.TransportError as exc:
                    name = type(exc).__name__
                    result.errors[name] = result.errors.get(name, 0) + 1
                    continue
                elapsed_ms = (time.perf_counter() - began) * 1000
                if response.status_code == 202:
                    result.requests += 1
                    result.readings += int(response.json()["readings_accepted"])
                    result.latencies_ms.append(elapsed_ms)
                else:
                    result.errors[response.status_code] = result.errors.get(response.status_code, 0) + 1

        if server:
            server.cpu_percent(None)
        before = await _produce_totals(client)
        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.monotonic() - began
        if server:
            result.server_cpu_percent = server.cpu_percent(None)
        after = await _produce_totals(client)
        if after[1] > before[1]:
            result.produce_ms = (after[0] - before[0]) / (after[1] - before[1]) * 1000
    return result


async def _produce_totals(client: httpx.AsyncClient) -> tuple[float, float]:
    """(sum of seconds, count) of the gateway's broker-acknowledgement histogram."""
    text = (await client.get("/metrics")).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith('clinstream_gateway_produce_seconds_sum{stream="telemetry"}'):
            total = float(line.split()[-1])
        elif line.startswith('clinstream_gateway_produce_seconds_count{stream="telemetry"}'):
            count = float(line.split()[-1])
    return total, count


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the gateway did not become ready")


def remove_site(settings: Settings) -> None:
    """Delete a bench site's topics, feature-store schema and credential schema."""
    delete_site_topics(settings)
    with connect(settings, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')
        conn.execute(f'DROP SCHEMA IF EXISTS "{credentials_schema(settings.db_schema)}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,4,16,64", help="Concurrency levels (comma-separated).")
    parser.add_argument("--seconds", type=float, default=8.0, help="Duration of each level.")
    parser.add_argument("--payload", choices=("hr", "sim"), default="hr")
    parser.add_argument("--blocks", type=int, default=20, help="Blocks per request.")
    parser.add_argument("--samples", type=int, default=1000, help="Samples per heart-rate block (--payload hr).")
    parser.add_argument("--gzip", action="store_true", help="gzip request bodies.")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of the gateway.")
    parser.add_argument("--keep", action="store_true", help="Keep the bench site's topics and schema.")
    args = parser.parse_args()

    settings = Settings(site_id="bench-" + uuid.uuid4().hex[:8])
    apply_topics(settings)
    migrate(settings)
    with connect(settings) as conn:
        token = register_device(conn, "BENCH-DEVICE-1", PARTICIPANT).token
        conn.commit()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CLINSTREAM_SITE_ID": settings.site_id, "CLINSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "CLINSTREAM_DATABASE_URL": settings.database_url}
    log_path = Path(f"/tmp/clinstream-bench-gateway-{port}.log")  # noqa: S108 - a local bench log
    clinstream = str(Path(sys.executable).with_name("clinstream"))
    with log_path.open("wb") as log:
        proc = subprocess.Popen([clinstream, "gateway", "--no-prepare", "--port", str(port), "--log-level",
                                 "warning", "--workers", str(args.workers)], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_ready(url, proc)
        server = psutil.Process(proc.pid) if args.workers == 1 else None
        bodies = hr_bodies(64, args.blocks, args.samples) if args.payload == "hr" else sim_bodies(args.blocks)
        avg_readings = sum(n for _, n in bodies) / len(bodies)
        avg_kb = sum(len(b) for b, _ in bodies) / len(bodies) / 1024
        print(f"site {settings.site_id}; payload {args.payload}: {len(bodies)} distinct bodies, "
              f"{avg_readings:.0f} readings and {avg_kb:.0f} KiB (JSON) per request; gzip={args.gzip}; "
              f"gateway workers={args.workers}; {os.cpu_count()} CPUs, broker on the same machine")
        print(f"{'conc':>5} {'req/s':>8} {'readings/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'ack ms':>7} "
              f"{'gw CPU%':>8}  errors   (load average before: {os.getloadavg()[0]:.1f})")
        for level in (int(x) for x in args.levels.split(",")):
            r = asyncio.run(run_level(url, token, bodies, level, args.seconds, args.gzip, server))
            lat = np.asarray(r.latencies_ms) if r.latencies_ms else np.asarray([float("nan")])
            print(f"{level:>5} {r.requests / r.seconds:>8.1f} {r.readings / r.seconds:>12,.0f} "
                  f"{np.percentile(lat, 50):>8.1f} {np.percentile(lat, 99):>8.1f} {r.produce_ms:>7.1f} "
                  f"{r.server_cpu_percent:>8.0f}  "
                  f"{r.errors or '-'}", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        if not args.keep:
            remove_site(settings)


if __name__ == "__main__":
    main()
