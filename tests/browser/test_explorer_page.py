"""The explorer page in a real browser: Debian's headless Chromium, driven by Selenium through
Debian's chromedriver, against a real `duorank serve` subprocess on loopback (the shared
server of conftest.py: a tiny tower and ranking stage; one item's title is an HTML injection
attempt)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import EVIL, TOKEN, idle, texts, wait

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


def _marks(driver: Any, list_id: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [
        str(e.get_attribute("data-mark") or "")
        for e in driver.find_elements(By.CSS_SELECTOR, f"#{list_id} li[data-item-id]")
    ]


FEATURE_NAMES = ("covisit_last", "retrieval_score", "days_since_last", "pop_", "_present")


def test_the_explorer_page_end_to_end(browser: Any, served: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    driver.get(served + "/")
    assert driver.title == "duorank explorer"
    error = driver.find_element(By.ID, "error")
    status = driver.find_element(By.ID, "token-status")
    # The empty state: no token yet, so not connected, and a start panel.
    wait(driver, lambda d: status.text == "not connected", "the token's state")
    assert driver.find_element(By.ID, "start").is_displayed()

    # A wrong token is checked when entered: a readable error, still not connected.
    driver.find_element(By.ID, "token").send_keys("wrong" + Keys.ENTER)
    wait(driver, lambda d: error.is_displayed(), "the error message")
    assert "refused the API token" in error.text and status.text == "not connected"

    # The right token: connected, and example users to start from.
    driver.find_element(By.ID, "token").send_keys(TOKEN + Keys.ENTER)
    wait(driver, lambda d: status.text == "connected", "the connected state")
    assert driver.execute_script("return sessionStorage.getItem('duorank-token')") == TOKEN
    examples = wait(driver, lambda d: texts(d, "#examples button"), "example users")
    assert examples[0].startswith("user ")

    # A prefix lists users; Enter on an exact id loads it at once.
    query = driver.find_element(By.ID, "user-query")
    query.send_keys("u" + Keys.ENTER)
    wait(driver, lambda d: texts(d, "#user-results button"), "user search results")
    assert texts(driver, "#user-results button")[0].startswith("user u")
    query.clear()
    query.send_keys("u1" + Keys.ENTER)
    wait(driver, lambda d: len(_served_ids(d)) == 10, "ten recommendations")
    idle(driver)
    assert not driver.find_element(By.ID, "start").is_displayed()
    assert driver.current_url.endswith("?user=u1&k=10")  # a deep link to this view

    # Which part served it and why; every item's reasons are phrases, never feature names.
    served_by = driver.find_element(By.ID, "served-by").text
    assert served_by.startswith("Served by the ranking stage: it beat the first stage")
    served_text = driver.find_element(By.ID, "served").text
    assert "ranking score" in served_text and "P(like)" in served_text
    assert not any(name in served_text for name in FEATURE_NAMES)
    assert "against the first stage's order" in served_text  # how far it moved
    reasons = texts(driver, "#served .reason")
    assert reasons and all(r.startswith(("↑ ", "↓ ")) for r in reasons)
    assert all(r.endswith(("(strong)", "(moderate)", "(slight)")) for r in reasons)
    lines = texts(driver, "#served .because")
    assert len(lines) == 10 and all(
        line.startswith("because you watched ") or "stands out" in line for line in lines
    )

    # The comparison: every served item marked, dropped first-stage items faded, a summary.
    wait(driver, lambda d: len(texts(d, "#first li")) == 10, "the first stage's list")
    idle(driver)
    marks = _marks(driver, "served")
    assert len(marks) == 10 and set(marks) <= {"new", "up", "down", "same"}
    first_ids = [
        str(e.get_attribute("data-item-id"))
        for e in driver.find_elements(By.CSS_SELECTOR, "#first li[data-item-id]")
    ]
    dropped = [i for i in first_ids if i not in _served_ids(driver)]
    assert _marks(driver, "first").count("dropped") == len(dropped)
    assert marks.count("new") == len(dropped)  # one in, one out: both lists hold k
    summary = driver.find_element(By.ID, "summary").text
    assert summary.startswith(f"Overlap with the first stage: {10 - len(dropped)} of 10")

    # Without the comparison the served list takes the full width.
    width = driver.find_element(By.ID, "served").size["width"]
    driver.find_element(By.ID, "compare").click()
    wait(driver, lambda d: not d.find_element(By.ID, "first-column").is_displayed(), "one list")
    wait(driver, lambda d: d.find_element(By.ID, "served").size["width"] > 1.5 * width, "width")
    driver.find_element(By.ID, "compare").click()
    wait(driver, lambda d: d.find_element(By.ID, "first-column").is_displayed(), "two lists")
    idle(driver)

    # The history is editable: remove the newest title, then rate the next one 1 star.
    before = _served_ids(driver)
    n_history = len(texts(driver, "#history li"))
    driver.find_element(By.CSS_SELECTOR, "#history li .remove").click()
    wait(driver, lambda d: len(texts(d, "#history li")) == n_history - 1, "a shorter history")
    idle(driver)
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.CSS_SELECTOR, "#history li select")).select_by_value("1")
    wait(driver, lambda d: _served_ids(d) and _served_ids(d) != before, "a changed list")
    idle(driver)

    # Adding a watched title changes the list (and the title is no longer recommended).
    before = _served_ids(driver)
    driver.find_element(By.ID, "item-query").send_keys("Film 2" + Keys.ENTER)
    wait(driver, lambda d: texts(d, "#item-results button"), "title search results")
    added = driver.find_element(By.CSS_SELECTOR, "#item-results button")
    added_title = added.text.removeprefix("+ ")
    added.click()
    wait(driver, lambda d: len(texts(d, "#history li")) == n_history, "the history to grow")
    assert texts(driver, "#history li .title")[0] == added_title
    wait(driver, lambda d: _served_ids(d) and _served_ids(d) != before, "a changed list")
    idle(driver)

    # Markup in a title or a query is shown as text and never runs.
    search = driver.find_element(By.ID, "item-query")
    search.clear()
    search.send_keys("<script>" + Keys.ENTER)
    wait(driver, lambda d: texts(d, "#item-results button"), "the injected title's result")
    assert texts(driver, "#item-results button") == ["+ " + EVIL]
    driver.find_element(By.CSS_SELECTOR, "#item-results button").click()
    wait(driver, lambda d: texts(d, "#history li .title")[:1] == [EVIL], "the history to grow")
    idle(driver)
    assert driver.execute_script("return window.__xss") is None
    assert not driver.find_elements(By.CSS_SELECTOR, "img[src='x']")

    # The evaluation view: a run card, the served row highlighted, defined columns.
    driver.find_element(By.ID, "tab-report").click()
    wait(driver, lambda d: len(texts(d, "#report-table tr")) == 3, "the report table")
    card = driver.find_element(By.ID, "run-card").text
    assert "does not describe the model files this server loaded" in card
    assert "ranking_stage" in driver.find_element(By.CSS_SELECTOR, "tr.served-row").text
    assert texts(driver, "#report-table tr")[1].startswith("als")  # baselines first
    assert "NDCG@10" in driver.find_element(By.ID, "definitions").text
    assert "ranker" in driver.find_element(By.ID, "ablation-table").text
    assert _console_errors(driver) == []


def test_a_deep_link_opens_the_user_and_a_narrow_window_has_no_sideways_scroll(
    browser: Any, served: str
) -> None:
    driver = browser
    driver.get(served + "/")
    driver.execute_script(f"sessionStorage.setItem('duorank-token', '{TOKEN}')")
    driver.set_window_size(600, 900)
    try:
        driver.get(served + "/?user=u2&k=5")
        wait(driver, lambda d: len(_served_ids(d)) == 5, "five recommendations for u2")
        assert "(user u2)" in driver.find_element("id", "history-who").text
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{overflow} px of sideways scroll at 600 px"
        favicon = driver.execute_script("return fetch('/favicon.ico').then(r => r.status)")
        assert favicon == 200
    finally:
        driver.set_window_size(1400, 1000)
