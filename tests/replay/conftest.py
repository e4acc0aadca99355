"""Replay tests reuse the synthetic-data factories of the features and pseudonymise tests."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]
for folder in ("features", "pseudonymise"):
    path = str(_TESTS / folder)
    if path not in sys.path:
        sys.path.append(path)
