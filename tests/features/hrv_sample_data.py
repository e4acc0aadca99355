"""A public real RR series: pyhrv's SampleNNISeriesLong.npy (4,684 intervals, about 60 min, integer ms).

The file ships inside the pyhrv package (a dev dependency); it is read from the installed package directory
without importing pyhrv itself (whose import pulls in plotting and signal-processing stacks the tests do not need).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import numpy.typing as npt


def pyhrv_long_rr() -> npt.NDArray[np.int64]:
    """The RR intervals (ms) of pyhrv's long sample series."""
    spec = importlib.util.find_spec("pyhrv")
    assert spec is not None and spec.submodule_search_locations, "pyhrv (dev dependency) is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "files" / "SampleNNISeriesLong.npy"
    return np.load(path).astype(np.int64)
