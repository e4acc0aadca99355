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
import gzip
import http.client
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench_gateway import free_port, remove_site, wait_ready
from bench_load import Loader, build_requests, iso_ms
from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.core.topic_admin import apply_topics
from clinstream.ingest.credentials import register_device, revoke_devices
from clinstream.store.migrate import migrate

READINGS_PER_BLOCK = 60
BAD_KINDS = ("fast_retrier", "revoked_token", "gzip_bomb")
# Site limits of the run: far above a good device's rate (one request per interval), so only the bad ones hit them.
LIMITS = {"CLINSTREAM_INGEST_MAX_REQUESTS_PER_MIN": "60", "CLINSTREAM_INGEST_MAX_READINGS_PER_MIN": "60000"}


def _block(participant: str, start_ms: int) -> bytes:
    return orjson.dumps({"blocks": [{
        "block_id": str(uuid.uuid4()), "participant_id": participant, "sequence": 1, "start": iso_ms(start_ms),
        "utc_offset_minutes": 60, "schema": "heart-rate", "unit": "beats/min",
        "offsets_ms": [i * 1000 for i in range(READINGS_PER_BLOCK)],
        "values": [60.0 + i % 7 for i in range(READINGS_PER_BLOCK)]}]})


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _phase(port: int, devices: list[tuple[str, str, int]], interval_s: float, seconds: float, first_round: int,
           processes: int, threads: int) -> dict[str, Any]:
    """One phase of the good devices: each sends one pre-built block per interval, on an open-loop schedule.

    The lean loader of the end-to-end benchmark sends them (pre-built gzip bodies, keep-alive `http.client`
    connections in forked processes), so its own cost does not mask the gateway's; its CPU is reported.
    """
    rounds = range(first_round, first_round + max(1, round(seconds / interval_s)))
    t0_ms = int(time.time() * 1000) - 3_600_000
    requests = build_requests(devices, t0_ms, 1, rounds)
    loader = Loader("127.0.0.1", port, processes, threads)
    loader.prepare(requests, seconds + 30.0, rate_rps=len(devices) / interval_s)
    result = loader.run()
    lat = np.asarray(result.response_s or [np.nan]) * 1000
    return {"rounds": len(rounds), "requests": result.requests, "scheduled": len(requests),
            "rate_202": result.statuses.get(202, 0) / result.requests if result.requests else float("nan"),
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "achieved_rps": result.requests / result.seconds, "loader_cpu_s": result.cpu_s,
            "statuses": {str(k): v for k, v in sorted(result.statuses.items())}}


def _bad_client(kind: str, port: int, token: str, participant: str, hammering: Any, stop: Any, out: Any) -> None:
    """One misbehaving client in its own process: as fast as it can, never waiting for Retry-After.

    It sets `hammering` after its first answer, so the measured phase starts only once every bad client is at
    full speed (a spawned process's start-up is not part of the bad day), and runs until `stop`. It runs at the
    lowest CPU priority: at a site the bad clients are elsewhere on the internet, and only the gateway's work for
    them should compete with the good devices for this machine's cores."""
    os.nice(19)
    statuses: Counter[str] = Counter()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    content = _block(participant, int(time.time() * 1000) - 600_000)
    if kind == "gzip_bomb":
        headers["Content-Encoding"] = "gzip"
        content = gzip.compress(b'{"blocks": [' + b" " * (64 * 1024 * 1024) + b"]}", 9)
    cpu0 = sum(os.times()[:2])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        try:
            conn.request("POST", "/v1/telemetry", content, headers)
            resp = conn.getresponse()
            resp.read()
            statuses[str(resp.status)] += 1
            hammering.set()
        except (OSError, http.client.HTTPException) as exc:
            statuses[type(exc).__name__] += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.close()
    out.put((kind, dict(statuses), len(content), sum(os.times()[:2]) - cpu0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000, help="Well-behaved devices.")
    parser.add_argument("--interval", type=float, default=10.0, help="Seconds between a good device's requests.")
    parser.add_argument("--seconds", type=float, default=60.0, help="Duration of each phase.")
    parser.add_argument("--load-processes", type=int, default=2, help="Loader processes for the good devices.")
    parser.add_argument("--load-threads", type=int, default=8, help="Keep-alive connections per loader process.")
    parser.add_argument("--json", type=Path, help="Also write the figures to this JSON file.")
    args = parser.parse_args()

    settings = Settings(site_id="badday-" + uuid.uuid4().hex[:8])
    apply_topics(settings)
    migrate(settings)
    with connect(settings, autocommit=True) as conn:
        good = [(f"P-BD{i:05d}", register_device(conn, f"BADDAY-{i:05d}", f"P-BD{i:05d}").token, 60)
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
        gateway_cpu0 = _process_cpu_s(proc.pid)
        baseline = _phase(port, good, args.interval, args.seconds, 0, args.load_processes, args.load_threads)
        baseline["gateway_cpu_s"] = _process_cpu_s(proc.pid) - gateway_cpu0
        print(f"baseline: {json.dumps(baseline)}", flush=True)
        ctx = mp.get_context("spawn")
        out, stop = ctx.Queue(), ctx.Event()
        hammering = {kind: ctx.Event() for kind in BAD_KINDS}
        bad = [ctx.Process(target=_bad_client, args=(kind, port, token, participant, hammering[kind], stop, out))
               for kind, token, participant in zip(BAD_KINDS, (retrier, revoked.token, bomber),
                                                   ("P-BDRETRY", "P-BDREVOKED", "P-BDBOMB"), strict=True)]
        for p in bad:
            p.start()
        for kind, event in hammering.items():
            if not event.wait(120):
                raise SystemExit(f"the {kind} client never got an answer")
        gateway_cpu0 = _process_cpu_s(proc.pid)
        badday = _phase(port, good, args.interval, args.seconds, baseline["rounds"], args.load_processes,
                        args.load_threads)
        badday["gateway_cpu_s"] = _process_cpu_s(proc.pid) - gateway_cpu0
        stop.set()
        bad_results = {kind: {"statuses": statuses, "body_bytes": size, "cpu_s": round(cpu, 1)}
                       for kind, statuses, size, cpu in (out.get(timeout=120) for _ in bad)}
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
