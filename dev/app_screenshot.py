#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The README's picture of the web app (docs/images/app.png): serve an index, open the page in
headless Chromium (Debian's chromium and chromium-driver, as tests/test_app_browser.py), upload a
query image, drag a box around the person, search, and save a screenshot of the result page.

    python dev/app_screenshot.py --index gallery_index --config-file CFG \
        --query-image q.jpg --query-box 587 138 613 201 --output docs/images/app.png \
        MODEL.WEIGHTS W
"""

import argparse
import os
import shutil

import cv2
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from personsearch_kd import load_config
from personsearch_kd.app import build_gallery_search, create_app, served
from personsearch_kd.engine.command_line import one_line_errors, require_file, run_cli


def chromium(width: int, height: int):
    """Headless Debian Chromium through chromedriver; Selenium may download nothing."""
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def main(argv=None):
    parser = one_line_errors(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--index", required=True)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--query-image", required=True)
    parser.add_argument("--query-box", type=float, nargs=4, required=True, metavar="X")
    parser.add_argument("--topk", type=int, default=12)
    parser.add_argument("--size", type=int, nargs=2, default=[1400, 900], metavar=("W", "H"))
    parser.add_argument("--output", default="docs/images/app.png")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    require_file(parser, "--query-image", args.query_image, "an image")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        parser.error("chromium and chromedriver are needed (Debian: chromium, chromium-driver)")
    image_width = cv2.imread(args.query_image).shape[1]
    cfg = load_config(args.config_file, args.opts)
    app = create_app(build_gallery_search(cfg, args.index))
    with served(app) as url:
        browser = chromium(*args.size)
        try:
            wait = WebDriverWait(browser, 120, poll_frequency=0.2)
            browser.get(url)
            wait.until(lambda d: "persons" in d.find_element(By.ID, "index-info").text)
            browser.execute_script(f"document.getElementById('filter-topk').value = {args.topk}")
            browser.find_element(By.ID, "upload-input").send_keys(os.path.abspath(args.query_image))
            canvas = browser.find_element(By.ID, "query-canvas")
            wait.until(lambda d: canvas.size["width"] > 100)
            scale = canvas.size["width"] / image_width
            x0, y0, x1, y1 = [v * scale for v in args.query_box]
            width, height = canvas.size["width"], canvas.size["height"]
            ActionChains(browser).move_to_element_with_offset(
                canvas, int(x0 - width / 2), int(y0 - height / 2)
            ).click_and_hold().move_by_offset(int(x1 - x0), int(y1 - y0)).release().perform()
            browser.find_element(By.ID, "search-button").click()
            wait.until(
                lambda d: d.execute_script(
                    "const imgs = [...document.querySelectorAll('#results-grid .match img')];"
                    "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)"
                )
            )
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            browser.save_screenshot(args.output)
        finally:
            browser.quit()
    print(f"{args.output}: the result page")


if __name__ == "__main__":
    run_cli(main)  # pragma: no cover
