"""The page of `geneface serve` in a real browser: headless Chromium (selenium + chromedriver) against the app
served by uvicorn on a free port. Live runs on the demo person with a fake microphone that plays the bundled
speech; frames must be drawn on the canvas and the page must show a frames/s figure. Speak renders a short
upload and shows the video. Screenshots go to the test's temporary folder, or with GENEFACE_DOCS_SCREENSHOTS=1
to docs/serve_live.png and docs/serve_speak.png (README "geneface serve" shows them; a plain test run leaves the
tree as it was)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from geneface import media
from geneface.infer.cli_demo import bundled_speech
from geneface.serve import ServeConfig, background

pytestmark = pytest.mark.browser

DOCS = Path(__file__).resolve().parent.parent / "docs"
DOCS_ENV = "GENEFACE_DOCS_SCREENSHOTS"
LIVE_FRAMES = 60
"""Frames the Live tab must draw (2.4 s of speech at 25 frames/s)."""


@pytest.fixture(scope="module")
def browser(chromium_paths, tmp_path_factory):
    """(driver, server address, folder): the app on a free port and a headless Chromium whose microphone plays
    the bundled speech."""
    folder = tmp_path_factory.mktemp("browser")
    mic = folder / "speech.wav"
    media.write_audio(mic, media.read_audio(bundled_speech()))
    binary, driver_path = chromium_paths
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                     f"--use-file-for-fake-audio-capture={mic}", "--autoplay-policy=no-user-gesture-required",
                     "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    with background(ServeConfig(work=folder / "work", device="cpu", port=0)) as server:
        try:
            driver = webdriver.Chrome(service=Service(driver_path), options=options)
        except WebDriverException as e:  # installed but unable to start here
            pytest.skip(f"chromium did not start: {str(e).splitlines()[0]}")
        try:
            yield driver, server.url, folder
        finally:
            driver.quit()


def screenshot(driver, folder: Path, name: str) -> Path:
    """Save the page as ``name``: in docs/ with GENEFACE_DOCS_SCREENSHOTS=1, else in ``folder``."""
    out = (DOCS if os.environ.get(DOCS_ENV) == "1" else folder) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(out)), out
    assert out.stat().st_size > 10_000
    return out


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


CANVAS_SPREAD = """
const c = document.getElementById('live-canvas');
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let sum = 0, sq = 0, n = 0;
for (let i = 0; i < d.length; i += 4) { const v = (d[i] + d[i + 1] + d[i + 2]) / 3; sum += v; sq += v * v; n++; }
const mean = sum / n;
return [c.width, c.height, mean, Math.sqrt(Math.max(0, sq / n - mean * mean))];
"""


def test_live_draws_frames_from_the_microphone(browser):
    driver, url, folder = browser
    driver.get(f"{url}#live")
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#live-form select.people option"), 30, "the people")
    assert driver.find_element(By.CSS_SELECTOR, "#live-form input[value=mic]").is_selected()
    driver.find_element(By.ID, "live-start").click()
    wait_for(lambda: int(text(driver, "live-frames")) >= LIVE_FRAMES or text(driver, "live-error"), 120,
             f"{LIVE_FRAMES} frames drawn")
    assert not text(driver, "live-error"), text(driver, "live-error")
    fps = float(text(driver, "live-fps"))
    assert fps > 0, fps
    assert text(driver, "live-latency").endswith(" ms")
    width, height, mean, spread = driver.execute_script(CANVAS_SPREAD)
    assert (width, height) == (128, 128)
    assert 20 < mean < 235 and spread > 10, (mean, spread)  # a face, not a blank or uniform canvas
    assert "live: demo, 128 px" in text(driver, "live-status")
    screenshot(driver, folder, "serve_live.png")
    driver.find_element(By.ID, "live-stop").click()
    wait_for(lambda: text(driver, "live-status").startswith("stopped"), 30, "the session to stop")
    assert not text(driver, "live-error"), text(driver, "live-error")
    assert driver.execute_script("return window.geneface.live") is None


def test_speak_renders_an_upload_and_shows_the_video(browser):
    driver, url, folder = browser
    speech = folder / "two seconds.wav"
    media.write_audio(speech, media.read_audio(bundled_speech())[: 2 * 16000])
    driver.get(url)
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#speak-form select.people option"), 30, "the people")
    driver.find_element(By.CSS_SELECTOR, '#tabs [data-tab="speak"]').click()
    driver.find_element(By.CSS_SELECTOR, "#speak-form input[name=source][value=upload]").click()
    driver.find_element(By.CSS_SELECTOR, "#speak-form input[name=file]").send_keys(str(speech))
    driver.find_element(By.ID, "speak-go").click()
    wait_for(lambda: text(driver, "speak-status").startswith("done") or text(driver, "speak-error"), 120,
             "the render")
    assert not text(driver, "speak-error"), text(driver, "speak-error")
    assert text(driver, "speak-status") == "done: 50 frames, 2.0 s"
    ready = wait_for(lambda: driver.execute_script(
        "const v = document.getElementById('speak-video'); return v.readyState >= 4 && [v.videoWidth, v.duration]"),
        30, "the video to load")
    driver.execute_script("document.getElementById('speak-video').currentTime = 1.0")  # a frame mid-speech
    wait_for(lambda: driver.execute_script(
        "const v = document.getElementById('speak-video'); return !v.seeking && v.readyState >= 2"), 30, "the seek")
    time.sleep(1.0)  # the player's loading spinner fades
    assert ready[0] == 512 and abs(ready[1] - 2.0) < 0.1, ready
    link = driver.find_element(By.ID, "speak-download")
    assert link.is_displayed() and link.get_attribute("href").endswith("?download=1")
    screenshot(driver, folder, "serve_speak.png")
    # the microphone: recorded in the page (resampled to 16 kHz, a WAV file), uploaded, rendered
    driver.find_element(By.CSS_SELECTOR, "#speak-form input[name=source][value=record]").click()
    driver.find_element(By.ID, "record-start").click()
    wait_for(lambda: text(driver, "record-state") == "recording…" or text(driver, "speak-error"), 30, "recording")
    time.sleep(2.0)
    driver.find_element(By.ID, "record-stop").click()
    recorded = float(text(driver, "record-state").split()[1])
    assert 1.5 < recorded < 4.0, text(driver, "record-state")
    before = driver.find_element(By.ID, "speak-video").get_attribute("src")
    driver.find_element(By.ID, "speak-go").click()
    wait_for(lambda: driver.find_element(By.ID, "speak-video").get_attribute("src") != before
             or text(driver, "speak-error"), 120, "the render of the recording")
    assert not text(driver, "speak-error"), text(driver, "speak-error")
    frames = int(text(driver, "speak-status").split()[1])
    assert abs(frames - recorded * 25) <= 2, (frames, recorded)
    # a bad file: a message in the page, not a traceback
    driver.find_element(By.CSS_SELECTOR, "#speak-form input[name=source][value=upload]").click()
    bad = folder / "not audio.wav"
    bad.write_bytes(np.random.default_rng(0).bytes(4000))
    driver.find_element(By.CSS_SELECTOR, "#speak-form input[name=file]").send_keys(str(bad))
    driver.find_element(By.ID, "speak-go").click()
    error = wait_for(lambda: text(driver, "speak-error"), 30, "the error message")
    assert "not audio.wav" in error and "Traceback" not in error, error
