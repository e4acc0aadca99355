"""The gateway's FastAPI application: routes, authentication, error answers, health, metrics and OpenAPI."""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clinstream.core.avro import get_codec, subject_key
from clinstream.core.collector import configure_collector
from clinstream.core.config import Settings, get_settings
from clinstream.core.constants import DEVICE_TOKEN_PREFIX, LIMS_TOKEN_PREFIX
from clinstream.core.dlq import dead_letter
from clinstream.core.kafka import BrokerUnavailable
from clinstream.core.timeutil import from_ms, now_ms
from clinstream.core.topics import Stage, dlq
from clinstream.ingest import biobank_models, telemetry_models
from clinstream.ingest.biobank_intake import BiobankIntake
from clinstream.ingest.biobank_models import BiobankAnswer, BiobankBatch
from clinstream.ingest.body import NestingTooDeep, check_media_type, decode_and_parse, decodes_within, read_limited
from clinstream.ingest.config import IngestSettings, get_ingest_settings
from clinstream.ingest.credentials import ParsedToken, bearer_token, parse_token
from clinstream.ingest.delivery import deliver
from clinstream.ingest.dlq_context import biobank_context, context_headers, telemetry_context
from clinstream.ingest.errors import ApiError, ErrorBody, unavailable
from clinstream.ingest.gateway_db import DatabaseUnavailable, DevicePrincipal, GatewayDb, LimsPrincipal
from clinstream.ingest.lims_scope import check_scope
from clinstream.ingest.metrics import GatewayMetrics
from clinstream.ingest.producer import AsyncDurableProducer
from clinstream.ingest.rate_limit import TokenBuckets
from clinstream.ingest.telemetry_intake import PreparedTelemetry, TelemetryIntake
from clinstream.ingest.telemetry_models import RejectedItem, TelemetryAnswer, TelemetryBatch

P = TypeVar("P", DevicePrincipal, LimsPrincipal)

log = logging.getLogger("clinstream.ingest.gateway")
BODY_READ_TIMEOUT_S = 60.0
INLINE_BODY_BYTES = 64 * 1024  # bodies above this, as sent or decoded, are parsed and validated in a worker thread
_REF = "#/components/schemas/{model}"


