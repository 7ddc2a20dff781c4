"""Every tab of the demo at desktop and phone size, in a real browser: screenshots to look at,
and the two layout facts a phone user needs, measured rather than assumed.

    python -m benchmarks.demo_pages --out docs/figures/demo            # the shipped model
    python -m benchmarks.demo_pages --url http://127.0.0.1:7860 --out shots/

For each viewport and tab it reports whether every tab's name is on screen (no "..." overflow
menu hiding some) and whether the tab's photo input starts within the first screen. Needs
Playwright and a Chromium (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from benchmarks import add_record, record

TABS = ["Classify", "Fool me", "Ideal", "Inside"]
VIEWPORTS = {"desktop": (1280, 900), "phone": (390, 844)}  # a common phone's CSS pixels
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def measure(url: str, out: Path, chromium: str) -> list[dict]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        for device, (width, height) in VIEWPORTS.items():
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(60_000)
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("tab", name="Classify").wait_for()
            for tab in TABS:
                page.get_by_role("tab", name=tab).first.click()
                page.wait_for_timeout(500)
                # Gradio keeps a second, hidden copy of each tab button for its "..." overflow menu.
                visible = [t for t in TABS if page.get_by_role("tab", name=t).first.is_visible()]
                panel = page.locator("[role=tabpanel]:visible").first
                drop = panel.locator("input[type=file]").first
                top = None
                if drop.count():
                    box = drop.locator("xpath=..").bounding_box()
                    top = None if box is None else round(box["y"])
                shot = out / f"{device}-{tab.lower().replace(' ', '-')}.png"
                page.screenshot(path=str(shot), full_page=False)
                rows.append({"device": device, "tab": tab, "tabs_on_screen": len(visible), "tabs": len(TABS),
                             "photo_input_top_px": top, "screen_height_px": height,
                             "photo_input_on_first_screen": None if top is None else top < height,
                             "screenshot": str(shot)})
            page.close()
        browser.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo_pages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="a running demo (default: start one on the shipped model)")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/demo"), help="folder for the screenshots")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    args = add_record(parser).parse_args(argv)
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if chromium is None:
        print("error: no Chromium found (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    app = None
    url = args.url
    if url is None:
        from demo.app import launch, load_demo

        app = load_demo()
        _, url, _ = launch(app, host="127.0.0.1", port=None, prevent_thread_lock=True, quiet=True)
    try:
        rows = measure(url.rstrip("/"), args.out, chromium)
    finally:
        if app is not None:
            app.close()
    record("demo_pages", rows, args)
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"{'device':8} {'tab':8} {'tabs on screen':>15} {'photo input top':>16}  screenshot")
        for r in rows:
            top = "-" if r["photo_input_top_px"] is None else f"{r['photo_input_top_px']}/{r['screen_height_px']} px"
            print(f"{r['device']:8} {r['tab']:8} {r['tabs_on_screen']:>11}/{r['tabs']:<3} {top:>16}  {r['screenshot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
