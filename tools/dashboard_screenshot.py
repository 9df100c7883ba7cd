"""Make docs/dashboard.png: a small sweep (3 learning rates x 3 seeds, metrics in
`train/` and `val/`), served, the page with the hyperparameter views open (parallel
coordinates brushed on the learning rate, the scatter) and the charts grouped by
`lr` (each group's mean in its min-max band, in sections), photographed by
headless Chromium (Playwright, Debian's /usr/bin/chromium).

    python tools/dashboard_screenshot.py [--out docs/dashboard.png] [--steps 800]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("EXPMAN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def sweep(base: Path, steps: int) -> list[str]:
    """3 learning rates x 3 seeds, a batch size and a dropout each; noisy curves."""
    import math
    import random

    import expman
    ids = []
    for i, lr in enumerate((0.1, 0.03, 0.01)):
        for seed in range(3):
            rng = random.Random(seed * 7 + i)
            with expman.Experiment("sweep", f"lr{lr}-seed{seed}", base_dir=base, system_metrics=False,
                                   capture_env=False, group=f"lr{lr}") as exp:
                dropout = round(0.1 + 0.1 * ((seed + i) % 3), 2)
                exp.log_params({"lr": lr, "seed": seed, "batch_size": 32 * (1 + (seed + i) % 2),
                                "dropout": dropout})
                for step in range(steps):
                    loss = 2.0 * math.exp(-step * lr / 4) + 0.15 + dropout * 0.3 + rng.gauss(0, 0.06)
                    exp.log_metrics({"train/loss": loss, "train/acc": 1 - loss / 3}, step=step)
                    if step % 20 == 19:
                        exp.log_metrics({"val/loss": loss * 1.1 + rng.gauss(0, 0.03),
                                         "val/acc": 1 - loss / 2.8}, step=step)
                ids.append(f"sweep/lr{lr}-seed{seed}")
    return ids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"))
    ap.add_argument("--steps", type=int, default=800)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from playwright.sync_api import sync_playwright

    from expman.dashboard.testing import running_server
    with tempfile.TemporaryDirectory() as base:
        ids = sweep(Path(base), args.steps)
        state = [("groupby", "param:lr"), ("hp", "1"), ("hpm", "val/loss"), ("hps", "min"),
                 ("hpp", "batch_size,dropout,lr,seed"), ("hpx", "dropout"),
                 ("brush", "lr:0.6:1.02")] + [("run", i) for i in ids]
        with running_server(base) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1900})
            page.goto(f"{url}#/?{urllib.parse.urlencode(state)}")
            page.wait_for_selector(f'#hp-parallel[data-lines="{len(ids)}"]')
            for metric in ("train/loss", "val/loss"):
                page.wait_for_selector(f'section.band-chart[data-metric="{metric}"][data-groups="3"]')
            page.wait_for_timeout(300)         # the last frame painted
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
