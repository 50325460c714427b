# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The web app in a real browser: headless Chromium (Debian's chromium and chromium-driver, which
.ci/run installs) driven by Selenium against tools/serve.py's server (uvicorn) on loopback.
"""

import os
import shutil

import pytest

pytest.importorskip("detectron2")
pytest.importorskip("fastapi")

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise RuntimeError("CI: chromium and chromedriver are needed (.ci/run installs them)")
    pytest.skip("Debian's chromium and chromium-driver are not installed", allow_module_level=True)

import httpx  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from personsearch_kd.app import build_gallery_search, create_app, served  # noqa: E402

from app_fixtures import build_app_gallery  # noqa: E402


@pytest.fixture(scope="module")
def served_app(tmp_path_factory):
    """The app over the test gallery, served on loopback: (url, gallery)."""
    gallery = build_app_gallery(tmp_path_factory.mktemp("browser"))
    with served(create_app(build_gallery_search(gallery["cfg"], gallery["index"]))) as url:
        yield url, gallery


@pytest.fixture
def browser(tmp_path):
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout=60):
    """Until ``condition(driver)``; elements a re-render replaced are looked up again."""
    wait = WebDriverWait(
        driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )
    return wait.until(lambda d: condition(d))


def _cards(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#results-grid .match")


def _ranked_on_page(driver):
    """The grid's matches in order as (path, frame, row), read in one go (no stale elements)."""
    cards = driver.execute_script(
        "return [...document.querySelectorAll('#results-grid .match')]"
        ".map(c => [c.dataset.path, Number(c.dataset.frame), Number(c.dataset.row)])"
    )
    return [tuple(card) for card in cards]


def _cameras_on_page(driver):
    return set(
        driver.execute_script(
            "return [...document.querySelectorAll('#results-grid .match')]"
            ".map(c => c.dataset.camera)"
        )
    )


def _drag(driver, element, start, end):
    """Drag from ``start`` to ``end`` (pixels from the element's top left) with the mouse."""
    width, height = element.size["width"], element.size["height"]
    ActionChains(driver).move_to_element_with_offset(
        element, int(start[0] - width / 2), int(start[1] - height / 2)
    ).click_and_hold().move_by_offset(end[0] - start[0], end[1] - start[1]).release().perform()


def test_upload_draw_search_open_a_match_and_filter(served_app, browser, tmp_path):
    url, gallery = served_app
    browser.get(url)
    header = "35 persons in 7 images and frames · Flat index of 35 boxes: exact search"
    _wait(browser, lambda d: d.find_element(By.ID, "index-info").text == header)

    # Upload a query image and draw a box around a person.
    query_image = gallery["images"][1]
    browser.find_element(By.ID, "upload-input").send_keys(query_image)
    canvas = browser.find_element(By.ID, "query-canvas")
    _wait(browser, lambda d: canvas.size["width"] > 100)
    _drag(browser, canvas, (40, 30), (110, 150))
    box = browser.execute_script("return state.query.box")
    assert box is not None and box[2] - box[0] > 20 and box[3] - box[1] > 40
    assert "box" in browser.find_element(By.ID, "query-label").text

    # Search: the ranked grid is the API's ranked list for the same image and box.
    browser.find_element(By.ID, "search-button").click()
    _wait(browser, lambda d: len(_ranked_on_page(d)) == 7)
    with open(query_image, "rb") as f:
        api = httpx.post(
            f"{url}/api/search", files={"image": ("q.jpg", f.read())},
            data={"box": ",".join(map(str, box))}, params={"topk": 12}, timeout=60,
        ).json()  # fmt: skip
    expected = [(m["path"], m["frame"], m["row"]) for m in api["matches"]]
    assert _ranked_on_page(browser) == expected
    assert browser.find_element(By.CSS_SELECTOR, ".match img").get_attribute("naturalWidth") != "0"
    assert browser.find_elements(By.CSS_SELECTOR, "#timeline .mark")  # the video's matches

    # Open a match: its full frame and box; then search from it.
    _cards(browser)[1].click()
    view = lambda d: d.find_element(By.ID, "match-view")  # noqa: E731
    _wait(browser, lambda d: view(d).is_displayed())
    caption = browser.find_element(By.ID, "match-caption").text
    assert "#2" in caption and expected[1][0] in caption
    browser.find_element(By.ID, "match-search").click()
    _wait(browser, lambda d: not view(d).is_displayed())
    _wait(browser, lambda d: browser.execute_script("return state.query.kind") == "source")
    _wait(browser, lambda d: len(_ranked_on_page(d)) == 7 and _ranked_on_page(d)[0] == expected[1])

    # Filter by camera: only the photos' camera remains.
    Select(browser.find_element(By.ID, "filter-camera")).select_by_value("cam2")
    _wait(browser, lambda d: len(_ranked_on_page(d)) == 3)
    assert _cameras_on_page(browser) == {"cam2"}
    screenshot = str(tmp_path / "app.png")
    browser.save_screenshot(screenshot)
    assert os.path.getsize(screenshot) > 10_000


def test_pick_a_person_in_an_indexed_frame(served_app, browser):
    url, gallery = served_app
    browser.get(url)
    _wait(browser, lambda d: "persons" in d.find_element(By.ID, "index-info").text)
    browser.find_element(By.ID, "tab-browse").click()
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#source-list li")) == 7)
    browser.find_elements(By.CSS_SELECTOR, "#source-list li")[5].click()
    _wait(browser, lambda d: d.execute_script("return state.browseSource !== null"))
    source = browser.execute_script(
        "return {box: state.browseSource.detections[0].box, scale: state.browseSource.scale,"
        " id: state.browseSource.source_id}"
    )
    x0, y0, x1, y1 = [v * source["scale"] for v in source["box"]]
    canvas = browser.find_element(By.ID, "browse-canvas")
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    width, height = canvas.size["width"], canvas.size["height"]
    ActionChains(browser).move_to_element_with_offset(
        canvas, int(centre[0] - width / 2), int(centre[1] - height / 2)
    ).click().perform()
    _wait(browser, lambda d: len(_ranked_on_page(d)) == 7)
    query = browser.execute_script("return state.query")
    assert query["kind"] == "source" and query["sourceId"] == source["id"] == 5
    api = httpx.post(
        f"{url}/api/sources/5/search", json={"box": query["box"]}, params={"topk": 12}
    ).json()
    assert _ranked_on_page(browser) == [(m["path"], m["frame"], m["row"]) for m in api["matches"]]
