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
    assert label.inner_text().strip() == "A dog"
    shot = shoot(page, tmp_path_factory, "classify-dog")
    assert shot.stat().st_size > 10_000

    page.get_by_role("button", name="Remove Image").first.click()  # clear, then another photo: the label follows
    upload(page, photos["cat"])
    label.filter(has_text="cat").wait_for()
    assert label.inner_text().strip() == "A cat"


def refusal_shown_once(page, word: str) -> None:
    """One refusal, in place: the message on the page, no stack of error toasts, no broken
    photo left in the input, no label from the photo before."""
    page.get_by_text(word).first.wait_for()
    page.wait_for_timeout(1500)  # gradio fires a photo's change event more than once: let them all land
    assert page.get_by_text(word).count() == 1
    assert page.get_by_test_id("toast-body").count() == 0
    assert page.locator("#petlens-classify-photo img").count() == 0  # no broken-image icon
    assert page.locator("#petlens-classify-label").get_by_test_id("label-output-value").count() == 0


@pytest.mark.parametrize("kind", ["non-image", "decompression-bomb"])
def test_broken_upload_replacing_a_photo_is_refused_once_and_clears_the_old_result(page, hostile, photos, tmp_path_factory, kind):
    path, word = hostile[kind]
    upload(page, photos["dog"])
    page.get_by_test_id("label-output-value").filter(has_text="dog").first.wait_for()
    upload(page, path)  # dropped over the shown photo, no Remove first
    refusal_shown_once(page, word)
    shoot(page, tmp_path_factory, f"refused-{kind}", full_page=False)

    upload(page, photos["cat"])  # the page keeps working, and the refusal goes with the new photo
    page.get_by_test_id("label-output-value").filter(has_text="cat").first.wait_for()
    page.wait_for_timeout(500)
    assert page.get_by_text(word).count() == 0


def test_fool_tab_refuses_a_broken_file_in_place(page, hostile, photos):
    path, word = hostile["non-image"]
    page.get_by_role("tab", name="Fool me").click()
    fool_input = page.locator("#petlens-fool-photo input[type=file]")
    fool_input.set_input_files(str(photos["dog"]))
    page.locator("#petlens-fool-before").get_by_test_id("label-output-value").filter(has_text="dog").wait_for()
    fool_input.set_input_files(str(path))
    page.get_by_text(word).first.wait_for()
    page.wait_for_timeout(1500)
    assert page.get_by_text(word).count() == 1 and page.get_by_test_id("toast-body").count() == 0
    assert page.locator("#petlens-fool-before").get_by_test_id("label-output-value").count() == 0


@pytest.mark.parametrize("width,height", [(1280, 900), (390, 844)], ids=["desktop", "phone"])
def test_one_tab_bar_with_every_tab_on_screen_and_the_photo_box_on_the_first_screen(browser, demo_url, width, height):
    """The page has one row of tabs, all four names on screen at desktop and phone size (none
    behind an overflow menu), and each photo tab's upload box starts within the first screen."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(demo_url, wait_until="domcontentloaded")
        page.get_by_role("tab", name="Classify").wait_for()
        names = ["Classify", "Fool me", "Ideal", "Inside"]
        for name in names:
            page.get_by_role("tab", name=name).click()
            page.wait_for_timeout(300)
            bar = page.get_by_role("tab")
            assert bar.count() == len(names), [bar.nth(i).inner_text() for i in range(bar.count())]
            assert all(page.get_by_role("tab", name=n).is_visible() for n in names)
            assert not page.get_by_label("More tabs").is_visible()
            if name != "Ideal":  # the Ideal tab has no photo to upload
                drop = page.locator("[role=tabpanel]:visible input[type=file]").first
                box = drop.locator("xpath=..").bounding_box()
                assert box is not None and 0 <= box["y"] < height, (name, box)
    finally:
        page.close()
