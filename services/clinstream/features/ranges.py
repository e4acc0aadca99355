"""Sets of integers (block sequence numbers) kept as sorted, merged, JSON-able [first, last] ranges."""

from __future__ import annotations

from bisect import bisect_right

Ranges = list[list[int]]


def _first(r: list[int]) -> int:
    return r[0]


def contains(ranges: Ranges, value: int) -> bool:
    """True if `value` lies in one of the ranges."""
    i = bisect_right(ranges, value, key=_first) - 1
    return i >= 0 and ranges[i][0] <= value <= ranges[i][1]


def add(ranges: Ranges, value: int) -> bool:
    """Insert `value` in place, merging neighbours; returns False if it was already present."""
    i = bisect_right(ranges, value, key=_first) - 1
    if i >= 0 and ranges[i][0] <= value <= ranges[i][1]:
        return False
    joins_left = i >= 0 and ranges[i][1] == value - 1
    joins_right = i + 1 < len(ranges) and ranges[i + 1][0] == value + 1
    if joins_left and joins_right:
        ranges[i][1] = ranges[i + 1][1]
        del ranges[i + 1]
    elif joins_left:
        ranges[i][1] = value
    elif joins_right:
        ranges[i + 1][0] = value
    else:
        ranges.insert(i + 1, [value, value])
    return True


def extend_above(ranges: Ranges, values: list[int]) -> None:
    """`add` of each of `values`, strictly increasing and all above every value in the ranges (a device's next
    blocks), appended as runs."""
    for value in values:
        if ranges and ranges[-1][1] == value - 1:
            ranges[-1][1] = value
        else:
            ranges.append([value, value])


def count(ranges: Ranges) -> int:
    """Number of integers in the ranges."""
    return sum(b - a + 1 for a, b in ranges)
