"""hrv-analysis' time-domain features, imported with a Python 3.11 compatibility shim for its nolds dependency.

nolds 0.6.3 (a dependency of hrv-analysis used only for non-linear features) calls
`importlib.resources.files("nolds.datasets")` on a plain module at import time, which Python 3.12+ accepts and
Python 3.11 rejects. During that one import, `files()` of a non-package module is answered the way Python 3.12
does: with the directory of its parent package. Nothing of hrv-analysis itself is replaced.
"""

from __future__ import annotations

import importlib.resources as resources
import sys
from typing import Any

_original_files = resources.files


def _files_312(anchor: Any = None) -> Any:
    name = anchor if isinstance(anchor, str) else getattr(anchor, "__name__", None)
    module = sys.modules.get(name) if isinstance(name, str) else None
    if module is not None and not hasattr(module, "__path__"):
        return _original_files(name.rpartition(".")[0])  # type: ignore[union-attr]
    return _original_files(anchor)


resources.files = _files_312  # type: ignore[assignment]
try:
    from hrvanalysis import get_time_domain_features
finally:
    resources.files = _original_files


def time_domain_features(nn_intervals: list[float]) -> dict[str, float]:
    """hrv-analysis `get_time_domain_features` (pNN50 over successive differences, its default)."""
    return dict(get_time_domain_features(nn_intervals))
