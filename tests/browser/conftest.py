"""The browser suites' shared server and browser: Debian's headless Chromium, driven by
Selenium through Debian's chromedriver, against one real `duorank serve` subprocess on loopback
(a tiny tower and ranking stage; one item's title is an HTML injection attempt), with a token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from catalog import Catalog, save_catalog
from retrieval.encoder import Encoder
from tests.conftest import tiny_catalog
from tests.live import build_ranked_stack, free_port, wait_ready

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "s3cret-token"
EVIL = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">Evil'
WAIT_S = 30.0


def _browser_or_skip() -> None:
    """Skips without a browser, unless the suite was told one is required (scripts/test
    installs Chromium and says so: CI runs these tests, it never skips them)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        if os.environ.get("DUORANK_BROWSER_TESTS") == "required":
            pytest.fail(f"browser tests required but missing: {missing}")
        pytest.skip(f"no browser here ({', '.join(missing)}); scripts/test installs one")


@pytest.fixture(scope="session")
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
        wait_ready(url, proc, log)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="session")
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


def wait(driver: Any, condition: Any, what: str) -> Any:
    """Waits for ``condition``; an element replaced while it is read (the page re-renders a
    list) is read again, not an error."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    waiting = WebDriverWait(driver, WAIT_S, ignored_exceptions=(StaleElementReferenceException,))
    return waiting.until(condition, message=f"waiting for {what}")


def idle(driver: Any) -> None:
    """Waits until the page has no call running (it marks ``body[aria-busy]``)."""
    wait(
        driver,
        lambda d: d.execute_script("return document.body.getAttribute('aria-busy')") == "false",
        "the page to finish its calls",
    )


def texts(driver: Any, selector: str) -> list[str]:
    """The texts of the elements ``selector`` finds, read again if the page replaced them."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(5):
        try:
            return [e.text for e in driver.find_elements(By.CSS_SELECTOR, selector)]
        except StaleElementReferenceException:
            continue
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, selector)]
