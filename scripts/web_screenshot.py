"""A screenshot of the `seq2seq serve` page for README: start the server, type a sentence in
headless Chromium, wait for the translation and the heatmap, hover one target piece, save a PNG.

    python scripts/web_screenshot.py MODEL "Ein Mann fährt Fahrrad." -o docs/images/serve_page.png [--hover 3]

Needs the dev extra (Playwright) and an installed Chromium (apt-get install chromium).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent


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
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen([sys.executable, "-m", "seq2seq.cli", "serve", args.model, "--port", "0"],
                                  stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            port = None
            while port is None:
                if server.poll() is not None:
                    log.seek(0)
                    sys.exit(f"error: the server did not start:\n{log.read().decode(errors='replace')}")
                log.seek(0)
                m = re.search(rb" on http://127\.0\.0\.1:(\d+)/ \(Ctrl", log.read())
                port = int(m.group(1)) if m else time.sleep(0.1)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1100, "height": 900}, device_scale_factor=1)
                page.goto(f"http://127.0.0.1:{port}/")
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
            server.send_signal(signal.SIGTERM)
            server.wait(60)


if __name__ == "__main__":
    main()
