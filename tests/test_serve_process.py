"""A real `vitdetect serve` process: answers over HTTP, stops cleanly, and its web page works in a real headless
browser (Debian's chromium driven by Playwright). The browser test skips only where no chromium is installed."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REAL_CIFAKE

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
from vitdetect import Detector  # noqa: E402
from vitdetect.serve.process import server_process  # noqa: E402

pytestmark = pytest.mark.slow
BROWSER_TIMEOUT_MS = 120_000  # a busy shared machine answers in seconds, not Playwright's default 5


def chromium_path() -> str | None:
    candidates = (os.environ.get("VITDETECT_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                  "/usr/bin/chromium")
    return next((path for path in candidates if path and Path(path).is_file()), None)


@pytest.fixture(scope="module")
def cifake_image(evaluated_run) -> Path:
    """A real CIFAKE test image where the data is present, else one of the tiny CIFAKE-layout set's."""
    folder = REAL_CIFAKE / "test" / "FAKE"
    if not folder.is_dir():
        folder = evaluated_run.parent / "cifake" / "test" / "FAKE"
    return sorted(folder.iterdir())[0]


def test_a_served_process_judges_images_and_stops_cleanly_on_sigterm(checkpoint, cifake_image, tmp_path):
    log = tmp_path / "server.log"
    with server_process(["--checkpoint", str(checkpoint)], log) as server:
        base = server.url
        request = urllib.request.Request(base + "v1/predict", data=cifake_image.read_bytes(),
                                         headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(request, timeout=60) as response:
            result, = json.load(response)["results"]
    want = Detector.from_checkpoint(checkpoint).predict([cifake_image])[0]
    assert result["label"] == want.label and result["p_fake"] == pytest.approx(want.p_fake, abs=1e-6)
    text = log.read_text()
    assert base.startswith("http://127.0.0.1:") and '"POST /v1/predict HTTP/1.1" 200' in text  # access log
    assert "vitdetect serve: stopped" in text and "Traceback" not in text


def test_the_web_page_in_a_real_browser(checkpoint, cifake_image, tmp_path):
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("no chromium installed (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    want = Detector.from_checkpoint(checkpoint).predict([cifake_image])[0]
    requested: list[str] = []
    with server_process(["--checkpoint", str(checkpoint), "--quiet"], tmp_path / "server.log") as server, \
            sync_playwright() as playwright:
        base = server.url
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 820, "height": 640})
        page.set_default_timeout(BROWSER_TIMEOUT_MS)
        page.on("request", lambda request: requested.append(request.url))
        page.goto(base)
        expect(page.locator("#model")).to_contain_text("Model: scratch:vit-micro-32",  # from GET /v1/model
                                                       timeout=BROWSER_TIMEOUT_MS)

        page.set_input_files("#picker", str(cifake_image))  # "choose images"
        card = page.wait_for_selector(".result:not(.pending)")
        assert card.get_attribute("data-label") == want.label
        assert float(card.get_attribute("data-p-fake")) == pytest.approx(want.p_fake, abs=1e-6)
        verdict = card.query_selector(".verdict").inner_text()
        assert verdict == ("AI-generated (FAKE)" if want.label == "FAKE" else "Real photo (REAL)")
        assert f"P(FAKE) = {want.p_fake:.3f}" in card.inner_text() and cifake_image.name in card.inner_text()
        assert page.inner_text("#status").startswith("Judged 1 image(s)")

        dropped = page.evaluate_handle("""(bytes) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "broken.jpg", {type: "image/jpeg"}));
            return transfer; }""", list(b"\xff\xd8 not really a JPEG"))
        page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})  # "drop images here"
        expect(page.locator(".result:not(.pending)")).to_have_count(2, timeout=BROWSER_TIMEOUT_MS)
        newest = page.query_selector(".result")
        assert newest.get_attribute("data-label") == "error" and "broken.jpg" in newest.inner_text()
        assert "Could not judge this file" in newest.inner_text()

        page.fill("#min-confidence", "100")  # no verdict is 100% sure: UNSURE, in its own colour, with the reason
        page.check("#check-stability")
        page.set_input_files("#picker", str(cifake_image))
        expect(page.locator(".result:not(.pending)")).to_have_count(3, timeout=BROWSER_TIMEOUT_MS)
        unsure = page.query_selector(".result")
        assert unsure.get_attribute("data-label") == "UNSURE" and "unsure" in unsure.get_attribute("class")
        assert unsure.query_selector(".verdict").inner_text() == "Unsure (UNSURE)"
        assert "Why: confidence" in unsure.inner_text() and "is below 100%" in unsure.inner_text()
        assert unsure.evaluate("card => getComputedStyle(card).borderLeftColor") == "rgb(161, 70, 138)"
        assert "1 unsure" in page.inner_text("#status")
        assert any("min_confidence=1&check_stability=true" in url or "check_stability=true&min_confidence=1" in url
                   for url in requested), requested
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert all(url.startswith((base, "blob:", "data:")) for url in requested), requested  # nothing from elsewhere
    screenshot = np.asarray(Image.open(tmp_path / "page.png").convert("RGB"))
    assert screenshot.shape[1] == 820 and screenshot.std() > 10  # a rendered page, not a blank one
