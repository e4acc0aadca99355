"""Property-based fuzzing of both endpoints (in-process app, real broker and DB): >= 1,000 requests, never a 5xx."""

from __future__ import annotations

import copy
import gzip
import json
import time
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_helpers import assay_event, hr_block

from clinstream_devtools.simulate.lims import LimsOptions, lims_events
from clinstream_devtools.simulate.profiles import make_participant
from clinstream_devtools.simulate.telemetry import DeviceOptions, device_blocks

pytestmark = pytest.mark.integration
REQUESTS = 1_100
ALLOWED = {202, 400, 401, 403, 413, 415, 422}

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False,
                                                                                    allow_infinity=False) | st.text(
    max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=12)


def _seed_blocks() -> list[dict[str, Any]]:
    """Realistic valid blocks of every kind (simulated, ending an hour ago) for P-000001."""
    p = make_participant(3, 1)
    end = (int(time.time() * 1000) // 60_000) * 60_000 - 3_600_000
    blocks = device_blocks(p, end - 26 * 3_600_000, end, seed=3, options=DeviceOptions(acceleration=True))
    kinds: dict[str, dict[str, Any]] = {}
    for b in blocks:
        kinds.setdefault(b.block["schema"], b.block)
    small = []
    for block in kinds.values():  # keep requests small: at most 40 samples per array
        trimmed = {k: (v[:40] if isinstance(v, list) and k != "episodes" else v) for k, v in block.items()}
        small.append(trimmed)
    return small


def _seed_events() -> list[dict[str, Any]]:
    now = int(time.time() * 1000)
    events = lims_events(make_participant(3, 1), now - 20 * 86_400_000, now - 3_600_000, seed=3,
                         options=LimsOptions(bad_fraction=0.0))
    by_kind: dict[str, dict[str, Any]] = {}
    for e in events:
        key = e.event["payload"]["kind"] + e.event["payload"].get("event_type", "")
        by_kind.setdefault(key, e.event)
    return [*by_kind.values(), assay_event()]


SEED_BLOCKS = _seed_blocks()
SEED_EVENTS = _seed_events()


@st.composite
def mutated(draw: st.DrawFn, seeds: list[dict[str, Any]]) -> Any:
    """A valid item, often with one or more random mutations (deleted/replaced/added fields, bad numbers)."""
    item = copy.deepcopy(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 3))):
        if not isinstance(item, dict):
            break
        target = item
        if isinstance(item.get("payload"), dict) and draw(st.booleans()):
            target = item["payload"]
        keys = sorted(target)
        op = draw(st.sampled_from(["delete", "replace", "add", "number", "array", "string"]))
        key = draw(st.sampled_from(keys)) if keys else "x"
        if op == "delete":
            target.pop(key, None)
        elif op == "replace":
            target[key] = draw(json_values)
        elif op == "add":
            target[draw(st.text(max_size=10))] = draw(json_values)
        elif op == "number":
            target[key] = draw(st.sampled_from([-1, 0, 2**31, 2**63, 1e300, -1e300, 0.5, True]))
        elif op == "array" and isinstance(target.get(key), list) and target[key]:
            arr = target[key]
            i = draw(st.integers(0, len(arr) - 1))
            arr[i] = draw(json_values | st.sampled_from([-1e9, 1e9, 10**20, 3000.5]))
            if draw(st.booleans()):
                del arr[draw(st.integers(0, len(arr) - 1)):]
        else:
            target[key] = draw(st.sampled_from(["", "P-000002", "2026-13-45T99:00:00Z", "1988-5", "°C", "x" * 300]))
    return item


def _dumps(value: Any) -> bytes:
    """JSON text; the standard library also writes integers beyond 64 bits (orjson refuses them)."""
    return json.dumps(value, allow_nan=False).encode()


@st.composite
def requests(draw: st.DrawFn, tokens: dict[str, str]) -> tuple[str, bytes, dict[str, str]]:
    telemetry = draw(st.booleans())
    path = "/v1/telemetry" if telemetry else "/v1/biobank/events"
    envelope = "blocks" if telemetry else "events"
    seeds = SEED_BLOCKS if telemetry else SEED_EVENTS
    shape = draw(st.sampled_from(["items", "items", "items", "json", "bytes", "envelope"]))
    if shape == "items":
        items = draw(st.lists(mutated(seeds) | json_values, min_size=0, max_size=5))
        content = _dumps({envelope: items})
    elif shape == "json":
        content = _dumps(draw(json_values))
    elif shape == "envelope":
        content = _dumps({draw(st.sampled_from([envelope, "data"])): draw(json_values)})
    else:
        content = draw(st.binary(max_size=64))
    headers: dict[str, str] = {}
    ctype = draw(st.sampled_from(["application/json", "application/json", "application/json; charset=utf-8",
                                  "text/plain", "", "application/problem+json", "application/json; charset=ascii"]))
    if ctype:
        headers["Content-Type"] = ctype
    encoding = draw(st.sampled_from([None, None, "gzip", "gzip-but-plain", "br", "identity"]))
    if encoding == "gzip":
        content = gzip.compress(content)
        headers["Content-Encoding"] = "gzip"
    elif encoding == "gzip-but-plain":
        headers["Content-Encoding"] = "gzip"
    elif encoding:
        headers["Content-Encoding"] = encoding
    credential = draw(st.sampled_from(["right", "right", "right", "right", "other", "none", "garbage"]))
    token = {"right": tokens["device" if telemetry else "lims"], "other": tokens["lims" if telemetry else "device"],
             "garbage": "csd_0123456789abcdef." + "A" * 43}.get(credential)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return path, content, headers


def test_fuzzed_requests_never_get_a_5xx(gateway: TestClient, ingest_site) -> None:
    tokens = {"device": ingest_site.device_token, "lims": ingest_site.lims_token}
    seen: dict[int, int] = {}
    sent = [0]

    # sanity: the seeds themselves are valid
    for block in SEED_BLOCKS:
        r = gateway.post("/v1/telemetry", content=orjson.dumps({"blocks": [block]}),
                         headers={"Authorization": f"Bearer {tokens['device']}", "Content-Type": "application/json"})
        assert r.status_code == 202, r.text
    assert gateway.post("/v1/telemetry", content=orjson.dumps({"blocks": [hr_block()]}), headers={
        "Authorization": f"Bearer {tokens['device']}", "Content-Type": "application/json"}).status_code == 202

    @settings(max_examples=REQUESTS, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(req=requests(tokens))
    def check(req: tuple[str, bytes, dict[str, str]]) -> None:
        path, content, headers = req
        r = gateway.post(path, content=content, headers=headers)
        sent[0] += 1
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code in ALLOWED, (r.status_code, r.text)
        answer = r.json()
        if r.status_code == 202:
            assert answer["accepted"] or answer.get("duplicates")
        elif r.status_code == 422 and "rejected" in answer:
            assert answer["rejected"] and all(item["reason"] for item in answer["rejected"])

    check()
    assert sent[0] >= 1_000
    assert {202, 400, 401, 415, 422} <= set(seen), seen  # the generator reaches the interesting answers
