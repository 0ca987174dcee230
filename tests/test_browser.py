"""A real browser (headless Debian Chromium driven by Playwright) signs in, uploads, predicts; screenshots every page."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect, sync_playwright

from conftest import ROOT, Client, Proc, Stack, free_port, unique, wait_for
from test_batch_jobs import rows_sql, wait_done
from test_quickstart import reference_csv

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture(scope="module")
def console_url(stack: Stack, api_url: str) -> Iterator[str]:
    port = free_port()
    log = stack.tmp / f"console-{port}.log"
    proc = Proc([sys.executable, "-m", "console"], {**stack.env, "MODELDECK_CONSOLE_API_URL": api_url,
                                                     "MODELDECK_CONSOLE_PORT": str(port)}, log)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return requests.get(url + "/_stcore/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_for(healthy, 60, "console", log)
    yield url
    proc.stop()


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    if not Path(CHROMIUM).exists():
        pytest.fail("the browser test needs Debian's chromium: apt-get install chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield pg
        browser.close()


def shot(page: Page, name: str) -> None:
    page.wait_for_timeout(800)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def open_page(page: Page, title: str) -> None:
    page.get_by_role("link", name=title).click()
    expect(page.get_by_role("heading", name=title).first).to_be_visible(timeout=30000)


def test_sign_in_upload_predict_and_screenshots(page: Page, console_url: str, admin_key: str, admin: Client,
                                                iris, tmp_path, postgres) -> None:  # type: ignore[no-untyped-def]
    model, X = iris
    page.goto(console_url)
    expect(page.get_by_text("API key")).to_be_visible(timeout=30000)
    shot(page, "sign-in")
    page.get_by_label("API key", exact=True).and_(page.locator("input")).fill(admin_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=30000)
    shot(page, "overview")

    # Upload through the form, with a reference sample that gives the schema.
    name = unique("aaa-browser-iris")
    artifact, ref = tmp_path / "iris.skops", tmp_path / "reference.csv"
    import skops.io as sio

    sio.dump(model, artifact)
    ref.write_bytes(reference_csv(X))
    open_page(page, "Models")
    page.get_by_text("Upload a new version").click()
    inputs = page.locator("input[type=file]")
    inputs.nth(0).set_input_files(str(artifact))
    inputs.nth(1).set_input_files(str(ref))
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_test_id("stBaseButton-primaryFormSubmit").filter(has_text="Upload").click()
    expect(page.get_by_text(f"Uploaded {name} version 1")).to_be_visible(timeout=60000)
    shot(page, "models")

    # Predict from the form (defaults: the reference sample's means) and compare with the API.
    open_page(page, "Try a model")
    page.get_by_label("Model", exact=True).click()
    page.get_by_role("option", name=name).click()
    expect(page.get_by_role("spinbutton", name="petal_width")).to_be_visible(timeout=30000)
    page.get_by_role("button", name="Predict", exact=True).click()
    expect(page.get_by_text(f"Answered by {name} version 1")).to_be_visible(timeout=30000)
    stats = admin.get(f"/api/v1/models/{name}/versions/1").json()["reference"]["features"]
    row = {f: stats[f]["mean"] for f in stats}
    expected = admin.post(f"/api/v1/models/{name}/predict", json={"inputs": [row]}).json()["predictions"][0]
    shown = page.locator('[data-testid="stMetricValue"]').first.inner_text()
    assert shown == str(expected)
    shot(page, "predict")

    # The monitoring page draws what the API has flushed (every few seconds): wait for this model's traffic.
    wait_for(lambda: any(m["model"] == name for m in admin.get("/api/v1/monitoring/overview").json()["busiest_models"]),
             30, "the predictions in the monitoring overview")

    # Real data for the data-source and batch-job pages: a warehouse table scored into another table.
    postgres.execute(rows_sql(2000, "browser_rows"))
    warehouse = unique("warehouse")
    assert admin.post("/api/v1/datasources", json={"name": warehouse, "kind": "sql", "url": postgres.url,
                                                   "readers": ["operator"], "writers": ["operator"]}).status_code == 201
    job = admin.post("/api/v1/jobs", json={"model": name, "source": {"datasource": warehouse, "table": "browser_rows"},
                                           "destination": {"datasource": warehouse, "table": "browser_scores"}})
    assert job.status_code == 202, job.text
    assert wait_done(admin, job.json()["job_id"])["status"] == "succeeded"

    for title, file in [("Monitoring", "monitoring"), ("Runtimes", "runtimes"), ("Batch jobs", "jobs"), ("Data sources", "datasources"),
                        ("Audit trail", "audit"), ("API keys", "keys")]:
        open_page(page, title)
        shot(page, file)
