"""The explorer page in a real browser: Debian's headless Chromium, driven by Selenium through
Debian's chromedriver, against a real `duorank serve` subprocess on loopback (a tiny tower and
ranking stage; one item's title is an HTML injection attempt)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from catalog import Catalog, save_catalog
from retrieval.encoder import Encoder
from tests.conftest import tiny_catalog
from tests.live import build_ranked_stack, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "s3cret-token"
EVIL = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">Evil'
WAIT_S = 30.0

pytestmark = pytest.mark.slow


def _browser_or_skip() -> None:
    """Skips without a browser, unless the suite was told one is required (scripts/test
    installs Chromium and says so: CI runs these tests, it never skips them)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        if os.environ.get("DUORANK_BROWSER_TESTS") == "required":
            pytest.fail(f"browser tests required but missing: {missing}")
        pytest.skip(f"no browser here ({', '.join(missing)}); scripts/test installs one")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Iterator[str]:
    """`duorank serve` with the token, a tiny ranked stack and a report, on a free port."""
    _browser_or_skip()
    base = tmp_path_factory.mktemp("browser")
    catalog = tiny_catalog(n_items=30, n_users=12, per_user=10)
    assert isinstance(catalog, Catalog)
    items = dict(catalog.items)
    items["7"] = replace(items["7"], title=EVIL)
    catalog = replace(catalog, items=items)
    save_catalog(catalog, base / "data")
    stack = build_ranked_stack(base, catalog, encoder)
    report = base / "eval.json"
    report.write_text(
        json.dumps(
            {
                "methods": {"als": {"ndcg@10": 0.04}, "ranking_stage": {"ndcg@10": 0.08}},
                "best_baseline": "als",
                "ranking_stage": {"ablation": {"ranker": {"ndcg@10": 0.1, "rounds": 3}}},
            }
        )
    )
    port = free_port()
    env = {**os.environ, "DUORANK_API_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1"}
    args = ["--data", str(base / "data"), "--root", str(stack.root), "--ranker", str(stack.ranker)]
    cmd = [sys.executable, "-m", "duorank", "--home", str(base / "home"), "serve", *args]
    log = base / "serve.log"  # a file, not a pipe: a full pipe would stall the server
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [*cmd, "--port", str(port), "--report", str(report)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"duorank serve exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("duorank serve did not become ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser(served: str) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium reach for a download
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(condition, message=f"waiting for {what}")


def _texts(driver: Any, selector: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, selector)]


def _served_ids(driver: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    return [
        str(e.get_attribute("data-item-id"))
        for e in driver.find_elements(By.CSS_SELECTOR, "#served li[data-item-id]")
    ]


def _console_errors(driver: Any) -> list[dict[str, Any]]:
    """Severe console entries that are not the network's own 401 lines."""
    return [
        e
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and not (e.get("source") == "network" and " 401 " in e["message"])
    ]


def test_the_explorer_page_end_to_end(browser: Any, served: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    driver.get(served + "/")
    assert driver.title == "duorank explorer"
    error = driver.find_element(By.ID, "error")
    assert not error.is_displayed()

    # A wrong token: a readable error, not a blank page.
    driver.find_element(By.ID, "token").send_keys("wrong" + Keys.ENTER)
    driver.find_element(By.ID, "user-query").send_keys("u1" + Keys.ENTER)
    _wait(driver, lambda d: error.is_displayed(), "the error message")
    assert "refused the API token" in error.text

    # The right token (kept in the tab's session storage), then the keyboard alone: the user
    # search answers, Tab reaches the first match, Enter picks it.
    driver.find_element(By.ID, "token").send_keys(TOKEN + Keys.ENTER)
    assert driver.execute_script("return sessionStorage.getItem('duorank-token')") == TOKEN
    query = driver.find_element(By.ID, "user-query")
    query.clear()
    query.send_keys("u1" + Keys.ENTER)
    _wait(driver, lambda d: _texts(d, "#user-results button"), "user search results")
    assert _texts(driver, "#user-results button")[0].startswith("user u1 (")
    assert not error.is_displayed()
    query.send_keys(Keys.TAB)  # the Find button
    driver.switch_to.active_element.send_keys(Keys.TAB)  # the first match
    focused = driver.switch_to.active_element
    assert focused.text.startswith("user u1 (")
    focused.send_keys(Keys.ENTER)
    _wait(driver, lambda d: len(_served_ids(d)) == 10, "ten recommendations")

    # History (newest first), recommendations with scores and explanations, the stage timings
    # and the index version, and the first stage's order beside them.
    assert len(_texts(driver, "#history li")) == 10
    meta = driver.find_element(By.ID, "meta").text
    assert meta.startswith("index ") and "rank" in meta and "features" in meta
    served_text = driver.find_element(By.ID, "served").text
    assert "because you watched" in served_text and "first-stage rank" in served_text
    assert "moved by" in served_text and "P(like)" in served_text
    _wait(driver, lambda d: len(_texts(d, "#first li")) == 10, "the first stage's list")
    before = _served_ids(driver)

    # Adding a watched title changes the list (and the title is no longer recommended).
    driver.find_element(By.ID, "item-query").send_keys("Film 2" + Keys.ENTER)
    _wait(driver, lambda d: _texts(d, "#item-results button"), "title search results")
    added = driver.find_element(By.CSS_SELECTOR, "#item-results button")
    added_title = added.text.removeprefix("+ ")
    added.click()
    _wait(driver, lambda d: len(_texts(d, "#history li")) == 11, "the history to grow")
    assert _texts(driver, "#history li")[0].startswith(added_title)
    _wait(driver, lambda d: _served_ids(d) and _served_ids(d) != before, "a changed list")

    # Markup in a title or a query is shown as text and never runs.
    search = driver.find_element(By.ID, "item-query")
    search.clear()
    search.send_keys("<script>" + Keys.ENTER)
    _wait(driver, lambda d: _texts(d, "#item-results button"), "the injected title's result")
    assert _texts(driver, "#item-results button") == ["+ " + EVIL]
    driver.find_element(By.CSS_SELECTOR, "#item-results button").click()
    _wait(driver, lambda d: len(_texts(d, "#history li")) == 12, "the history to grow")
    assert _texts(driver, "#history li")[0].startswith(EVIL)
    assert driver.execute_script("return window.__xss") is None
    assert not driver.find_elements(By.CSS_SELECTOR, "img[src='x']")

    # The evaluation view: the report's table and the ranking stage's ablations.
    driver.find_element(By.ID, "tab-report").click()
    _wait(driver, lambda d: len(_texts(d, "#report-table tr")) == 3, "the report table")
    assert "ranking_stage" in driver.find_element(By.ID, "report-table").text
    assert "ranker" in driver.find_element(By.ID, "ablation-table").text
    assert _console_errors(driver) == []