def _json(status: int, content: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json", headers=headers)


def _error_response(exc: ApiError) -> Response:
    headers = dict(exc.headers)
    if exc.status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="clinstream"')
    return _json(exc.status, exc.body().model_dump(), headers)


class _MetricsMiddleware:
    """Counts every answer by endpoint and status, and times it (pure ASGI, no body buffering)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = self.metrics.endpoint_label(str(scope.get("path", "")))
        status = [500]
        started = time.monotonic()

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.monotonic() - started)


class Gateway:
    """The runtime parts of one gateway app; created at start-up, closed at shutdown."""

    def __init__(self, settings: Settings, limits: IngestSettings) -> None:
        self.settings = settings
        self.limits = limits
        self.metrics = GatewayMetrics()
        self.producer: AsyncDurableProducer | None = None
        self.db: GatewayDb | None = None
        self.telemetry: TelemetryIntake | None = None
        self.biobank: BiobankIntake | None = None
        self.buckets = TokenBuckets(limits.gateway_processes)
        self.in_flight = 0

    async def start(self) -> None:
        """Create the producer and the DB pool (neither needs its service to be up yet)."""
        self.producer = AsyncDurableProducer(self.settings, deadline_s=self.limits.deadline_s)
        self.db = GatewayDb(self.settings, max_size=self.limits.db_pool_max,
                            timeout_s=min(self.limits.deadline_s, 5.0), cache_ttl_s=self.limits.credential_cache_ttl_s,
                            lookups=self.metrics.credential_lookups, default_time_zone=self.limits.time_zone)
        await self.db.open()
        site = self.settings.site_id
        self.telemetry = TelemetryIntake(site, self.limits, self.producer, self.metrics)
        self.biobank = BiobankIntake(site, self.limits, self.producer, self.db, self.metrics)

    async def stop(self) -> None:
        """Close the pool and flush the producer (bounded)."""
        if self.db is not None:
            await self.db.close()
        if self.producer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.producer.close_within, 5.0)

    async def watch_broker(self) -> None:
        """While the broker is down (or librdkafka says all connections dropped), probe it to notice recovery."""
        assert self.producer is not None
        producer = self.producer
        loop = asyncio.get_running_loop()
        last_probe = 0.0
        while True:
            await asyncio.sleep(0.1)
            due = time.monotonic() - last_probe >= self.limits.broker_probe_s
            if producer.probe_wanted or (not producer.broker_up and due):
                last_probe = time.monotonic()
                await loop.run_in_executor(None, producer.probe, 1.0)
            self.metrics.broker_up.set(1 if producer.broker_up else 0)

    def _unavailable(self, cause: str, detail: str) -> ApiError:
        self.metrics.unavailable.labels(cause).inc()
        error = {"broker": "broker_unavailable", "database": "database_unavailable"}.get(cause, cause)
        return unavailable(detail, self.limits.retry_after_s, error)

    async def shed(self, handler: Callable[[], Awaitable[Response]]) -> Response:
        """Run an intake handler unless too many are in progress (then 503 at once: latency stays bounded)."""
        if self.in_flight >= self.limits.max_in_flight:
            raise self._unavailable("overloaded", "the gateway is at capacity; retry later")
        self.in_flight += 1
        try:
            return await handler()
        finally:
            self.in_flight -= 1

    def _token(self, request: Request, prefix: str) -> ParsedToken:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            self.metrics.auth_failures.labels("missing").inc()
            raise ApiError(401, "unauthenticated", "an Authorization: Bearer <token> header is required")
        parsed = parse_token(token)
        if parsed is None or parsed.prefix != prefix:
            self.metrics.auth_failures.labels("malformed").inc()
            raise ApiError(401, "unauthenticated", "invalid credential")
        return parsed

    async def _principal(self, request: Request, prefix: str,
                         lookup: Callable[[ParsedToken], Awaitable[P | None]]) -> P:
        """The principal of a request's token (401 if none; 503 if the credential store is away)."""
        parsed = self._token(request, prefix)
        try:
            principal = await lookup(parsed)
        except DatabaseUnavailable:
            raise self._unavailable("database", "the credential store is unavailable") from None
        if principal is None:
            self.metrics.auth_failures.labels("unknown_or_revoked").inc()
            raise ApiError(401, "unauthenticated", "invalid credential")
        return principal

    def limit(self, unit: str, key_id: str, amount: int, per_minute: int | None) -> None:
        """Take from a credential's bucket: 429 + Retry-After when it is over its limit (nothing is produced)."""
        if per_minute is None:
            return
        if amount > per_minute / self.limits.gateway_processes:
            raise ApiError(413, "over_the_per_minute_limit", f"one request may hold at most the {unit} of one "
                           "minute's limit; send smaller batches")
        verdict = self.buckets.take(unit, key_id, amount, per_minute)
        self.metrics.limit_usage.labels(unit).observe(verdict.usage)
        if not verdict.allowed:
            self.metrics.rate_limited.labels(unit).inc()
            raise ApiError(429, "rate_limited", f"this credential is over its limit of {per_minute} {unit} per "
                           "minute; send the same request again after Retry-After seconds",
                           headers={"Retry-After": str(verdict.retry_after_s)})

    async def device(self, request: Request) -> DevicePrincipal:
        """The authenticated device of a request (401 if none; 503 if the credential store is away; 429)."""
        assert self.db is not None
        device = await self._principal(request, DEVICE_TOKEN_PREFIX, self.db.device)
        self.limit("requests", device.key_id, 1, device.max_requests_per_min or self.limits.max_requests_per_min)
        return device

    async def lims(self, request: Request) -> LimsPrincipal:
        """The authenticated LIMS of a request (429 over its request limit)."""
        assert self.db is not None
        if self.limits.lims_requires_client_cert and not self.limits.client_cert_verified:
            raise ApiError(403, "client_certificate_required", "LIMS events are accepted only through the site's "
                           "gateway that verifies client certificates")
        lims = await self._principal(request, LIMS_TOKEN_PREFIX, self.db.lims)
        self.limit("requests", lims.key_id, 1, lims.max_requests_per_min or self.limits.max_requests_per_min)
        return lims

    async def raw_body(self, request: Request) -> bytes:
        """The body as sent (media type and size checked), within the read timeout."""
        check_media_type(request)
        try:
            return await asyncio.wait_for(read_limited(request, self.limits), BODY_READ_TIMEOUT_S)
        except TimeoutError:
            raise ApiError(408, "request_timeout", "the body was not received in time") from None

    async def dead_letter_body(self, refused: NestingTooDeep, stream: str, key: bytes | None,
                               context: list[tuple[str, bytes]]) -> None:
        """Put a whole refused body, its bytes as received (never re-serialised), on the ingest DLQ."""
        assert self.producer is not None
        message = dead_letter(get_codec(), site_id=self.settings.site_id, stage=Stage.INGEST,
                              rejection=refused.rejection, original_value=refused.original, original_key=key,
                              content_type="application/json", extra_headers=context)
        await deliver(self.producer, self.metrics, stream, [],
                      [(dlq(Stage.INGEST).name(self.settings.site_id), [message])])

    async def body(self, request: Request, endpoint: str, context: list[tuple[str, bytes]]) -> Any:
        """The parsed JSON body (large bodies are parsed in a worker thread); too deep: dead-lettered, 422."""
        raw = await self.raw_body(request)
        encoding = request.headers.get("content-encoding")
        try:
            if not decodes_within(raw, encoding, INLINE_BODY_BYTES):
                value, size = await asyncio.to_thread(decode_and_parse, raw, encoding, self.limits)
            else:
                value, size = decode_and_parse(raw, encoding, self.limits)
        except NestingTooDeep as refused:
            await self.dead_letter_body(refused, "biobank", None, context)
            raise
        self.metrics.body_bytes.labels(endpoint).observe(size)
        return value

    async def post_telemetry(self, request: Request) -> Response:
        """POST /v1/telemetry."""
        assert self.telemetry is not None
        received_ms = now_ms()
        device = await self.device(request)
        intake = self.telemetry
        raw = await self.raw_body(request)
        encoding = request.headers.get("content-encoding")

        def prepare() -> tuple[PreparedTelemetry, int]:
            body, size = decode_and_parse(raw, encoding, self.limits)
            return intake.prepare(body, device, received_ms), size

        # Validation and encoding are CPU work: big bodies (as sent or inflated) go to a thread so the event loop keeps
        # serving.
        try:
            small = decodes_within(raw, encoding, INLINE_BODY_BYTES)
            prepared, size = prepare() if small else await asyncio.to_thread(prepare)
        except NestingTooDeep as refused:
            context = context_headers(telemetry_context(received_ms, device.device_id, device.participant_id))
            await self.dead_letter_body(refused, "telemetry", subject_key(self.settings.site_id,
                                                                          device.participant_id), context)
            raise
        self.metrics.body_bytes.labels("/v1/telemetry").observe(size)
        if prepared.outcome.readings:
            self.limit("readings", device.key_id, prepared.outcome.readings,
                       device.max_readings_per_min or self.limits.max_readings_per_min)
        try:
            outcome = await intake.deliver(prepared)
        except BrokerUnavailable:
            raise self._unavailable("broker", "the broker did not acknowledge in time; send the batch again "
                                    "unchanged later") from None
        answer = {
            "accepted": [b.block_id for b in outcome.accepted],
            "rejected": [_rejected_item(r.index, r.block_id, r.rejection.field_path, r.rejection.reason)
                         for r in outcome.rejected],
            "readings_accepted": outcome.readings,
            "received_at": from_ms(received_ms),
        }
        return _json(202 if outcome.accepted else 422, answer)

    async def post_biobank(self, request: Request) -> Response:
        """POST /v1/biobank/events."""
        assert self.biobank is not None
        received_ms = now_ms()
        lims = await self.lims(request)
        body = await self.body(request, "/v1/biobank/events",
                               context_headers(biobank_context(received_ms, lims.key_id)))
        events = self.biobank.validator.envelope(body)
        check_scope(events, lims)
        self.limit("events", lims.key_id, len(events), lims.max_events_per_min or self.limits.max_events_per_min)
        try:
            outcome = await self.biobank.submit_events(events, lims, received_ms)
        except BrokerUnavailable:
            raise self._unavailable("broker", "the broker did not acknowledge in time; send the events again "
                                    "unchanged later") from None
        except DatabaseUnavailable:
            raise self._unavailable("database", "the event ledger or the participants' time zones could not be "
                                    "recorded; send the events again unchanged later") from None
        answer = {
            "accepted": [e.event_id for e in outcome.accepted],
            "duplicates": [e.event_id for e in outcome.duplicates],
            "rejected": [_rejected_item(r.index, r.event_id, r.rejection.field_path, r.rejection.reason)
                         for r in outcome.rejected],
            "received_at": from_ms(received_ms),
        }
        return _json(422 if outcome.rejected and not (outcome.accepted or outcome.duplicates) else 202, answer)

    async def ready(self) -> Response:
        """GET /readyz: the broker answers metadata requests and the credential store answers."""
        assert self.producer is not None and self.db is not None
        loop = asyncio.get_running_loop()
        broker = await loop.run_in_executor(None, self.producer.probe, 1.0)
        database = await self.db.ping()
        self.metrics.broker_up.set(1 if broker else 0)
        ok = broker and database
        return _json(200 if ok else 503, {"status": "ready" if ok else "not ready", "broker": broker,
                                          "database": database},
                     None if ok else {"Retry-After": str(self.limits.retry_after_s)})


def _rejected_item(index: int, item_id: str | None, path: str | None, reason: str) -> dict[str, Any]:
    return {"index": index, "id": item_id, "field_path": path, "reason": reason}


TARPIT_STATUSES = frozenset({401, 413, 429})  # the refusals a misbehaving client repeats as fast as it can


async def _guarded(handler: Callable[[], Awaitable[Response]], refusal_delay_s: float = 0.0,
                   sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> Response:
    """Run a handler: ApiError becomes its answer (401/413/429 held `refusal_delay_s`: a hammering client waits on
    its own connection instead of taking the event loop from others); anything else a 500 that logs no message."""
    try:
        return await handler()
    except ApiError as exc:
        if exc.status in TARPIT_STATUSES and refusal_delay_s > 0:
            await sleep(refusal_delay_s)
        return _error_response(exc)
    except Exception as exc:
        frames = "".join(traceback.format_tb(exc.__traceback__))
        log.error("unhandled %s in the gateway\n%s", type(exc).__name__, frames)
        return _json(500, {"error": "internal_error", "detail": "internal error", "field_path": None})


_ERRORS = {
    400: "Malformed JSON or gzip.", 401: "Missing or invalid credential.", 413: "Body too large (as sent or "
    "after gunzip), or more readings/events than one minute's limit.", 429: "The credential is over its per-minute "
    "limit of requests, readings or events; nothing was accepted or dead-lettered. Send the same request again after "
    "the Retry-After seconds.", 415: "Content-Type is not application/json, or unsupported Content-Encoding.",
    503: "The broker (or the credential store) did not answer within the deadline; nothing was accepted. "
    "Retry after the Retry-After seconds, unchanged.",
}


def _responses(answer: type[Any], extra: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {
        status: {"description": text, "model": ErrorBody} for status, text in {**_ERRORS, **extra}.items()}
    responses[202] = {"description": "Accepted: every accepted item is durably in Kafka (acks=all); refused "
                                     "items are listed with their reason.", "model": answer}
    responses[422] = {"description": "Nothing accepted: every item was refused (body: the answer model), or the "
                                     "envelope is wrong (body: ErrorBody).",
                      "content": {"application/json": {"schema": {"oneOf": [
                          {"$ref": _REF.format(model=answer.__name__)}, {"$ref": _REF.format(model="ErrorBody")}]}}}}
    return responses


def _body_doc(model: str, security: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "$ref": _REF.format(model=model)}}}}, "security": [{security: []}]}


