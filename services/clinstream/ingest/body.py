"""Reads a JSON request body safely: media type, size limits before and after gunzip, then orjson."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request

from clinstream.core import constants as c
from clinstream.core.dlq import Rejection
from clinstream.ingest.config import IngestSettings
from clinstream.ingest.errors import ApiError
from clinstream.ingest.json_depth import deeper_than

_GZIP_WBITS = 16 + zlib.MAX_WBITS


def check_media_type(request: Request) -> None:
    """415 unless the body is declared as JSON (UTF-8) with identity or gzip content coding."""
    declared = request.headers.get("content-type")
    if declared is None:
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    media, _, params = declared.partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise ApiError(415, "unsupported_media_type", "JSON bodies must be UTF-8")
    coding = request.headers.get("content-encoding", "identity").strip().lower()
    if coding not in ("identity", "gzip", "x-gzip", ""):
        raise ApiError(415, "unsupported_content_encoding", "Content-Encoding must be gzip or identity")


class NestingTooDeep(ApiError):
    """A body nested deeper than the limit (422); `original` holds its JSON bytes as received, for the DLQ."""

    def __init__(self, limit: int, original: bytes) -> None:
        reason = f"JSON nested deeper than the limit of {limit} levels"
        super().__init__(422, "nesting_too_deep", reason)
        self.rejection = Rejection(reason)
        self.original = original


def _too_large(limit: int, what: str) -> ApiError:
    return ApiError(413, "payload_too_large", f"the {what} exceeds {limit} bytes")


def gunzip_limited(data: bytes, limit: int) -> bytes:
    """Decompress gzip (one or more members), refusing more than `limit` bytes of output (zip bombs)."""
    out: list[bytes] = []
    produced = 0
    rest = data
    while True:
        inflater = zlib.decompressobj(_GZIP_WBITS)
        try:
            chunk = inflater.decompress(rest, limit - produced + 1)
        except zlib.error:
            raise ApiError(400, "malformed_body", "the body is not valid gzip") from None
        produced += len(chunk)
        if produced > limit:
            raise _too_large(limit, "decompressed body")
        out.append(chunk)
        if not inflater.eof:
            raise ApiError(400, "malformed_body", "the gzip stream is truncated")
        rest = inflater.unused_data
        if not rest:
            return b"".join(out)


def decodes_within(raw: bytes, content_encoding: str | None, bound: int) -> bool:
    """Whether the body, as sent and as decoded, is at most `bound` bytes: a gzip body is inflated up to the bound
    to find out (a gzip bomb is small as sent), so deciding costs at most `bound` bytes of inflation."""
    if len(raw) > bound:
        return False
    if (content_encoding or "").strip().lower() not in ("gzip", "x-gzip"):
        return True
    try:
        gunzip_limited(raw, bound)
    except ApiError as exc:
        return exc.status != 413  # malformed gzip fails as fast in place
    return True


async def read_limited(request: Request, limits: IngestSettings) -> bytes:
    """The body as sent: 413 as soon as Content-Length or the bytes streamed so far exceed the limit."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ApiError(400, "malformed_body", "invalid Content-Length") from None
        if length > limits.max_body_bytes:
            raise _too_large(limits.max_body_bytes, "body")
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limits.max_body_bytes:
                raise _too_large(limits.max_body_bytes, "body")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the body ended early") from None
    return b"".join(chunks)


def inflate_limit(sent_bytes: int, limits: IngestSettings) -> int:
    """How far a gzip body of `sent_bytes` may inflate: the decoded-size limit, the inflate ratio, 1 MiB at least."""
    allowance = max(c.INGEST_MIN_INFLATE_ALLOWANCE_BYTES, sent_bytes * limits.max_inflate_ratio)
    return min(limits.max_decoded_bytes, allowance)


def decode_body(raw: bytes, content_encoding: str | None, limits: IngestSettings) -> bytes:
    """The JSON text: gunzipped if declared so, and never longer than the decoded-size limit."""
    if (content_encoding or "").strip().lower() in ("gzip", "x-gzip"):
        limit = inflate_limit(len(raw), limits)
        try:
            return gunzip_limited(raw, limit)
        except ApiError as exc:
            if exc.status == 413 and limit < limits.max_decoded_bytes:
                raise ApiError(413, "payload_too_large", f"the decompressed body exceeds {limits.max_inflate_ratio} "
                               "times its compressed size (a gzip bomb?)") from None
            raise
    if len(raw) > limits.max_decoded_bytes:
        raise _too_large(limits.max_decoded_bytes, "body")
    return raw


def parse_json(text: bytes) -> Any:
    """orjson parse; 400 with the parser's position (never the content) on failure."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON (at byte {exc.pos})") from None


def decode_and_parse(raw: bytes, content_encoding: str | None, limits: IngestSettings) -> tuple[Any, int]:
    """Gunzip (bounded), check the nesting depth and parse: the JSON value and the decoded size in bytes."""
    text = decode_body(raw, content_encoding, limits)
    if deeper_than(text, limits.max_json_depth):
        raise NestingTooDeep(limits.max_json_depth, text)
    return parse_json(text), len(text)

