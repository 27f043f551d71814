"""Render a bench report.html in headless Chromium to a PNG, to look at the page as a reader will (a dev script, not
run in CI). Needs Chromium: `apt-get install -y chromium` on Debian.

    python scripts/check_report_html.py /tmp/rep/out/report.html -o /tmp/rep/report.png
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# nothing to fetch and nothing to phone home to: the page must render from the file alone
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no Chromium found: install it with `apt-get install -y chromium`")


def screenshot(page: Path, out: Path, width: int, height: int, timeout: float = 120.0) -> Path:
    """Render `page` at width x height CSS pixels into the PNG `out`."""
    out = out.resolve()
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="lfmq-chromium-") as profile:
        cmd = [find_browser(), *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}",
               f"--window-size={width},{height}", page.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not out.exists():
        raise SystemExit(f"Chromium wrote no screenshot (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path, help="the report.html to render")
    ap.add_argument("-o", "--out", type=Path, default=None, help="the PNG to write (default: beside the page)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=2400)
    args = ap.parse_args(argv)
    if not args.page.is_file():
        raise SystemExit(f"{args.page} does not exist")
    out = screenshot(args.page, args.out or args.page.with_suffix(".png"), args.width, args.height)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
