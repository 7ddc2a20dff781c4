"""A person's view: headless Chromium opens the running demo, uploads a photo and reads the
label; a broken upload shows a readable error and the page keeps working. Screenshots are
saved under the pytest temp dir and their paths printed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 60_000  # a contended 2-core CI machine


def find_chromium() -> str | None:
    """Debian's chromium (Playwright cannot download its own browsers here)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium found (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, demo_url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(demo_url, wait_until="domcontentloaded")
    page.get_by_role("tab", name="Classify").wait_for()
    yield page
    page.close()


def shoot(page, tmp_path_factory, name: str, full_page: bool = True) -> Path:
    path = tmp_path_factory.getbasetemp() / "screenshots" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)
    print(f"\nscreenshot: {path}")
    return path


def upload(page, path: Path) -> None:
    # The Classify tab's image input is the first file input on the page.
    page.locator("input[type=file]").first.set_input_files(str(path))


def test_upload_a_photo_and_see_the_right_label(page, photos, tmp_path_factory):
    upload(page, photos["dog"])
    label = page.get_by_test_id("label-output-value").first
    label.filter(has_text="dog").wait_for()
    assert label.inner_text().strip() == "dog"
    shot = shoot(page, tmp_path_factory, "classify-dog")
    assert shot.stat().st_size > 10_000

    page.get_by_role("button", name="Remove Image").first.click()  # clear, then another photo: the label follows
    upload(page, photos["cat"])
    label.filter(has_text="cat").wait_for()
    assert label.inner_text().strip() == "cat"


@pytest.mark.parametrize("kind", ["non-image", "decompression-bomb"])
def test_broken_upload_shows_a_readable_error_and_the_page_keeps_working(page, hostile, photos, tmp_path_factory, kind):
    path, word = hostile[kind]
    upload(page, path)
    toast = page.get_by_test_id("toast-body").filter(has_text=word).first
    toast.wait_for()
    assert "Traceback" not in toast.inner_text()
    page.wait_for_timeout(1000)  # let the toast's fly-in animation end before the picture
    shoot(page, tmp_path_factory, f"refused-{kind}", full_page=False)  # keeps the toast in view

    page.reload(wait_until="domcontentloaded")
    upload(page, photos["cat"])
    page.get_by_test_id("label-output-value").filter(has_text="cat").first.wait_for()
