"""The Flower processes of a deployment: SuperLink and SuperNode command lines, their environment, `flwr run`.

Every process gets explicit loopback addresses from core/constants.py (never Flower's defaults 9091-9094, which
collide with Kafka), `FLWR_TELEMETRY_ENABLED=0` and `FLWR_DISABLE_UPDATE_CHECK=1` (nothing calls home), its own
`FLWR_HOME` under the work directory, and no Ray (the deployment engine runs ServerApp and ClientApps as
subprocesses). The SuperLink does not install app dependencies at run time (offline machine; the app's code is
the installed clinstream package).

flwr 1.42 specifics, checked against its CLI: the SuperLink serves its Fleet, Control and runtime APIs over HTTP on
one `--port`; a SuperNode connects with `--superlink host:port` and serves its ClientApp runtime API on `--port`;
`flwr run <app> <connection>` reads the connection from `$FLWR_HOME/config.toml`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinstream.core import constants as c
from clinstream.federated.config import SiteNodeConfig

APP_DIR = Path(__file__).resolve().parent / "app"
CONNECTION = "clinstream"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Tls:
    """TLS material; None everywhere means --insecure (loopback demo and tests only)."""

    ca_cert: Path | None = None
    server_cert: Path | None = None  # SuperLink
    server_key: Path | None = None  # SuperLink
    supernode_auth_key: Path | None = None  # SuperNode private key (SuperNode authentication)

    @property
    def insecure(self) -> bool:
        """True when no CA certificate is configured."""
        return self.ca_cert is None


def _bin(name: str) -> str:
    """The Flower executable next to this interpreter (the venv), else on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment of a Flower process: telemetry and update check off, own FLWR_HOME, this venv's scripts first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_INTERNAL_")}
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"  # else every Flower process asks Flower's platform API for updates
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    flwr_home.mkdir(parents=True, exist_ok=True)
    return env


def superlink_command(port: int = c.FLOWER_SUPERLINK_PORT, tls: Tls | None = None,
                      database: Path | None = None) -> list[str]:
    """The flower-superlink command line."""
    tls = tls or Tls()
    cmd = [_bin("flower-superlink"), "--host", LOOPBACK, "--port", str(port),
           "--disable-runtime-dependency-installation", "--isolation", "subprocess"]
    if tls.insecure:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
                "--ssl-keyfile", str(tls.server_key), "--enable-supernode-auth"]
    if database is not None:
        cmd += ["--database", str(database)]
    return cmd


def supernode_command(site: SiteNodeConfig, port: int, superlink: str = f"{LOOPBACK}:{c.FLOWER_SUPERLINK_PORT}",
                      tls: Tls | None = None) -> list[str]:
    """The flower-supernode command line of one site."""
    tls = tls or Tls()
    cmd = [_bin("flower-supernode"), "--superlink", superlink, "--host", LOOPBACK, "--port", str(port),
           "--isolation", "subprocess", "--node-config", site.as_node_config()]
    if tls.insecure:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(tls.ca_cert)]
        if tls.supernode_auth_key is not None:
            cmd += ["--auth-supernode-private-key", str(tls.supernode_auth_key)]
    return cmd


def write_connection(flwr_home: Path, superlink: str, tls: Tls | None = None) -> Path:
    """$FLWR_HOME/config.toml with the one SuperLink connection `clinstream` (the default)."""
    tls = tls or Tls()
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]", f'address = "{superlink}"']
    if tls.insecure:
        lines.append("insecure = true")
    else:
        lines.append(f'root-certificates = "{tls.ca_cert}"')
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _flwr_json(args: list[str], env: dict[str, str], timeout_s: float = c.FEDERATED_RUN_TIMEOUT_S) -> dict[str, Any]:
    done = subprocess.run([_bin("flwr"), *args, "--format", "json"], env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    start = done.stdout.find("{")
    if start < 0:
        raise RuntimeError(f"flwr {args[0]} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    payload: dict[str, Any] = json.loads(done.stdout[start:])
    if not payload.get("success", False):
        raise RuntimeError(f"flwr {args[0]} failed: {payload.get('error-message', payload)}")
    return payload


def toml_value(value: Any) -> str:
    """A run-config value as TOML (strings quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def start_run(flwr_home: Path, run_config: dict[str, Any], app_dir: Path = APP_DIR) -> int:
    """`flwr run` against the configured connection; returns the run id."""
    args = ["run", str(app_dir), CONNECTION]
    if run_config:
        args += ["--run-config", " ".join(f"{k}={toml_value(v)}" for k, v in run_config.items())]
    return int(_flwr_json(args, flower_env(flwr_home))["run-id"])


def run_status(flwr_home: Path, run_id: int) -> str:
    """The run's status, e.g. 'running' or 'finished:completed'."""
    runs = _flwr_json(["ls", "--run-id", str(run_id)], flower_env(flwr_home)).get("runs", [])
    return str(runs[0]["status"]) if runs else "unknown"


def wait_run(flwr_home: Path, run_id: int, timeout_s: float, done_file: Path | None = None,
             status_every_s: float = 20.0) -> str:
    """Wait until the run finished (returns its final status); stops the run and raises after timeout_s.

    `flwr ls` costs a second or more of CPU per call, which slows the run it watches on a small machine; with
    `done_file` (the report the ServerApp writes last) the status is asked only when that file appears or every
    `status_every_s`.
    """
    deadline = time.monotonic() + timeout_s
    next_status = time.monotonic() + (status_every_s if done_file is not None else 0.0)
    while time.monotonic() < deadline:
        appeared = done_file is not None and done_file.exists()
        if appeared or time.monotonic() >= next_status:
            status = run_status(flwr_home, run_id)
            if status.startswith("finished"):
                return status
            # once the report is there the run is ending: ask again soon
            next_status = time.monotonic() + (status_every_s if done_file is not None and not appeared else 1.0)
        time.sleep(0.5 if not appeared else 1.0)
    subprocess.run([_bin("flwr"), "stop", str(run_id), CONNECTION], env=flower_env(flwr_home),
                   capture_output=True, timeout=60, check=False)
    raise TimeoutError(f"run {run_id} did not finish within {timeout_s:.0f} s")
