"""A screenshot of the `seq2seq serve` page for README: start the server, type a sentence in
headless Chromium, wait for the translation and the heatmap, hover one target piece, save a PNG.

    python scripts/web_screenshot.py MODEL "Ein Mann fährt Fahrrad." -o docs/images/serve_page.png [--hover 3]

Needs the dev extra (Playwright) and an installed Chromium (apt-get install chromium).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from seq2seq.serve.process import ServerProcess


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("sentence")
    ap.add_argument("-o", "--output", default="docs/images/serve_page.png")
    ap.add_argument("--hover", type=int, default=2, help="target piece to hover (0-based)")
    ap.add_argument("--nbest", default="3")
    args = ap.parse_args()
    chromium = os.environ.get("SEQ2SEQ_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("error: no Chromium found (apt-get install chromium, or set SEQ2SEQ_CHROMIUM)")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            server = ServerProcess(args.model, log=Path(tmp) / "server.log")
        except RuntimeError as e:
            sys.exit(f"error: {e}")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1100, "height": 900}, device_scale_factor=1)
                page.goto(server.url)
                page.wait_for_selector("body[data-ready=true]")
                page.select_option("#nbest", args.nbest)
                page.locator("#source").fill(args.sentence)
                page.locator("#source").press("Enter")
                page.wait_for_selector("#heatmap td.cell")
                page.locator("#heatmap tbody tr").nth(args.hover).hover()
                page.screenshot(path=args.output, full_page=True)
                print(f"{page.text_content('#translation')}\nwrote {args.output}")
                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
