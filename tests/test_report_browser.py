"""report.html as a person sees it: headless Chromium renders it, every image loads, no console error."""

import os
import shutil

import pytest

from freezetune.cli.commands import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium and chromium-driver (.ci/run does)")
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--disable-component-update", "--disable-sync"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_report_renders_in_chromium(tiny_chat_model_dir, order_data, tmp_path, browser):
    out = tmp_path / "cmp"
    argv = ["compare", "--model", str(tiny_chat_model_dir), "--data", str(order_data[0]), "--eval-data", str(order_data[1]),
            "--max-steps", "3", "--batch-size", "4", "--seq-len", "64", "--eval-generate", "2", "--out", str(out),
            "--strategy", "full", "--strategy", "lora r=4", "--strategy", "freeze bottom 50%",
            "--seeds", "2", "--search-steps", "2", "--validation", "4"]
    assert main(argv) == 0
    browser.get((out / "report.html").as_uri())
    assert browser.title == "freezetune comparison"
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
    assert [name for name, *_ in images] == ["loss_curves", "quality_vs_forgetting", "lr_search", "time_and_memory",
                                              "layer_drift"]
    for name, complete, width, height in images:
        assert complete and width > 100 and height > 100, name
    rows = browser.execute_script("return document.querySelectorAll('tbody tr').length")
    assert rows == 4  # the base model's reference row and three strategies
    verdict = browser.execute_script("return document.querySelector('ul').innerText")
    assert "On the frontier" in verdict and "2 seeds" in verdict
    cells = browser.execute_script("return Array.from(document.querySelectorAll('tbody td')).map(c => c.innerText)")
    assert any(" ± " in c for c in cells) and any("% [" in c for c in cells) and any("(searched: " in c for c in cells)
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    browser.save_screenshot(str(out / "screenshot.png"))
