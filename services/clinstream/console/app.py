"""The console's FastAPI app: login with the admin token, then the health, participant and cohort pages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import plotly
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from psycopg_pool import ConnectionPool

from clinstream.console import charts, health, store_reads
from clinstream.console.auth import COOKIE, session_matches, session_value, token_matches
from clinstream.console.sampler import Sampler
from clinstream.console.snapshot import Snapshots, StoreSnapshot
from clinstream.core.config import Settings

_HERE = Path(__file__).parent
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
_PUBLIC = frozenset({"/login", "/healthz", "/favicon.ico"})
_PUBLIC_PREFIXES = ("/static/", "/vendor/")  # the console's own assets and the installed plotly.js


def _authorised(request: Request, token: str) -> bool:
    cookie = request.cookies.get(COOKIE)
    if cookie and session_matches(token, cookie):
        return True
    header = request.headers.get("authorization", "")
    return header.startswith("Bearer ") and token_matches(token, header[len("Bearer "):])


def create_app(settings: Settings, token: str, sampler: Sampler, pool: ConnectionPool[Any],
               snapshots: Snapshots) -> FastAPI:
    """The console app over a read-only pool, a running sampler and cohort snapshots."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        sampler.stop()
        snapshots.stop()
        pool.close()

    app = FastAPI(title="clinstream console", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Response:
        path = request.url.path
        if path in _PUBLIC or path.startswith(_PUBLIC_PREFIXES) or _authorised(request, token):
            response: Response = await call_next(request)
            return response
        if request.headers.get("authorization"):
            return Response("invalid admin token", status_code=401)
        return RedirectResponse("/login", status_code=303)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> Response:
        return templates.TemplateResponse(request, "login.html", {"error": None})

    @app.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        offered = parse_qs((await request.body()).decode(errors="replace")).get("token", [""])[0]
        if not token_matches(token, offered):
            return templates.TemplateResponse(request, "login.html", {"error": "wrong admin token"},
                                              status_code=401)
        response = RedirectResponse("/health", status_code=303)
        response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict")
        return response

    @app.get("/logout")
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/vendor/plotly.min.js")
    def plotly_js() -> FileResponse:
        return FileResponse(PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    @app.get("/")
    def index() -> Response:
        return RedirectResponse("/health", status_code=303)

    @app.get("/health", response_class=HTMLResponse)
    def health_page(request: Request) -> Response:
        return templates.TemplateResponse(request, "health.html", _health_context(settings, sampler, _snap()))

    @app.get("/participant")
    def find_participant(pseudonym: str = "") -> Response:
        return RedirectResponse(f"/participants/{pseudonym.strip().lower()}", status_code=303)

    @app.get("/participants/{pseudonym}", response_class=HTMLResponse)
    def participant_page(request: Request, pseudonym: str) -> Response:
        if not store_reads.valid_pseudonym(pseudonym):
            raise HTTPException(422, "pseudonym: expected 8-128 lower-case hex characters")
        with pool.connection() as conn:
            newest = store_reads.newest_window(conn, pseudonym)
            if newest is None:
                raise HTTPException(404, "pseudonym: no feature rows in the active version for this pseudonym")
            series = store_reads.timelines(conn, pseudonym, newest)
            rows = store_reads.samples(conn, pseudonym)
        figures = {name: charts.timeline(name, series[name]) for name in charts.TIMELINE_VALUES if name in series}
        missing = [name for name in charts.TIMELINE_VALUES if name not in series]
        return templates.TemplateResponse(request, "participant.html", {
            "pseudonym": pseudonym, "newest": newest, "figures": figures, "missing": missing, "samples": rows})

    def _snap() -> StoreSnapshot:
        snap, error = snapshots.current()
        if snap is None:
            raise HTTPException(503, f"feature store not read yet: {error or 'first read under way'}")
        return snap

    @app.get("/cohort", response_class=HTMLResponse)
    def cohort_page(request: Request) -> Response:
        snap = _snap()
        people, by_set = snap.people, snap.by_set
        figures = {
            "completeness": charts.histogram("Mean DAY completeness per participant",
                                             [p["completeness"] for p in people], "completeness", 0.05),
            "valid_days": charts.histogram(f"Valid days (>= {store_reads.VALID_DAY_WEAR_H:.0f} h wear) per participant",
                                           [p["valid_days"] for p in people], "valid days", 1.0),
            "by_set": charts.quantile_boxes("DAY completeness by feature set", by_set),
        }
        lowest = sorted(people, key=lambda p: p["completeness"])[:25]
        return templates.TemplateResponse(request, "cohort.html", {
            "figures": figures, "participants": len(people), "lowest": lowest, "as_of": _as_of(snap.at)})

    return app


def _as_of(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _health_context(settings: Settings, sampler: Sampler, snap: StoreSnapshot) -> dict[str, Any]:
    samples = sampler.samples()
    site = settings.site_id
    last = samples[-1] if samples else None
    rows = health.lag_rows(site, samples)
    fresh, erasures = snap.fresh, snap.erasures
    figures: dict[str, Any] = {
        "lag": charts.grouped_bars("Lag per stage and partition (records)", [f"{r.stage} p{r.partition}" for r in rows],
                                   {"lag": [r.lag for r in rows]}, "records"),
        "throughput": charts.lines("Committed records per second by stage",
                                   health.throughput_series(site, samples), "records/s"),
        "freshness": charts.bar("Age of the newest stored window (s)",
                                [f"{f.feature_set} {f.window_kind}" for f in fresh], [f.age_s for f in fresh], "s"),
    }
    notes: dict[str, str] = {}
    if last is not None:
        by_stage = health.dlq_by_stage(site, last)
        figures["dlq_stage"] = charts.bar("Dead letters by stage (records retained)", list(by_stage),
                                          list(by_stage.values()), "records")
        reasons = health.metric_by_label(last, health.DLQ_METRIC, "stage", "reason")
        if reasons:
            figures["dlq_reason"] = charts.bar("Dead letters by stage and reason", [" / ".join(k) for k in reasons],
                                               list(reasons.values()), "records")
        else:
            notes["dlq_reason"] = (f"No reasons: no metrics endpoint exposes {health.DLQ_METRIC} "
                                   "(stage, reason); per-stage counts above come from the DLQ topics' offsets.")
        late = health.late_series(site, samples)
        figures["late"] = charts.lines("Late-data records (late-telemetry topic)", {"late records": late}, "records")
    if health.has_metric(samples, health.CONSENT_METRIC):
        figures["consent"] = charts.lines("Consent changes (pseudonymise counters)", {
            o: health.counter_series(samples, health.CONSENT_METRIC, outcome=o) for o in health.CONSENT_OUTCOMES},
            "events since worker start")
    else:
        notes["consent"] = (f"No consent series: no metrics endpoint exposes {health.CONSENT_METRIC}; "
                            "add the pseudonymise worker's /metrics with --metrics-url.")
    figures["erasures"] = charts.bar("Erasures honoured per day (store audit)",
                                     [e["day"].date().isoformat() for e in erasures], [e["erasures"] for e in erasures],
                                     "erasures")
    if not erasures:
        notes["erasures"] = "No erasures recorded in the store's audit table."
    return {"site": site, "rows": [asdict(r) for r in rows], "fresh": fresh, "figures": figures, "notes": notes,
            "sampled_at": last.at if last else None, "errors": last.errors if last else ("no sample yet",),
            "samples": len(samples), "as_of": _as_of(snap.at)}
