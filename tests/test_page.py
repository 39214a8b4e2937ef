"""The page of serve.py in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium): type a prompt, submit, watch it run, wait for the image in the gallery, and check the
PNG behind it records the prompt. STAGED_CLIP_SCREENSHOT=PATH also saves the page there (the
README's docs/serve.png was made so)."""

import io
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from conftest import ROOT
from staged_clip.servebench import answering, free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
                                                                    "(apt-get install -y chromium chromium-driver)")


@pytest.fixture
def site(tmp_path):
    """A served toy model: its base URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), "--clip-model", "toy", "--devices", "cpu",
                                "--port", str(port), "--data", str(tmp_path / "data"), "--baked-dir",
                                str(ROOT / "baked"), "--threads", "1", "--preview-every", "5"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        answering(base, seconds=60)
        yield base
    finally:
        process.terminate()
        process.communicate(timeout=30)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def fill(driver, values):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    for field, value in values.items():
        element = driver.find_element(By.ID, field)
        if element.tag_name == "select":
            Select(element).select_by_value(value)
        else:
            element.clear()
            element.send_keys(value)


def test_the_page_makes_an_image_with_its_prompt(site, browser, tmp_path):
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(site + "/")
    wait = WebDriverWait(browser, 180)
    wait.until(lambda d: "toy on cpu" in d.find_element(By.ID, "model").text)
    assert browser.find_elements(By.CSS_SELECTOR, "#bake option")  # the bake list came from /api/bakes
    fill(browser, {"prompt": "a red circle on the left", "size": "24", "steps": "150", "seed": "4",
                   "palette": "pico8"})
    browser.find_element(By.ID, "submit").click()
    running = wait.until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".job .state")
                                    if e.text.startswith("running: step")])
    assert running  # the queue's word, then progress
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery figure img[src^='blob:']"))
    fill(browser, {"prompt": "a blue square on the right", "palette": "", "steps": "60", "seed": "8",
                   "variations": "2"})
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery figure")) == 3)
    cards = browser.find_elements(By.CSS_SELECTOR, "#gallery figure")
    first = cards[-1]  # the newest first: the first job's image is last
    assert "a red circle on the left" in first.text and "seed 4" in first.text and "pico8" in first.text
    path = first.find_element(By.TAG_NAME, "img").get_attribute("data-path")
    answer = httpx.get(site + path)
    assert answer.headers["content-type"] == "image/png" and answer.content[:4] == b"\x89PNG"
    made = Image.open(io.BytesIO(answer.content))
    assert made.text["seed"] == "4" and '"prompt": "a red circle on the left"' in made.text["settings"]
    assert first.find_element(By.TAG_NAME, "a").get_attribute("download").endswith(".png")
    shot = tmp_path / "serve.png"
    browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] >= 1000
    if os.environ.get("STAGED_CLIP_SCREENSHOT"):
        shutil.copy(shot, os.environ["STAGED_CLIP_SCREENSHOT"])
