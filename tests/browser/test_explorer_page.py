"""The explorer page in a real browser: Debian's headless Chromium, driven by Selenium through
Debian's chromedriver, against a real `duorank serve` subprocess on loopback (the shared
server of conftest.py: a tiny tower and ranking stage; one item's title is an HTML injection
attempt)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import EVIL, TOKEN, texts, wait

pytestmark = pytest.mark.slow


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
    wait(driver, lambda d: error.is_displayed(), "the error message")
    assert "refused the API token" in error.text

    # The right token (kept in the tab's session storage), then the keyboard alone: the user
    # search answers, Tab reaches the first match, Enter picks it.
    driver.find_element(By.ID, "token").send_keys(TOKEN + Keys.ENTER)
    assert driver.execute_script("return sessionStorage.getItem('duorank-token')") == TOKEN
    query = driver.find_element(By.ID, "user-query")
    query.clear()
    query.send_keys("u1" + Keys.ENTER)
    wait(driver, lambda d: texts(d, "#user-results button"), "user search results")
    assert texts(driver, "#user-results button")[0].startswith("user u1 (")
    assert not error.is_displayed()
    query.send_keys(Keys.TAB)  # the Find button
    driver.switch_to.active_element.send_keys(Keys.TAB)  # the first match
    focused = driver.switch_to.active_element
    assert focused.text.startswith("user u1 (")
    focused.send_keys(Keys.ENTER)
    wait(driver, lambda d: len(_served_ids(d)) == 10, "ten recommendations")

    # History (newest first), recommendations with scores and explanations, the stage timings
    # and the index version, and the first stage's order beside them.
    assert len(texts(driver, "#history li")) == 10
    meta = driver.find_element(By.ID, "meta").text
    assert meta.startswith("index ") and "rank" in meta and "features" in meta
    served_text = driver.find_element(By.ID, "served").text
    assert "because you watched" in served_text and "first-stage rank" in served_text
    assert "moved by" in served_text and "P(like)" in served_text
    wait(driver, lambda d: len(texts(d, "#first li")) == 10, "the first stage's list")
    before = _served_ids(driver)

    # Adding a watched title changes the list (and the title is no longer recommended).
    driver.find_element(By.ID, "item-query").send_keys("Film 2" + Keys.ENTER)
    wait(driver, lambda d: texts(d, "#item-results button"), "title search results")
    added = driver.find_element(By.CSS_SELECTOR, "#item-results button")
    added_title = added.text.removeprefix("+ ")
    added.click()
    wait(driver, lambda d: len(texts(d, "#history li")) == 11, "the history to grow")
    assert texts(driver, "#history li")[0].startswith(added_title)
    wait(driver, lambda d: _served_ids(d) and _served_ids(d) != before, "a changed list")

    # Markup in a title or a query is shown as text and never runs.
    search = driver.find_element(By.ID, "item-query")
    search.clear()
    search.send_keys("<script>" + Keys.ENTER)
    wait(driver, lambda d: texts(d, "#item-results button"), "the injected title's result")
    assert texts(driver, "#item-results button") == ["+ " + EVIL]
    driver.find_element(By.CSS_SELECTOR, "#item-results button").click()
    wait(driver, lambda d: len(texts(d, "#history li")) == 12, "the history to grow")
    assert texts(driver, "#history li")[0].startswith(EVIL)
    assert driver.execute_script("return window.__xss") is None
    assert not driver.find_elements(By.CSS_SELECTOR, "img[src='x']")

    # The evaluation view: the report's table and the ranking stage's ablations.
    driver.find_element(By.ID, "tab-report").click()
    wait(driver, lambda d: len(texts(d, "#report-table tr")) == 3, "the report table")
    assert "ranking_stage" in driver.find_element(By.ID, "report-table").text
    assert "ranker" in driver.find_element(By.ID, "ablation-table").text
    assert _console_errors(driver) == []
