"""Typed run configuration (Flower run config) and site configuration (SuperNode node config) of the federated task."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from clinstream.core import constants as c

STRATEGIES = ("fedavg", "fedprox")
DP_MODES = ("off", "client-fixed", "server-fixed")
STANDARDISATIONS = ("site", "federated")
WINDOW_KINDS = ("LOCAL_DAY", "DAY")


@dataclass(frozen=True)
class TaskConfig:
    """Everything a run fixes: strategy, model, task definition, guards and privacy. Keys are kebab-case in TOML."""

    num_rounds: int = 3
    strategy: str = "fedavg"
    proximal_mu: float = 0.1
    local_epochs: int = 60  # full-batch gradient steps per round
    learning_rate: float = 0.5
    l2: float = 0.01
    crp_threshold: float = c.CRP_FLARE_MG_L
    lookback_days: int = c.FEDERATED_LOOKBACK_DAYS
    recent_days: int = 2
    baseline_days: int = c.FEDERATED_BASELINE_DAYS
    baseline_min_days: int = c.FEDERATED_BASELINE_MIN_DAYS
    min_lookback_days: int = 4  # an example needs at least this many of its lookback days with data
    min_completeness: float = 0.0  # days below this wear-time share are ignored
    window_kind: str = "LOCAL_DAY"
    min_participants: int = c.FEDERATED_MIN_PARTICIPANTS
    test_fraction: float = c.FEDERATED_TEST_FRACTION
    split_salt: str = "clinstream-split-v1"
    standardisation: str = "site"
    dp: str = "off"
    dp_noise_multiplier: float = 0.5
    dp_clipping_norm: float = 2.0
    score_bins: int = c.FEDERATED_SCORE_BINS  # 0: sites send no score histograms (no pooled AUC)
    min_nodes: int = 3
    round_timeout_s: float = 600.0
    report_dir: str = ""

    def __post_init__(self) -> None:
        checks = (
            (self.strategy in STRATEGIES, f"strategy must be one of {STRATEGIES}"),
            (self.dp in DP_MODES, f"dp must be one of {DP_MODES}"),
            (self.standardisation in STANDARDISATIONS, f"standardisation must be one of {STANDARDISATIONS}"),
            (self.window_kind in WINDOW_KINDS, f"window-kind must be one of {WINDOW_KINDS}"),
            (self.num_rounds >= 1 and self.local_epochs >= 1 and self.min_nodes >= 1, "counts must be >= 1"),
            (0.0 < self.test_fraction < 1.0, "test-fraction must lie in (0, 1)"),
            (self.min_participants >= 1, "min-participants must be >= 1"),
            (1 <= self.recent_days <= self.lookback_days, "recent-days must lie in [1, lookback-days]"),
            (1 <= self.min_lookback_days <= self.lookback_days, "min-lookback-days must lie in [1, lookback-days]"),
            (self.learning_rate > 0 and self.l2 >= 0 and self.proximal_mu >= 0, "invalid optimiser settings"),
            (self.score_bins == 0 or 2 <= self.score_bins <= 1000, "score-bins must be 0 or in [2, 1000]"),
            (self.dp_noise_multiplier >= 0 and self.dp_clipping_norm > 0, "invalid differential-privacy settings"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> TaskConfig:
        """Parse a Flower run config (kebab-case keys; unknown keys are ignored, missing ones take defaults)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key in run_config:
                default = getattr(cls, f.name)
                values[f.name] = type(default)(run_config[key])
        return cls(**values)

    def as_run_config(self) -> dict[str, Any]:
        """The run config (kebab-case keys) that reproduces this configuration."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}


def reader_role(site_id: str) -> str:
    """The read-only database role of a site's ClientApp, e.g. fl_reader_site_a."""
    return c.FEDERATED_READER_ROLE_PREFIX + site_id.replace("-", "_")


@dataclass(frozen=True)
class SiteNodeConfig:
    """What a SuperNode tells its ClientApp (`--node-config`): the site, how to reach its store, its own policy."""

    site_id: str
    database_url: str = ""  # libpq URL of the reader role (no password: use a password file or certificates)
    min_participants: int = 0  # the site's own floor; the effective minimum is max(run, site)

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> SiteNodeConfig:
        """Parse a Flower node config (keys site-id, database-url, min-participants)."""
        site = node_config.get("site-id")
        if not isinstance(site, str) or not site:
            raise ValueError("node config needs site-id")
        return cls(site, str(node_config.get("database-url", "")), int(node_config.get("min-participants", 0)))

    def as_node_config(self) -> str:
        """The `--node-config` argument for flower-supernode."""
        parts = [f'site-id="{self.site_id}"']
        if self.database_url:
            parts.append(f'database-url="{self.database_url}"')
        if self.min_participants:
            parts.append(f"min-participants={self.min_participants}")
        return " ".join(parts)


def report_paths(report_dir: Path, run_id: int | str) -> tuple[Path, Path]:
    """(JSON, PNG) paths of a run's report."""
    return report_dir / f"federated-report-{run_id}.json", report_dir / f"federated-report-{run_id}.png"
