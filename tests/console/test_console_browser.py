"""The console in a real headless Chromium (Debian's chromium + chromium-driver) against a live site.

The site's feature store holds a synthetic cohort; the broker holds simulated stage activity (input, DLQ and
late-data records, stage groups with committed offsets); a Prometheus endpoint in the test serves the counters the
pseudonymise worker and a DLQ metric would expose. Every page must draw its charts with data; the test clicks from
the cohort to a participant and saves a screenshot of each page under reports/console/.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from console_harness import (
    REPORTS,
    ConsoleProcess,
    advance_group,
    committed,
    free_port,
    simulate_activity,
    wait_for,
)
from prometheus_client import CollectorRegistry, Counter, start_http_server

from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.core.topics import PSEUDO_TELEMETRY
from clinstream_devtools.console.synthetic import Cohort, default_first_day, fill_store

pytestmark = [pytest.mark.integration, pytest.mark.skipif(shutil.which("chromedriver") is None,
                                                           reason="needs Debian's chromium-driver")]
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

DAYS = 3


@pytest.fixture
def metrics_endpoint() -> Iterator[tuple[str, Counter, Counter]]:
    """A Prometheus endpoint with the pseudonymise worker's counter and the DLQ-by-reason counter."""
    registry = CollectorRegistry()
    events = Counter("clinstream_pseudonymise_events", "test", ["site", "outcome"], registry=registry)
    dlq = Counter("clinstream_dlq_records", "test", ["stage", "reason"], registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"http://127.0.0.1:{port}/metrics", events, dlq
    server.shutdown()
    thread.join(10)


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium through chromedriver, both from Debian."""
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2200"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    # plotly.js is 4.8 MB of script: on the shared 2-core machine (load 20-30) parsing it took up to 110 s
    driver.set_page_load_timeout(300)
    yield driver
    driver.quit()


def _charts_rendered(driver: Any) -> dict[str, int]:
    """Wait until every chart of the page is drawn; its data-point count per chart id."""
    charts = driver.find_elements(By.CSS_SELECTOR, ".chart")
    assert charts, "page has no chart"
    wait_for("charts drawn by plotly.js",
             lambda: all(c.get_attribute("data-rendered") == "true" for c in charts), 120)
    for c in charts:
        assert c.find_elements(By.CSS_SELECTOR, "svg.main-svg"), f"{c.get_attribute('id')} drew no SVG"
    return {c.get_attribute("id"): int(c.get_attribute("data-points")) for c in charts}


def test_console_pages_in_chromium(kafka_site: Settings, db_site: Settings, tmp_path: Path, browser: Any,
                                   metrics_endpoint: tuple[str, Counter, Counter]) -> None:
    url, events, dlq_counter = metrics_endpoint
    site = kafka_site.site_id
    with connect(db_site) as conn:
        fill_store(conn, Cohort(participants=120, first_day=default_first_day(DAYS), days=DAYS, seed=11))
        conn.execute("INSERT INTO erasure_audit (request_id, participant_pseudonym, requested_at, rows_deleted)"
                     " VALUES (gen_random_uuid(), %s, now() - interval '1 day', 42)", ("e" * 64,))
        conn.commit()
    simulate_activity(kafka_site, records=40)
    events.labels(site=site, outcome="consent_granted").inc(120)
    dlq_counter.labels(stage="ingest", reason="schema").inc(40)
    dlq_counter.labels(stage="features", reason="implausible").inc(40)
    console = ConsoleProcess(kafka_site, tmp_path, [url], sample_every=1.0)
    try:
        auth = {"Authorization": f"Bearer {console.token}"}
        assert httpx.get(console.url + "/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        # throughput needs two samples that differ: move a stage on and wait until the console saw it
        before = committed(kafka_site, "features", PSEUDO_TELEMETRY.name(site))
        advance_group(kafka_site, "features", PSEUDO_TELEMETRY.name(site), 10)
        assert committed(kafka_site, "features", PSEUDO_TELEMETRY.name(site)) == before + 10
        events.labels(site=site, outcome="consent_withdrawn").inc(3)
        wait_for("a sample with the new offsets",
                 lambda: "(one sample so far)" not in httpx.get(console.url + "/health", headers=auth).text, 30)

        REPORTS.mkdir(parents=True, exist_ok=True)
        browser.get(console.url + "/health")
        assert browser.current_url.endswith("/login")
        browser.find_element(By.ID, "token").send_keys(console.token)
        browser.find_element(By.ID, "login").click()
        wait_for("the health page", lambda: browser.current_url.endswith("/health"))
        assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        points = _charts_rendered(browser)
        for chart in ("lag", "throughput", "freshness", "dlq_stage", "dlq_reason", "consent", "erasures", "late"):
            assert points[f"chart-{chart}"] > 0, (chart, points)
        lag_table = browser.find_element(By.ID, "lag-table").text
        assert "features" in lag_table and "store" in lag_table
        browser.save_screenshot(str(REPORTS / "health.png"))

        browser.find_element(By.ID, "nav-cohort").click()
        wait_for("the cohort page", lambda: browser.current_url.endswith("/cohort"))
        points = _charts_rendered(browser)
        for chart in ("completeness", "valid_days"):  # every participant lands in one bin
            figure = json.loads(browser.find_element(By.ID, f"chart-{chart}").get_attribute("data-figure"))
            assert points[f"chart-{chart}"] > 0 and sum(figure["data"][0]["y"]) == 120
        assert points["chart-by_set"] > 0
        browser.save_screenshot(str(REPORTS / "cohort.png"))

        link = browser.find_elements(By.CSS_SELECTOR, "a.participant")[0]
        pseudonym = link.text
        link.click()
        wait_for("the participant page", lambda: "/participants/" in browser.current_url)
        assert browser.find_element(By.ID, "pseudonym").text == pseudonym
        points = _charts_rendered(browser)
        hours = 24 * DAYS
        for name in ("heart_rate", "hrv", "steps", "spo2", "skin_temperature"):
            assert points[f"chart-{name}"] == 2 * hours, (name, points)  # value + completeness per window
        assert points["chart-sleep"] == 2 * DAYS
        samples = browser.find_element(By.ID, "samples-table").text
        assert "SER-" in samples or "PL1-" in samples or "PL2-" in samples or "URN-" in samples
        browser.save_screenshot(str(REPORTS / "participant.png"))
    finally:
        console.stop()


def test_missing_and_malformed_pseudonyms_are_4xx(db_site: Settings, tmp_path: Path) -> None:
    with connect(db_site) as conn:
        fill_store(conn, Cohort(participants=2, first_day=default_first_day(1) - timedelta(days=0), days=1, seed=1))
    console = ConsoleProcess(db_site, tmp_path, [], sample_every=60.0)
    try:
        auth = {"Authorization": f"Bearer {console.token}"}
        assert httpx.get(console.url + "/participants/" + "0" * 64, headers=auth).status_code == 404
        assert httpx.get(console.url + "/participants/DROP%20TABLE", headers=auth).status_code == 422
        assert httpx.get(console.url + "/cohort").status_code == 303  # no token: to the login page
    finally:
        console.stop()
