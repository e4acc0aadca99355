"""The gateway holds the refusals a misbehaving client repeats (401, 413, 429) and no other answer."""

from __future__ import annotations

import asyncio

import pytest
from starlette.responses import Response

from clinstream.ingest.app import _guarded
from clinstream.ingest.config import IngestSettings
from clinstream.ingest.errors import ApiError


def _answer(status: int | None) -> tuple[int, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def handler() -> Response:
        if status is None:
            return Response(status_code=202)
        raise ApiError(status, "refused", "a refusal")

    response = asyncio.run(_guarded(handler, 0.25, sleep))
    return response.status_code, slept


@pytest.mark.parametrize("status", [401, 413, 429])
def test_repeatable_refusals_are_held(status: int) -> None:
    assert _answer(status) == (status, [0.25])


@pytest.mark.parametrize("status", [None, 400, 403, 415, 422, 503])
def test_other_answers_are_not_held(status: int | None) -> None:
    code, slept = _answer(status)
    assert code == (status or 202)
    assert slept == []


def test_the_site_default_holds_refusals_and_can_be_turned_off() -> None:
    assert IngestSettings().refusal_delay_s > 0
    assert IngestSettings(refusal_delay_s=0).refusal_delay_s == 0
