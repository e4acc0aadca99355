"""Benchmark of the gateway's bad day (issue 17): what well-behaved devices see while misbehaving clients hammer it.

Two phases against one `clinstream gateway` process on a throw-away site, with per-credential limits set:
  1. baseline: N well-behaved devices, each posting one heart-rate block (60 readings) every --interval seconds;
  2. bad day: the same devices, plus, each in its own process so they do not share the load generator's loop,
     - a device retrying as fast as it can and ignoring Retry-After (it is over its limit: 429s),
     - a revoked token hammering (401s, answered from the credential cache after the first),
     - a client sending gzip bombs (a 32 KiB body that inflates past the decoded-size limit: 413s).
It reports the good devices' p50/p99 latency and 202 rate per phase, and each bad client's answers.
Issue 17's bar: p99 and 202 rate within 10 % of the baseline. Run it at full scale on a machine of its own:

    .venv/bin/python scripts/bench_badday.py                          # 1,000 devices, 10 s interval, 60 s phases
    .venv/bin/python scripts/bench_badday.py --devices 100 --seconds 20 --interval 5     # a small run
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from bench_gateway import free_port, remove_site, wait_ready
from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.core.topic_admin import apply_topics
from clinstream.ingest.credentials import register_device, revoke_devices
from clinstream.store.migrate import migrate
from clinstream_devtools.simulate.telemetry import iso_ms

READINGS_PER_BLOCK = 60
# Site limits of the run: far above a good device's rate (one request per interval), so only the bad ones hit them.
LIMITS = {"CLINSTREAM_INGEST_MAX_REQUESTS_PER_MIN": "60", "CLINSTREAM_INGEST_MAX_READINGS_PER_MIN": "60000"}


def _block(participant: str, start_ms: int) -> bytes:
    return orjson.dumps({"blocks": [{
        "block_id": str(uuid.uuid4()), "participant_id": participant, "sequence": 1, "start": iso_ms(start_ms),
        "utc_offset_minutes": 60, "schema": "heart-rate", "unit": "beats/min",
        "offsets_ms": [i * 1000 for i in range(READINGS_PER_BLOCK)],
        "values": [60.0 + i % 7 for i in range(READINGS_PER_BLOCK)]}]})


async def _good_device(client: httpx.AsyncClient, token: str, participant: str, interval_s: float, until: float,
                       latencies: list[float], statuses: Counter[int | str]) -> None:
    await asyncio.sleep(random.random() * interval_s)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    while time.monotonic() < until:
        began = time.monotonic()
        content = _block(participant, int(time.time() * 1000) - 600_000)
        try:
            r = await client.post("/v1/telemetry", content=content, headers=headers)
            statuses[r.status_code] += 1
        except httpx.HTTPError as exc:
            statuses[type(exc).__name__] += 1
        latencies.append((time.monotonic() - began) * 1000)
        await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - began)))


async def _phase(url: str, tokens: list[tuple[str, str]], interval_s: float, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[int | str] = Counter()
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:
        until = time.monotonic() + seconds
        await asyncio.gather(*(_good_device(client, t, p, interval_s, until, latencies, statuses) for t, p in tokens))
    lat = np.asarray(latencies) if latencies else np.asarray([float("nan")])
    total = sum(statuses.values())
    return {"requests": total, "rate_202": statuses[202] / total if total else float("nan"),
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "statuses": {str(k): v for k, v in statuses.items()}}


def _bad_client(kind: str, url: str, token: str, participant: str, seconds: float, out: Any) -> None:
    """One misbehaving client in its own process: as fast as it can, never waiting for Retry-After."""
    statuses: Counter[str] = Counter()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if kind == "gzip_bomb":
        headers["Content-Encoding"] = "gzip"
        content = gzip.compress(b'{"blocks": [' + b" " * (64 * 1024 * 1024) + b"]}", 9)
    until = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=30.0) as client:
        while time.monotonic() < until:
            if kind != "gzip_bomb":
                content = _block(participant, int(time.time() * 1000) - 600_000)
            try:
                statuses[str(client.post("/v1/telemetry", content=content, headers=headers).status_code)] += 1
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
    out.put((kind, dict(statuses), len(content)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000, help="Well-behaved devices.")
    parser.add_argument("--interval", type=float, default=10.0, help="Seconds between a good device's requests.")
    parser.add_argument("--seconds", type=float, default=60.0, help="Duration of each phase.")
    parser.add_argument("--json", type=Path, help="Also write the figures to this JSON file.")
    args = parser.parse_args()

    settings = Settings(site_id="badday-" + uuid.uuid4().hex[:8])
    apply_topics(settings)
    migrate(settings)
    with connect(settings, autocommit=True) as conn:
        good = [(register_device(conn, f"BADDAY-{i:05d}", f"P-BD{i:05d}").token, f"P-BD{i:05d}")
                for i in range(args.devices)]
        retrier = register_device(conn, "BADDAY-RETRIER", "P-BDRETRY").token
        bomber = register_device(conn, "BADDAY-BOMBER", "P-BDBOMB").token
        revoked = register_device(conn, "BADDAY-REVOKED", "P-BDREVOKED")
        revoke_devices(conn, key_id=revoked.key_id)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **LIMITS, "CLINSTREAM_SITE_ID": settings.site_id,
           "CLINSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "CLINSTREAM_DATABASE_URL": settings.database_url}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("clinstream")), "gateway", "--no-prepare", "--port",
                             str(port), "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, proc)
        print(f"{args.devices} good devices, one request of {READINGS_PER_BLOCK} readings every {args.interval:g} s "
              f"each; phases of {args.seconds:g} s; {os.cpu_count()} CPUs shared with the broker and the database "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        baseline = asyncio.run(_phase(url, good, args.interval, args.seconds))
        print(f"baseline: {json.dumps(baseline)}", flush=True)
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        bad = [ctx.Process(target=_bad_client, args=(kind, url, token, participant, args.seconds, out))
               for kind, token, participant in (("fast_retrier", retrier, "P-BDRETRY"),
                                                 ("revoked_token", revoked.token, "P-BDREVOKED"),
                                                 ("gzip_bomb", bomber, "P-BDBOMB"))]
        for p in bad:
            p.start()
        badday = asyncio.run(_phase(url, good, args.interval, args.seconds))
        bad_results = {kind: {"statuses": statuses, "body_bytes": size}
                       for kind, statuses, size in (out.get(timeout=120) for _ in bad)}
        for p in bad:
            p.join(30)
        print(f"bad day:  {json.dumps(badday)}")
        print(f"bad clients: {json.dumps(bad_results)}")
        p99_change = badday["p99_ms"] / baseline["p99_ms"] - 1
        rate_change = badday["rate_202"] / baseline["rate_202"] - 1
        print(f"good devices: p99 {baseline['p99_ms']:.1f} -> {badday['p99_ms']:.1f} ms ({p99_change:+.1%}), "
              f"202 rate {baseline['rate_202']:.2%} -> {badday['rate_202']:.2%} ({rate_change:+.1%}); "
              f"issue 17's bar: both within 10 %")
        if args.json:
            args.json.write_text(json.dumps({"devices": args.devices, "interval_s": args.interval,
                                             "seconds": args.seconds, "baseline": baseline, "bad_day": badday,
                                             "bad_clients": bad_results}, indent=2))
    finally:
        proc.terminate()
        proc.wait(15)
        remove_site(settings)


if __name__ == "__main__":
    main()
