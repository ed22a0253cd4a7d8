"""The web page end to end in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium):
upload the astronaut, move the age slider, get aged photos back, download a progression sheet, and see the
error for a photo without a face (an upload, and a webcam frame from Chromium's fake camera)."""

from __future__ import annotations

import base64
import io
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from .conftest import REQUIRED

pytestmark = pytest.mark.serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None or CHROMEDRIVER is None:
        reason = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get(REQUIRED):
            pytest.fail(f"{REQUIRED} is set: {reason}")
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]
    flags += ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]  # a fake camera, no prompt
    for flag in flags:
        options.add_argument(flag)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def _wait(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _image_of(driver, element_id: str) -> np.ndarray:
    """The pixels an <img> shows (its blob: URL fetched inside the page)."""
    data_url = driver.execute_async_script(
        """const done = arguments[arguments.length - 1];
        fetch(document.getElementById(arguments[0]).src).then((r) => r.blob()).then((b) => {
          const reader = new FileReader(); reader.onload = () => done(reader.result); reader.readAsDataURL(b); });""",
        element_id,
    )
    with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as im:
        return np.asarray(im.convert("RGB"))


def test_the_page_ages_the_astronaut_and_explains_a_photo_without_a_face(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from skimage import data as skimage_data

    astronaut = skimage_data.astronaut()
    Image.fromarray(astronaut).save(tmp_path / "astronaut.png")
    Image.fromarray(np.full((120, 160, 3), 200, np.uint8)).save(tmp_path / "wall.png")
    driver = browser
    driver.get(server.web_url)
    _wait(lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1", what="page ready")
    assert driver.find_element(By.ID, "model").get_attribute("value") == "acgan_photos"

    driver.find_element(By.ID, "file").send_keys(str(tmp_path / "astronaut.png"))
    after = driver.find_element(By.ID, "after")
    first_age = _wait(lambda: after.get_attribute("data-age"), what="an aged photo")
    first = _image_of(driver, "after")
    assert first.shape == astronaut.shape
    assert (first != astronaut).any()  # the face was aged ...
    assert (first[:, :60] == astronaut[:, :60]).all()  # ... and the left edge, far from the face, was not

    slider = driver.find_element(By.ID, "age")
    slider.send_keys(*([Keys.ARROW_LEFT] * 25))  # keyboard moves fire input and change, as a drag does
    target = slider.get_attribute("value")
    assert int(target) < int(first_age)
    # each key press asks for an age; the page keeps one request in flight and ends on the slider's value
    _wait(lambda: after.get_attribute("data-age") == target, what="the photo at the slider's age")
    _wait(lambda: f"Age {target}:" in driver.find_element(By.ID, "status").text, what="the second answer")
    second = _image_of(driver, "after")
    assert (second != first).any()  # another age group, another face

    driver.find_element(By.ID, "sheet").click()
    sheet_path = _wait(lambda: next(iter(driver.downloads.glob("progression-sheet*.png")), None), what="the sheet")
    _wait(lambda: sheet_path.stat().st_size > 0 and not list(driver.downloads.glob("*.crdownload")))
    with Image.open(sheet_path) as sheet:
        assert sheet.size == (5 * 256, 256 + 32)  # the input and four ages

    driver.find_element(By.ID, "file").send_keys(str(tmp_path / "wall.png"))
    error = driver.find_element(By.ID, "error")
    _wait(lambda: error.is_displayed() and error.text, what="the no-face message")
    assert "no face found" in error.text
    assert after.get_attribute("src") in (None, "")

    driver.find_element(By.ID, "webcam").click()  # Chromium's fake camera: a test pattern, no face
    _wait(lambda: driver.find_element(By.ID, "snap").is_displayed(), what="the webcam")
    time.sleep(1.0)  # let a few frames arrive
    driver.execute_script("document.getElementById('error').textContent = ''")
    driver.find_element(By.ID, "snap").click()
    _wait(lambda: "no face found" in driver.find_element(By.ID, "error").text, what="the webcam's no-face message")
