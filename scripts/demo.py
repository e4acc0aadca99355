"""The README's main job: local stack, a site's pipeline, simulated LIMS and wearables, features printed."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream_devtools.pipeline.processes import SitePipeline, site_env

console = Console(width=150)


def clinstream(settings: Settings, *args: str) -> None:
    """Run one `clinstream` command for the site, showing its output."""
    console.print(f"[bold cyan]$ clinstream {' '.join(args)}[/bold cyan]")
    subprocess.run([sys.executable, "-m", "clinstream", *args], env=site_env(settings), check=True)


def wait_ready(settings: Settings, timeout_s: float = 60.0) -> None:
    """Wait until the gateway answers /readyz."""
    url = f"http://{settings.gateway_host}:{settings.gateway_port}/readyz"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"gateway not ready after {timeout_s:.0f} s; see its log under {settings.data_dir}/logs")


def wait_settled(settings: Settings, timeout_s: float, quiet_s: float = 8.0) -> int:
    """Wait until the feature store stops changing (the pipeline has caught up); returns the row count."""
    deadline = time.monotonic() + timeout_s
    last, last_change = -1, time.monotonic()
    with console.status("waiting for the pipeline to catch up") as status:
        while time.monotonic() < deadline:
            with connect(settings) as conn:
                row = conn.execute("SELECT count(*), coalesce(sum(revision), 0) FROM wearable_features").fetchone()
            rows, revs = (int(row[0]), int(row[1])) if row else (0, 0)
            if rows + revs != last:
                last, last_change = rows + revs, time.monotonic()
            elif rows and time.monotonic() - last_change > quiet_s:
                return rows
            status.update(f"waiting for the pipeline to catch up: {rows} feature rows")
            time.sleep(1.0)
    return max(last, 0)


def summary(settings: Settings) -> None:
    """Print what the feature store holds."""
    with connect(settings) as conn:
        sets = conn.execute(
            "SELECT feature_set, window_kind, count(*), count(DISTINCT participant_pseudonym),"
            " count(*) FILTER (WHERE is_final), round(avg(completeness)::numeric, 2), max(window_start)"
            " FROM wearable_features_current GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
        days = conn.execute(
            "SELECT left(participant_pseudonym, 10), window_start::date, feature_set, feature_values"
            " FROM wearable_features_current WHERE window_kind = 'LOCAL_DAY'"
            " AND feature_set IN ('heart_rate', 'hrv', 'skin_temperature', 'sleep', 'steps')"
            " ORDER BY 1, 2, 3 LIMIT 15").fetchall()
        samples = conn.execute(
            "SELECT sample_type, count(*), count(sprec), round(avg(collection_to_centrifugation_min)::numeric, 1),"
            " round((avg((assays->>'1988-5')::float) FILTER (WHERE assays ? '1988-5'))::numeric, 2),"
            " count(*) FILTER (WHERE status = 'available')"
            " FROM sample_features_current GROUP BY 1 ORDER BY 1").fetchall()
    t = Table("feature set", "window", "rows", "participants", "final", "completeness", "latest window",
              title=f"Feature store of {settings.site_id} (schema {settings.db_schema})")
    for r in sets:
        t.add_row(*(str(x) for x in r))
    console.print(t)
    d = Table("pseudonym", "local day", "set", "values", title="Participant-local daily features (excerpt)")
    for pseud, day, fset, values in days:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(values.items())[:5])
        d.add_row(f"{pseud}…", str(day), fset, shown)
    console.print(d)
    s = Table("sample type", "samples", "with SPREC", "mean min to centrifuge", "mean CRP mg/L", "available",
              title="Biobank sample features")
    for kind, count, with_sprec, to_centrifuge, crp, available in samples:
        s.add_row(str(kind), str(count), str(with_sprec),
                  "(no centrifugation time)" if to_centrifuge is None else str(to_centrifuge),
                  "(no CRP assay)" if crp is None else str(crp), str(available))
    console.print(s)


def main() -> None:
    """Run the demo."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--participants", type=int, default=12)
    parser.add_argument("--days", type=int, default=2, help="days of wearable telemetry")
    parser.add_argument("--lims-days", type=int, default=14, help="days of LIMS history")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the pipeline")
    args = parser.parse_args()

    settings = Settings()
    key_file = settings.data_dir.resolve() / "secrets" / f"{settings.site_id}-pseudonym-keys.json"
    settings = settings.model_copy(update={"pseudonym_key_file": key_file})
    began = time.monotonic()
    clinstream(settings, "stack", "up")
    clinstream(settings, "topics", "apply")
    clinstream(settings, "db", "migrate")
    if not key_file.exists():
        clinstream(settings, "keys", "init", "--file", str(key_file))
    os.environ["CLINSTREAM_PSEUDONYM_KEY_FILE"] = str(key_file)

    with SitePipeline(settings) as pipeline:
        console.print(f"[bold]pipeline started[/bold]: {', '.join(pipeline.services)}; logs in {pipeline.log_dir}")
        wait_ready(settings)
        # Consent first: the pseudonymiser forwards nothing of a participant before the grant reached Kafka.
        clinstream(settings, "simulate", "lims", "--participants", str(args.participants),
                   "--duration", f"{args.lims_days}d", "--seed", "7")
        clinstream(settings, "simulate", "devices", "--participants", str(args.participants),
                   "--duration", f"{args.days}d", "--seed", "7")
        rows = wait_settled(settings, args.timeout)
        for name in pipeline.services:
            if not pipeline.alive(name):
                console.print(f"[red]{name} exited[/red]; its log: {Path(pipeline.procs[name].log_path)}")
        console.print(f"{rows} feature rows stored")
        summary(settings)
        clinstream(settings, "lag")
    console.print(f"[green]demo finished in {time.monotonic() - began:.0f} s[/green]; the stack is still up "
                  "(`clinstream stack down` stops it)")


def run() -> int:
    """main(), with a failure reported as one line (the failed step's own error is printed above it)."""
    try:
        main()
    except subprocess.CalledProcessError as exc:
        step = " ".join(str(arg) for arg in exc.cmd[3:]) if isinstance(exc.cmd, list) else str(exc.cmd)
        console.print(f"[bold red]error:[/] the demo stopped: `clinstream {step}` failed (exit code "
                      f"{exc.returncode})", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[bold red]error:[/] the demo was interrupted", highlight=False)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(run())
