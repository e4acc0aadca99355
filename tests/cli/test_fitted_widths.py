"""Column fitting of the listing tables (pure logic): key columns whole, the table within the width whenever the key
columns and unbroken words allow it, no column wider than its longest line."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from clinstream.core.cli_output import Column, fitted_widths

WORDS = st.text(alphabet="abcdefghij-", min_size=1, max_size=40)
CELLS = st.lists(WORDS, min_size=0, max_size=3).map(" ".join)  # words past the 32-character fold limit too


@given(keys=st.lists(st.booleans(), min_size=1, max_size=5), data=st.data(), total=st.integers(20, 300))
def test_fitted_widths(keys: list[bool], data: st.DataObject, total: int) -> None:
    columns = [Column(f"c{i}", f"heading {i}", key_column=key) for i, key in enumerate(keys)]
    rows = data.draw(st.lists(st.fixed_dictionaries({c.key: CELLS for c in columns}), min_size=1, max_size=3))
    fitted = fitted_widths(columns, rows, total)
    whole = [max(len(c.heading), *(len(r[c.key]) for r in rows)) for c in columns]
    words = [max([len(w) for r in rows for w in r[c.key].split()], default=0) for c in columns]
    for c, width, full, word in zip(columns, fitted, whole, words, strict=True):
        assert width <= full
        if c.key_column:
            assert width == full
        else:
            assert width >= min(full, len(c.heading), 32) and width >= min(word, 32, full)
    borders = 3 * len(columns) + 1
    floor = sum(w if c.key_column else min(w, max(len(c.heading), min(word, 32)))
                for c, w, word in zip(columns, whole, words, strict=True))
    assert sum(fitted) + borders <= max(total, floor + borders)
    if sum(whole) + borders <= total:
        assert fitted == whole  # room for every cell on one line: nothing wraps
