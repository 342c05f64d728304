"""/docs in a real browser, with a token set: Swagger UI loads without the token (the page and
the schema hold no data), renders every operation of the OpenAPI 3.1 schema, and **Authorize**
then lets "Try it out" call /recommend with the token."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import TOKEN, wait

pytestmark = pytest.mark.slow


def _operations(driver: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    return [
        e.text.replace("\n", " ")
        for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    ]


def test_swagger_ui_renders_and_authorize_works(browser: Any, served: str) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(served + "/docs")
    wait(driver, lambda d: len(_operations(d)) >= 5, "the operations")
    page = driver.find_element(By.TAG_NAME, "body").text
    assert "Unable to render this definition" not in page
    assert {"/recommend", "/score", "/readyz", "/metrics"} <= set(_operations(driver))

    # Without the token, a call is refused; Authorize stores it for the secured operations.
    driver.find_element(By.CSS_SELECTOR, "button.authorize").click()
    field = wait(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, ".auth-container input"),
        "the token field",
    )[0]
    field.send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, ".auth-container button.authorize").click()
    driver.find_element(By.CSS_SELECTOR, ".auth-btn-wrapper button.btn-done").click()

    recommend = driver.find_element(
        By.CSS_SELECTOR, "#operations-default-post_recommend_recommend_post"
    )
    recommend.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    body = wait(
        driver,
        lambda d: recommend.find_elements(By.CSS_SELECTOR, "textarea.body-param__text"),
        "the request body editor",
    )[0]
    body.clear()
    body.send_keys('{"user_id": "u1", "k": 3}')
    recommend.find_element(By.CSS_SELECTOR, "button.execute").click()
    status = wait(
        driver,
        lambda d: [
            e
            for e in recommend.find_elements(
                By.CSS_SELECTOR, ".live-responses-table .response-col_status"
            )
            if e.text.strip()[:3].isdigit()
        ],
        "the live response",
    )[0]
    assert status.text.strip().startswith("200"), status.text
    assert (
        '"index_version"' in recommend.find_element(By.CSS_SELECTOR, ".live-responses-table").text
    )
