"""Takes the explorer's screenshots for docs/ with Debian's headless Chromium.

Serves the home's published index and ranker (the quickstart's models) with `duorank serve` on
a free loopback port, opens the page, enters the token, loads a user (Enter on an exact id)
and shoots the user view, then the evaluation view, then /docs after **Authorize**.
Usage: ``python scripts/screenshots.py [--home .duorank] [--user 42]``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

DOCS = Path(__file__).resolve().parent.parent / "docs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=".duorank")
    parser.add_argument("--user", default="42")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = os.urandom(8).hex()
    env = {**os.environ, "DUORANK_API_TOKEN": token, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "duorank", "--home", args.home, "serve", "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1100"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        wait = WebDriverWait(driver, 60)
        try:
            driver.get(url + "/")
            driver.find_element(By.ID, "token").send_keys(token + Keys.ENTER)
            wait.until(lambda d: d.find_element(By.ID, "token-status").text == "connected")
            driver.find_element(By.ID, "user-query").send_keys(args.user + Keys.ENTER)
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#first li")) >= 10)
            wait.until(lambda d: d.execute_script("return document.body.ariaBusy") == "false")
            driver.save_screenshot(str(DOCS / "explorer-user.png"))
            driver.set_window_size(1400, 1900)  # the report's tables and plots on one page
            driver.find_element(By.ID, "tab-report").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#report-table tr")) > 1)
            wait.until(
                lambda d: d.execute_script(
                    "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"
                )
            )
            driver.save_screenshot(str(DOCS / "explorer-report.png"))
            driver.set_window_size(1400, 1100)
            driver.get(url + "/docs")
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 5)
            driver.save_screenshot(str(DOCS / "api-docs.png"))
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=20)
    print("wrote docs/explorer-user.png, docs/explorer-report.png and docs/api-docs.png")


if __name__ == "__main__":
    main()
