"""The page in a real headless browser (Debian's chromium driven by Playwright), against `genrec serve`
started as a user starts it, on loopback: ask for a user, get ten distinct real items, each with its
explanation; type a history with the title autocomplete. Runs in `make test-e2e` (which installs chromium)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from genrec.config import load_config
from test_explained import headline  # noqa: F401 - a trained tiny atomic run

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(headline):  # noqa: F811
    overrides, _ = headline
    adapter = load_config(None, overrides).run.output_dir + "/adapter"
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "genrec"), "serve", "--config",
                             str(REPO / "recipes/configs/ml100k/smollm2_atomic.yaml"), "--port", str(port),
                             *overrides, f"run.checkpoint={adapter}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_the_page_shows_ten_explained_real_items_for_a_user(server, headline, tmp_path):  # noqa: F811
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: apt-get install -y chromium (make test-e2e does it)"
    _, recommender = headline
    titles = {it.text for it in recommender.setup.split.catalog.items}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 1400})
        page.goto(server)
        page.fill("#user", "3")
        page.fill("#k", "10")
        page.click("#go")
        page.wait_for_selector("#results li >> nth=9", timeout=60_000)
        items = page.locator("#results li")
        assert items.count() == 10
        shown = [items.nth(i).locator(".title").inner_text() for i in range(10)]
        assert len(set(shown)) == 10 and set(shown) <= titles  # ten distinct real catalog items
        becauses = [items.nth(i).locator(".because").inner_text() for i in range(10)]
        assert all(b.startswith("because: ") and len(b) > len("because: ") for b in becauses)
        assert page.locator("#history li").count() >= 1
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

        # a typed history through the autocomplete; an unknown title shows the server's message
        page.fill("#user", "")
        page.fill("#title", "Love")
        page.wait_for_function("document.querySelectorAll('#title-list option').length > 0", timeout=10_000)
        first = page.locator("#title-list option").first.get_attribute("value")
        page.fill("#title", first)
        page.press("#title", "Enter")
        page.fill("#title", "No Such Movie (2999)")
        page.press("#title", "Enter")
        page.click("#go")
        page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=30_000)
        assert "not in the catalog" in page.inner_text("#error")
        browser.close()