def _custom_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for model in (TelemetryBatch, BiobankBatch, TelemetryAnswer, BiobankAnswer, RejectedItem, ErrorBody):
            doc = model.model_json_schema(by_alias=True, ref_template=_REF, mode="serialization"
                                          if model in (TelemetryAnswer, BiobankAnswer, ErrorBody, RejectedItem)
                                          else "validation")
            for name, sub in doc.pop("$defs", {}).items():
                schemas.setdefault(name, sub)
            schemas[model.__name__] = doc
        components["securitySchemes"] = {
            "deviceToken": {"type": "http", "scheme": "bearer", "description": "Device token csd_<key>.<secret> "
                            "from `clinstream devices register`; bound to one participant."},
            "limsKey": {"type": "http", "scheme": "bearer", "description": "LIMS API key csl_<key>.<secret> from "
                        "`clinstream lims register-key`."},
        }
        app.openapi_schema = schema
        return schema

    return build


def create_app(settings: Settings | None = None, limits: IngestSettings | None = None) -> FastAPI:
    """A gateway app for a site; its producer and DB pool live from start-up to shutdown."""
    gw = Gateway(settings or get_settings(), limits or get_ingest_settings())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        assert gw.db is not None
        tasks = [asyncio.create_task(gw.watch_broker()), asyncio.create_task(gw.db.listen())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await gw.stop()

    app = FastAPI(title="clinstream gateway", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None,
                  description="Authenticated intake of wearable telemetry and biobank LIMS events. A 202 means the "
                              "broker acknowledged (acks=all) every accepted item.")
    app.state.gateway = gw

    @app.get("/healthz", summary="Liveness: the process serves requests.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the broker and the credential store answer.",
             responses={503: {"description": "Not ready."}})
    async def readyz() -> Response:
        return await _guarded(gw.ready)

    @app.get("/metrics", summary="Prometheus metrics (no identifiers in labels).", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/telemetry", status_code=202, summary="Submit a batch of wearable measurement blocks.",
              description=telemetry_models.__doc__ or "",
              response_model=None, responses=_responses(TelemetryAnswer, {403: "A block names a participant this "
                                                                          "device is not registered for."}),
              openapi_extra=_body_doc("TelemetryBatch", "deviceToken"))
    async def post_telemetry(request: Request) -> Response:
        return await _guarded(lambda: gw.shed(lambda: gw.post_telemetry(request)), gw.limits.refusal_delay_s)

    @app.post("/v1/biobank/events", status_code=202, summary="Submit LIMS sample, assay and consent events.",
              description=biobank_models.__doc__ or "",
              response_model=None, responses=_responses(BiobankAnswer, {
                  403: "An event lies outside the LIMS key's scope (event type or sample-type prefix)."}),
              openapi_extra=_body_doc("BiobankBatch", "limsKey"))
    async def post_biobank(request: Request) -> Response:
        return await _guarded(lambda: gw.shed(lambda: gw.post_biobank(request)), gw.limits.refusal_delay_s)

    app.openapi = _custom_openapi(app)  # type: ignore[method-assign]
    app.add_middleware(_MetricsMiddleware, metrics=gw.metrics)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory: the app for the settings in the environment (one per gateway process)."""
    app = create_app(get_settings(), get_ingest_settings())
    configure_collector()
    return app
