"""The README's pictures, made from the product itself so they stay current:
`depthwatch up --source sim` in a scratch directory, Chromium (Debian's, as
the tests use) at 1440 px, then the Live, Overview and History pages.

    .venv/bin/python docs/screenshots.py   # docs/live.png, overview.png, history.png

Each file appears whole or not at all (written under a temporary name, then
renamed); `up` and everything it started stop on every path.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from children import CHROMIUM, CHROMIUM_ARGS, free_port  # noqa: E402

if TYPE_CHECKING:
    from playwright.sync_api import Browser

DOCS = ROOT / "docs"
WIDTH = 1440
RECORD_S = 45  # enough minutes' worth of charts to look like something
# (file, path, height): Live at full size, the others small.
PAGES = (
    ("live.png", "/live?category=linear&symbol=BTCUSDT&depth=50&window=1", 1300),
    ("overview.png", "/", 700),
    ("history.png", "/history?symbols=BTCUSDT&kind=quotes", 1000),
)
SMALL_WIDTH = 720  # the Overview and History pictures are shown at half size


def wait_healthy(url: str, up: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if up.poll() is not None:
            raise RuntimeError(f"depthwatch up exited {up.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the dashboard at {url} did not come up in {timeout_s:g} s")


def shoot(url: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for name, path, height in PAGES:
                page = browser.new_page(viewport={"width": WIDTH, "height": height})
                page.goto(url + path)
                page.locator("[data-testid='stApp']").wait_for()
                page.wait_for_timeout(8_000)  # the charts' first draws and a refresh
                image = page.screenshot()
                page.close()
                if name != "live.png":
                    image = _half(browser, image)
                partial = DOCS / f".{name}.part"
                partial.write_bytes(image)
                partial.replace(DOCS / name)
                print(f"wrote {DOCS / name}")
        finally:
            browser.close()


def _half(browser: Browser, png: bytes) -> bytes:
    """The picture at SMALL_WIDTH (Chromium again: no imaging library needed)."""
    from base64 import b64encode

    page = browser.new_page(viewport={"width": SMALL_WIDTH, "height": 100})
    try:
        page.set_content(
            f"<body style='margin:0'><img style='width:{SMALL_WIDTH}px;display:block' "
            f"src='data:image/png;base64,{b64encode(png).decode()}'></body>"
        )
        return page.locator("img").screenshot()
    finally:
        page.close()


def main() -> int:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        up = subprocess.Popen(
            [
                *(sys.executable, "-m", "depthwatch.cli", "up", "--source", "sim"),
                *("--symbols", "BTCUSDT,ETHUSDT", "--trades", "--port", str(port)),
                *("--data-dir", str(Path(tmp) / "data")),
            ],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            url = f"http://localhost:{port}"
            wait_healthy(url, up)
            print(f"recording the simulator for {RECORD_S} s ...", flush=True)
            time.sleep(RECORD_S)
            shoot(url)
        finally:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
