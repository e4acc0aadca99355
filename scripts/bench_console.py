"""Benchmark: console page answer times (p50/p95) at a cohort size, against a live site and a console subprocess.

    .venv/bin/python scripts/bench_console.py --participants 10000 --days 2 [--site bench10k] [--requests 60]

Seeds a fresh site with a synthetic cohort unless --site names one already seeded (the seeding is not timed), starts
`clinstream console` on a free port and requests each page sequentially: /health, /cohort and /participants/<p>
for random pseudonyms of the cohort. Target: p95 < 300 ms per page. Writes reports/bench_console.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.store.migrate import migrate
from clinstream_devtools.console.synthetic import Cohort, default_first_day, fill_store

ROOT = Path(__file__).resolve().parents[1]
TARGET_P95_MS = 300.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _participants(settings: Settings, n: int) -> list[str]:
    with connect(settings) as conn:
        rows = conn.execute("SELECT DISTINCT participant_pseudonym FROM sample_features").fetchall()
    people = sorted(r[0] for r in rows)
    if len(people) < n:
        sys.exit(f"site {settings.site_id} holds {len(people)} participants, fewer than --participants {n}")
    return people


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--participants", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--site", help="an already seeded site (else a fresh one is seeded and kept)")
    parser.add_argument("--requests", type=int, default=60, help="requests per page")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()

    site = args.site or f"bench{args.participants}"
    settings = Settings(site_id=site)  # type: ignore[call-arg]
    if not args.site:
        migrate(settings)
        started = time.perf_counter()
        with connect(settings) as conn:
            rows = fill_store(conn, Cohort(args.participants, default_first_day(args.days), args.days, args.seed))
        print(f"seeded {rows} wearable rows in {time.perf_counter() - started:.0f} s (site {site})")
    people = _participants(settings, args.participants)

    token = secrets.token_urlsafe(32)
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "token"
        token_file.write_text(token)
        proc = subprocess.Popen([str(Path(sys.executable).with_name("clinstream")), "console", "--port", str(port),
                                 "--token-file", str(token_file), "--sample-every", "10"],
                                env={**os.environ, "CLINSTREAM_SITE_ID": site}, cwd=ROOT)
        try:
            base = f"http://127.0.0.1:{port}"
            client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit("console did not come up")
                time.sleep(0.2)
            rng = random.Random(args.seed)
            pages = {"health": lambda: "/health", "cohort": lambda: "/cohort",
                     "participant": lambda: f"/participants/{rng.choice(people)}"}
            for make in pages.values():  # warm-up: pool connections, templates, plans
                client.get(make()).raise_for_status()
            results: dict[str, dict[str, float]] = {}
            for name, make in pages.items():
                times = []
                for _ in range(args.requests):
                    path = make()
                    t0 = time.perf_counter()
                    client.get(path).raise_for_status()
                    times.append((time.perf_counter() - t0) * 1000)
                arr = np.array(times)
                results[name] = {"p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)),
                                 "max_ms": float(arr.max()), "requests": len(times)}
        finally:
            proc.terminate()
            proc.wait(30)
    load = os.getloadavg()
    print(f"console pages at {len(people)} participants, {args.days} days (load average {load[0]:.1f}):")
    for name, r in results.items():
        verdict = "ok" if r["p95_ms"] < TARGET_P95_MS else f"ABOVE the {TARGET_P95_MS:.0f} ms target"
        print(f"  {name:<12} p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  max {r['max_ms']:7.1f} ms", verdict)
    out = ROOT / "reports" / "bench_console.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"participants": len(people), "days": args.days, "load_average": load,
                               "pages": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
