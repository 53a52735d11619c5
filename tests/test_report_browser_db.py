"""A real run's HTML report opened in a real headless browser (Debian's chromium, driven through its
chromedriver by selenium): it loads nothing but itself, logs no error, shows its verdict and charts,
and fits a phone's width."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.conftest import ROOT

pytestmark = pytest.mark.postgres

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
NARROW = 390
#: Everything that could make the browser reach out on its own, off; a proxy on a closed local port
#: catches whatever would still try (and the page's Content-Security-Policy refuses any fetch).
OFFLINE_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # root in CI
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-pings",
    "--metrics-recording-only",
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[webdriver.Chrome]:
    for program in (CHROMIUM, CHROMEDRIVER):
        assert Path(program).exists(), f"{program} is missing: apt-get install chromium chromium-driver"
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium's driver manager looks nothing up
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in OFFLINE_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def requests_sent(driver: webdriver.Chrome) -> list[str]:
    """The URL of every request the browser sent since the last call (the DevTools Network events)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
        elif message["method"] == "Network.webSocketCreated":
            urls.append(message["params"]["url"])
    return urls


def screenshot_dir(tmp_path: Path) -> Path:
    """CI keeps what it is given in POOLBENCH_CI_REPORTS_DIR (.ci/run); elsewhere the test's own directory."""
    kept = os.environ.get("POOLBENCH_CI_REPORTS_DIR")
    return Path(kept) if kept else tmp_path


def test_a_small_runs_report_opens_offline_in_a_real_browser(tmp_path: Path, browser: webdriver.Chrome) -> None:
    results, report = tmp_path / "r.json", tmp_path / "r.html"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "poolbench.cli",
            "run",
            str(ROOT / "manifests/examples/small.yaml"),
            "--output",
            str(results),
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"report written to {report}" in proc.stderr
    document = json.loads(results.read_text())
    verdict = document["status"]["verdict"]["summary"]
    assert verdict.startswith("2 replicas ran safely; 8 replicas failed")

    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": NARROW, "height": 844, "deviceScaleFactor": 1, "mobile": True}
    )
    requests_sent(browser)  # what the browser did before the page (its blank tab) is not the page's
    browser.get(report.as_uri())
    browser.find_element(By.ID, "poolbench-document")  # loaded to its end

    assert requests_sent(browser) == [report.as_uri()]  # the file itself and nothing else
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []

    shown = browser.find_element(By.CSS_SELECTOR, "#verdict .verdict-text")
    assert shown.is_displayed()
    assert shown.text == verdict

    charts: list[dict[str, Any]] = browser.execute_script(
        """return Array.from(document.querySelectorAll('figure.chart')).map(f => {
             const svg = f.querySelector('svg'); const box = svg.getBoundingClientRect();
             return {id: f.id, shapes: svg.querySelectorAll('path, rect').length,
                     filled: svg.querySelectorAll('path.area, path.exact, rect').length,
                     width: box.width, height: box.height};
           })"""
    )
    assert [c["id"] for c in charts] == [
        "connections-over-time",
        "peaks-per-step",
        "latencyMs-per-step",
        "checkoutWaitMs-per-step",
        "variants-compared",
        "variants-connections",
    ]
    for chart in charts:
        assert chart["filled"] > 0, chart  # data drawn, not only axes
        assert 0 < chart["width"] <= NARROW, chart
        assert chart["height"] > 0, chart

    widths = browser.execute_script(
        "return [window.innerWidth, document.documentElement.scrollWidth, document.body.scrollWidth]"
    )
    assert widths[0] == NARROW
    assert widths[1] <= NARROW, widths  # nothing pushes the page sideways at a phone's width
    assert widths[2] <= NARROW, widths
    rows = browser.find_elements(By.CSS_SELECTOR, "table.steps tbody tr")
    assert len(rows) == 2

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": NARROW, "height": height, "deviceScaleFactor": 1, "mobile": True},
    )
    target = screenshot_dir(tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    screenshot = target / "report-narrow.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    if target != tmp_path:
        shutil.copy(report, target / "report.html")
    print(f"report screenshot at {NARROW} px: {screenshot}")
    assert requests_sent(browser) == []  # nor while it was laid out and drawn again
