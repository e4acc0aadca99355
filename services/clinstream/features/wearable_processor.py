"""The wearable-window half of the feature processor: telemetry blocks folded into event-time windows.

Per batch and input partition, every block's samples are split by window with numpy (`partials`), then admitted in
arrival order to window entries (grouped by window: one read and write of each entry per batch). Per (block, window
entry): a block already recorded in the entry (same device pseudonym and sequence number) is a duplicate and changes
nothing, but the window is emitted again; a window whose end + horizon is at or before the watermark (max event time
seen in the partition before this block) is final and refuses the data; otherwise the sequence is recorded and the
revision incremented, and the block's partial is merged into the entry's accumulator before the batch's state is
written. A block refused by all its windows goes unchanged to LATE_TELEMETRY. Heart-rate partials are sums over
readings, so the blocks of one participant (zone, UTC offset) that all their windows accepted are merged as one
partial per window: a device's upload of ten one-minute blocks costs one merge per hour and day window, not ten (the
same records and state as block by block; `coalesce_blocks=False` is that reference).
Windows whose deadline the watermark has reached are emitted with is_final=true (same revision) and deleted; each
touched window is emitted once per batch with its latest value.

Revisions: a heart_rate row's revision is the number of distinct blocks folded into it; the row of any other set
adds the heart-rate blocks of the same window (they define its completeness), so every change of a row's value or
completeness raises its revision. A stored row is replaced when (revision, is_final) is greater.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date

import numpy as np

from clinstream.core.records import BatchResult, InRecord, OutRecord
from clinstream.core.timeutil import DAY_MS, MINUTE_MS
from clinstream.core.topics import FEATURES
from clinstream.features import accumulators, ranges, values_v2
from clinstream.features import catalogue as cat
from clinstream.features.blocks import Block
from clinstream.features.context import ProcessorContext
from clinstream.features.local_days import day_end, local_ordinal, offset_minutes
from clinstream.features.partials import PARTIALS, SCALE, WINDOWS_OF_SUMS, Partial
from clinstream.features.partials_v2 import PARTIALS_V2
from clinstream.features.partition_work import PartitionWork
from clinstream.features.state import Entry, baseline_key, parse_window_key, window_key
from clinstream.features.windows import LENGTH_MS, WindowKind

ZONED_VERSION = 2  # the first feature version with zoned local days and the research-grade definitions
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_OTHER_SETS = tuple(s for s in cat.WEARABLE_SETS if s != cat.HEART_RATE)
# Windows of one deadline are finalised other sets first, heart rate last (the state's deadline index pops them so).
FINALISE_RANK = {s: i for i, s in enumerate((*_OTHER_SETS, cat.HEART_RATE))}


class WearableWindows(PartitionWork):
    """One partition's telemetry of one batch: fold blocks into windows, finalise and emit window rows."""

    def __init__(self, proc: ProcessorContext, p: int, result: BatchResult) -> None:
        super().__init__(proc, p, result)
        self.settings = proc.settings
        self.zoned = proc.version >= ZONED_VERSION  # version 2: zoned local days and the v2 definitions
        self.partials = PARTIALS_V2 if self.zoned else PARTIALS
        self.touched: dict[str, None] = {}  # window keys to emit, in first-touch order
        self.hr_windows: dict[tuple[str, WindowKind, int], None] = {}

    def forget(self, pseudonym: str) -> None:
        """Drop an erased participant's windows from this batch's emissions."""
        self.touched = {k: None for k in self.touched if parse_window_key(k)[1] != pseudonym}

    # --- folding -------------------------------------------------------------------------------------------
    def fold_blocks(self, blocks: list[tuple[InRecord, Block]]) -> None:
        """Fold decoded blocks (arrival order) into their windows; refused blocks go to LATE_TELEMETRY.

        First every block is admitted to each of its windows, in arrival order (duplicate, late or accepted: the
        entry's dedup record, revision and computed_at are updated); then the accepted partials are merged into
        the entries' accumulators. Merging commutes, so the order of the second step does not matter, and for
        measurements whose partials are sums over readings (`WINDOWS_OF_SUMS`) the blocks of one participant
        whose every window accepted them are merged as one partial per window (`_merge_sums`).
        """
        if not blocks:
            return
        windows: list[list[tuple[str, WindowKind, int]]] = [[] for _ in blocks]  # per block, in partial order
        parts: list[list[Partial]] = [[] for _ in blocks]
        summed: dict[str, list[tuple[int, Block]]] = {}  # measurement -> its blocks, merged by `_merge_sums`
        by_measurement: dict[str, list[tuple[int, Block]]] = defaultdict(list)
        for i, (_, block) in enumerate(blocks):
            if self.zoned:
                block.zone = block.time_zone or self.settings.default_time_zone
            by_measurement[block.measurement].append((i, block))
        for measurement, members in by_measurement.items():
            fn = self.partials.get(measurement)
            if fn is None:
                continue
            sums = WINDOWS_OF_SUMS.get(measurement) if self.proc.coalesce_blocks else None
            if sums is not None:
                feature_set, windows_of = sums
                for b, kind, start in windows_of(members, self.settings):
                    windows[b].append((feature_set, kind, start))
                summed[measurement] = members
                continue
            for part in fn(members, self.settings):
                parts[part.block].append(part)
                windows[part.block].append((part.feature_set, part.kind, part.start))
        mismatch = self._offset_mismatches(blocks)
        wm0 = self.state.watermark(self.p)
        latest = np.array([b.max_event_ms if b.max_event_ms is not None else wm0 for _, b in blocks], dtype=np.int64)
        wm_before = np.maximum.accumulate(np.concatenate(([wm0], latest)))[:-1].tolist()
        if self.proc.coalesce_blocks:
            outcomes = self._admit_by_window(blocks, windows, wm_before)
        else:  # the reference: block by block, window by window
            outcomes = [[self._admit(block, fs, kind, start, wm_before[i]) for fs, kind, start in windows[i]]
                        for i, (_, block) in enumerate(blocks)]
        for i, (rec, _) in enumerate(blocks):
            outcome = outcomes[i]
            if not outcome:
                self.result.count("blocks_without_features")
                continue
            accepted, duplicate, late = (outcome.count(o) for o in ("accepted", "duplicate", "late"))
            if accepted == 0 and duplicate == 0:
                self.result.out.append(OutRecord(self.proc.topic_late, rec.key, rec.value))
                self.result.count("late_blocks")
            elif late:
                self.result.count("late_windows", late)
            if duplicate and not accepted:
                self.result.count("duplicate_blocks")
        for i, block_parts in enumerate(parts):
            if block_parts:  # the blocks of summed measurements have none here
                self._merge_accepted(blocks[i][1], block_parts, outcomes[i], mismatch[i])
        for measurement, members in summed.items():
            self._merge_sums(measurement, members, windows, outcomes, mismatch)
        self.state.set_watermark(self.p, int(latest.max()))

    def _offset_mismatches(self, blocks: list[tuple[InRecord, Block]]) -> list[int]:
        """Per block, 1 if its UTC offset disagrees with its zone (version 2: counted on LOCAL_DAY, not re-dated)."""
        if not self.zoned:
            return [0] * len(blocks)
        return [int(block.utc_offset_min != offset_minutes(str(block.zone), block.start_ms)) for _, block in blocks]

    def _admit(self, block: Block, feature_set: str, kind: WindowKind, start: int, watermark: int) -> str:
        """Admit a block to one window (`_admission`); the accumulator is merged afterwards."""
        key = window_key(self.p, block.pseudonym, feature_set, kind, start)
        outcome, entry = self._admission(self.state.get(key), block, kind, start,
                                         late=start + self._deadline_of(kind) <= watermark)
        if outcome == "accepted" and entry is not None:
            self.state.put(key, entry)
        if outcome != "late":
            self._touch(key, block.pseudonym, feature_set, kind, start)
        return outcome

    def _admission(self, entry: Entry | None, block: Block, kind: WindowKind, start: int,
                   late: bool) -> tuple[str, Entry | None]:
        """One block's admission to a window's entry (None before its first block): duplicate (the entry already
        records the block), late (the window is final) or accepted (its sequence recorded, the revision raised, the
        entry made if needed). Returns the outcome and the entry."""
        if entry is not None and ranges.contains(entry["d"].get(block.device, []), block.sequence):
            return "duplicate", entry
        if late:
            return "late", entry
        if entry is None:
            entry = self._new_entry(block, kind, start)
        ranges.add(entry["d"].setdefault(block.device, []), block.sequence)
        entry["r"] += 1
        entry["ca"] = max(entry["ca"], block.received_ms)
        return "accepted", entry

    def _admit_by_window(self, blocks: list[tuple[InRecord, Block]], windows: list[list[tuple[str, WindowKind, int]]],
                         wm_before: list[int]) -> list[list[str]]:
        """`_admit` of every (block, window) pair, grouped by window: each window entry is read, written and touched
        once per batch instead of once per block. Within a window its blocks are admitted in arrival order and windows
        do not affect each other, so outcomes and entries are those of `_admit` in arrival order. Windows are touched
        in the order of their first block, which is where `_admit` first touches them unless that block was late; but
        then the window's deadline is at or before the batch's watermark, so it is emitted as final, in deadline order,
        wherever it was touched."""
        groups: dict[tuple[str, str, WindowKind, int], list[tuple[int, int]]] = {}
        for i, (_, block) in enumerate(blocks):
            pseudonym = block.pseudonym
            for j, (fs, kind, start) in enumerate(windows[i]):
                groups.setdefault((pseudonym, fs, kind, start), []).append((i, j))
        outcomes = [[""] * len(w) for w in windows]
        for (pseudonym, fs, kind, start), members in groups.items():
            key = window_key(self.p, pseudonym, fs, kind, start)
            entry = self.state.get(key)
            deadline = start + self._deadline_of(kind)
            run = self._next_blocks(entry, blocks, members) if deadline > wm_before[members[-1][0]] else None
            if run is not None:  # every member accepted, as `_admission` one by one would
                first = blocks[members[0][0]][1]
                if entry is None:
                    entry = self._new_entry(first, kind, start)
                ranges.extend_above(entry["d"].setdefault(first.device, []), run)
                entry["r"] += len(members)
                entry["ca"] = max(entry["ca"], max(blocks[i][1].received_ms for i, _ in members))
                for i, j in members:
                    outcomes[i][j] = "accepted"
                self.state.put(key, entry)
                self._touch(key, pseudonym, fs, kind, start)
                continue
            touched = accepted = False
            for i, j in members:
                outcome, entry = self._admission(entry, blocks[i][1], kind, start, late=deadline <= wm_before[i])
                outcomes[i][j] = outcome
                accepted |= outcome == "accepted"
                touched |= outcome != "late"
            if accepted and entry is not None:
                self.state.put(key, entry)
            if touched:
                self._touch(key, pseudonym, fs, kind, start)
        return outcomes

    @staticmethod
    def _next_blocks(entry: Entry | None, blocks: list[tuple[InRecord, Block]],
                     members: list[tuple[int, int]]) -> list[int] | None:
        """The sequences of a window's members when they are one device's next blocks (strictly increasing, all
        above what the entry records of the device): then none is a duplicate and `_admission` accepts each in
        turn unless the window is final. None otherwise."""
        device = blocks[members[0][0]][1].device
        run: list[int] = []
        for i, _ in members:
            block = blocks[i][1]
            if block.device != device or (run and block.sequence <= run[-1]):
                return None
            run.append(block.sequence)
        seen = entry["d"].get(device) if entry is not None else None
        return run if not seen or run[0] > seen[-1][1] else None

    def _new_entry(self, block: Block, kind: WindowKind, start: int) -> Entry:
        """A window's entry before its first block: no revision, no blocks, no accumulators."""
        entry: Entry = {"r": 0, "ca": 0, "o": block.utc_offset_min if kind is WindowKind.LOCAL_DAY else 0, "d": {},
                        "a": {}}
        if self.zoned and kind is WindowKind.LOCAL_DAY:
            entry["z"] = block.zone
            entry["o"] = offset_minutes(str(block.zone), start)
        return entry

    def _merge(self, pseudonym: str, part: Partial) -> None:
        entry = self.state.get(window_key(self.p, pseudonym, part.feature_set, part.kind, part.start))
        if entry is None:
            raise RuntimeError("a partial merged into a window that did not admit its block")
        accumulators.merge(part.feature_set, entry["a"], part.acc)

    def _merge_accepted(self, block: Block, parts: list[Partial], outcomes: list[str], mismatch: int) -> None:
        """Merge a block's partials (in the order they were admitted) into the windows that accepted it."""
        for part, outcome in zip(parts, outcomes, strict=True):
            if outcome == "accepted":
                self._merge_block_part(block, part, mismatch)

    def _merge_block_part(self, block: Block, part: Partial, mismatch: int) -> None:
        if self.zoned and part.kind is WindowKind.LOCAL_DAY:
            part.acc["om"] = mismatch
        self._merge(block.pseudonym, part)

    def _merge_sums(self, measurement: str, members: list[tuple[int, Block]],
                    windows: list[list[tuple[str, WindowKind, int]]], outcomes: list[list[str]],
                    mismatch: list[int]) -> None:
        """Merge the partials of a measurement whose partials are sums over readings: the blocks of one participant,
        zone and UTC offset that every window of theirs accepted, as one partial per window; the others alone. Local
        days come from the zone (version 2) or the offset (version 1), so within one unit they follow event time:
        each window and minute is one run of readings, and a window's offset mismatches are counted once."""
        units: dict[tuple[str, str | None, int], list[int]] = defaultdict(list)
        alone: list[tuple[int, Block]] = []
        blocks = dict(members)
        for i, block in members:
            if all(o == "accepted" for o in outcomes[i]):
                units[(block.pseudonym, block.zone, block.utc_offset_min)].append(i)
            else:
                alone.append((i, block))
        unit_of = list(units.values())
        fn = self.partials[measurement]
        for part in fn([(u, blocks[i]) for u, unit in enumerate(unit_of) for i in unit], self.settings):
            unit = unit_of[part.block]
            if self.zoned and part.kind is WindowKind.LOCAL_DAY:
                window = (part.feature_set, part.kind, part.start)
                part.acc["om"] = sum(mismatch[i] for i in unit if window in windows[i])
            self._merge(blocks[unit[0]].pseudonym, part)
        if alone:
            by_block: dict[int, list[Partial]] = defaultdict(list)
            for part in fn(alone, self.settings):
                by_block[part.block].append(part)
            for i, block in alone:
                accepted = {w for w, o in zip(windows[i], outcomes[i], strict=True) if o == "accepted"}
                for part in by_block[i]:
                    if (part.feature_set, part.kind, part.start) in accepted:
                        self._merge_block_part(block, part, mismatch[i])

    def _deadline_of(self, kind: WindowKind) -> int:
        return self.proc.deadline_ms[kind]

    def _touch(self, key: str, pseudonym: str, feature_set: str, kind: WindowKind, start: int) -> None:
        if not self.proc.emit_open:  # emitted when final or at the end of the run
            return
        self.touched[key] = None
        if feature_set == cat.HEART_RATE:
            self.hr_windows[(pseudonym, kind, start)] = None

    # --- finalisation and emission -------------------------------------------------------------------------
    def finalise_and_emit(self) -> None:
        """Emit every touched window (open; unless the processor does not `emit_open`) and every window the watermark
        made due (final, then deleted)."""
        others: dict[str, list[str]] = {}  # pseudonym -> its other feature sets with windows, in catalogue order
        for pseudonym, kind, start in self.hr_windows:  # completeness of the window's other rows changed
            sets = others.get(pseudonym)
            if sets is None:
                present = self.state.feature_sets_of(pseudonym)
                sets = others[pseudonym] = [fs for fs in _OTHER_SETS if fs in present]
            for fs in sets:
                key = window_key(self.p, pseudonym, fs, kind, start)
                if key not in self.touched and self.state.get(key) is not None:
                    self.touched[key] = None
        due = self.state.pop_due(self.p, self.state.watermark(self.p))  # by deadline, FINALISE_RANK, key
        due_set = set(due)
        out = self.result.out
        for key in self.touched:
            if key not in due_set:
                entry = self.state.get(key)
                if entry is not None:
                    out.append(self._feature_record(parse_window_key(key), entry, final=False))
                    self.result.count("feature_records")
        for key in due:
            entry = self.state.get(key)
            if entry is None:
                continue
            window = parse_window_key(key)
            out.append(self._feature_record(window, entry, final=True))
            self.result.count("feature_records")
            self.result.count("final_windows")
            _, pseudonym, fs, kind, start = window
            if fs == cat.SKIN_TEMPERATURE and kind is WindowKind.LOCAL_DAY:
                self._record_baseline_day(pseudonym, start, entry)
            self.state.delete(key)

    def emit_latest(self, keys: list[str]) -> None:
        """Emit these windows of the partition with their latest value (is_final=false)."""
        for key in keys:
            entry = self.state.get(key)
            if entry is not None:
                self.result.out.append(self._feature_record(parse_window_key(key), entry, final=False))
                self.result.count("feature_records")

    def _feature_record(self, window: tuple[int, str, str, WindowKind, int], entry: Entry, final: bool) -> OutRecord:
        """The feature record of a window (`parse_window_key` of its key) from its entry."""
        _, pseudonym, fs, kind, start = window
        if fs == cat.HEART_RATE:
            hr_entry: Entry | None = entry
            extra_revision = 0
        else:
            hr_entry = self.state.get(window_key(self.p, pseudonym, cat.HEART_RATE, kind, start))
            extra_revision = hr_entry["r"] if hr_entry else 0
        end = day_end(entry["z"], start) if "z" in entry else start + LENGTH_MS[kind]
        window_minutes = (end - start) // MINUTE_MS
        hr_acc = hr_entry["a"] if hr_entry else None
        if self.zoned:
            values = values_v2.values(fs, kind, entry["a"], self.settings, hr_acc, window_minutes)
            if kind is WindowKind.LOCAL_DAY:
                values["offset_mismatch_blocks"] = float(entry["a"].get("om", 0))
            completeness = (accumulators.mask_of(hr_acc, "w").bit_count() / window_minutes) if hr_acc else 0.0
        else:
            values = accumulators.values(fs, kind, entry["a"], self.settings)
            completeness = accumulators.completeness(hr_acc, kind)
        if final and fs == cat.SKIN_TEMPERATURE and kind is WindowKind.LOCAL_DAY:
            deviation = self._baseline_deviation(pseudonym, start, entry)
            if deviation is not None:
                values["baseline_deviation"] = deviation
        record = {
            "site_id": self.proc.site_id, "participant_pseudonym": pseudonym, "feature_set": fs,
            "window": kind.value, "window_start": start, "window_end": end,
            "utc_offset_minutes": entry["o"], "version": self.proc.version, "values": values,
            "completeness": completeness,
            "is_final": final, "revision": entry["r"] + extra_revision,
            "computed_at": max(entry["ca"], hr_entry["ca"] if hr_entry else 0),
        }
        if self.proc.keep_records:  # as Avro decodes it: doubles as floats
            record["values"] = {name: float(v) for name, v in values.items()}
            record["completeness"] = float(completeness)
            return OutRecord(self.proc.topic_features, self.proc.key_of(pseudonym), b"", record=record)
        value = self.proc.codec.encode_plain(FEATURES.value_schema, record)
        return OutRecord(self.proc.topic_features, self.proc.key_of(pseudonym), value)

    # --- skin-temperature baseline -------------------------------------------------------------------------
    @staticmethod
    def _local_day(start: int, entry: Entry) -> int:
        """Days since 1970-01-01 of the window's local date (from its zone when it has one)."""
        if "z" in entry:
            return local_ordinal(entry["z"], start) - _EPOCH_ORDINAL
        return int((start + entry["o"] * 60_000) // DAY_MS)

    def _baseline_deviation(self, pseudonym: str, start: int, entry: Entry) -> float | None:
        baseline = self.state.get(baseline_key(self.p, pseudonym))
        if not baseline:
            return None
        day = self._local_day(start, entry)
        days = baseline["days"]
        previous = [days[str(d)] for d in range(day - self.settings.skin_baseline_days, day) if str(d) in days]
        if len(previous) < self.settings.skin_baseline_min_days:
            return None
        scale = SCALE[cat.SKIN_TEMPERATURE]
        means = [s1 / (n * scale) for s1, n in previous]
        acc = entry["a"]
        return float(acc["s1"] / (acc["n"] * scale) - sum(means) / len(means))

    def _record_baseline_day(self, pseudonym: str, start: int, entry: Entry) -> None:
        key = baseline_key(self.p, pseudonym)
        baseline = self.state.get(key) or {"days": {}}
        day = self._local_day(start, entry)
        baseline["days"][str(day)] = [entry["a"]["s1"], entry["a"]["n"]]
        newest = max(int(d) for d in baseline["days"])
        keep = 2 * self.settings.skin_baseline_days
        baseline["days"] = {d: v for d, v in baseline["days"].items() if int(d) > newest - keep}
        self.state.put(key, baseline)
