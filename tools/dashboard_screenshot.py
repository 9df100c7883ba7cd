"""Make docs/dashboard.png: two `expman demo` runs, served, the page as it first opens
(the newest runs charted), smoothed, photographed by headless Chromium (Playwright, Debian's /usr/bin/chromium).

    python tools/dashboard_screenshot.py [--out docs/dashboard.png] [--steps 800]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("EXPMAN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"))
    ap.add_argument("--steps", type=int, default=800)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from playwright.sync_api import sync_playwright

    from expman.dashboard.testing import running_server
    with tempfile.TemporaryDirectory() as base:
        env = dict(os.environ, EXPMAN_DIR=base, PYTHONPATH=str(ROOT))
        for _ in range(2):                 # each demo picks its own seed
            subprocess.run([sys.executable, "-m", "expman", "demo", "--steps", str(args.steps)],
                           env=env, check=True, stdout=subprocess.DEVNULL)
        with running_server(base) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.fill("#smoothing", "0.6")
            page.dispatch_event("#smoothing", "input")
            page.wait_for_selector('section.chart[data-metric="train_loss"][data-series="2"]')
            page.wait_for_selector('section.chart[data-metric="val_loss"][data-series="2"]')
            page.screenshot(path=args.out, full_page=False)
            browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
