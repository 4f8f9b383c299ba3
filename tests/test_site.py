"""The built site (`make site`, in build/site/) in a real headless browser: every page loads without
console errors, every image has loaded, no output shows a Python traceback, every link inside the
site resolves. Runs with `pytest -m site` after `make site`; skipped (with the reason) when the site
is not built, Playwright is not installed or no Chromium is found (`CHROMIUM` or `chromium` on PATH)."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest

pytestmark = pytest.mark.site

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "build" / "site"
PAGES = sorted(p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html")) if SITE.is_dir() else []


def _chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if not PAGES:
        pytest.skip("build/site/ is not built: run `make site`")
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install -e '.[site]')")
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium found: install the OS package (apt-get install chromium) or set CHROMIUM")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def test_the_site_has_a_page_for_every_notebook():
    if not PAGES:
        pytest.skip("build/site/ is not built: run `make site`")
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert [Path(p).stem for p in PAGES if p.startswith("notebooks/")] == notebooks
    assert "index.html" in PAGES and "workshop.html" in PAGES


@pytest.mark.parametrize("page", PAGES or ["(site not built)"])
def test_page_loads_cleanly_in_a_real_browser(page, browser, server):
    tab = browser.new_page()
    errors: list[str] = []
    tab.on("console", lambda msg: errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    tab.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    response = tab.goto(urljoin(server, page), wait_until="load")
    assert response is not None and response.ok, f"{page}: HTTP {response and response.status}"
    broken = tab.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                          ".map(i => i.getAttribute('src'))")
    text = tab.inner_text("body")
    links = tab.evaluate("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
    tab.close()
    assert not errors, f"{page}: " + "; ".join(errors)
    assert not broken, f"{page}: images that did not load: {broken}"
    assert "Traceback (most recent call last)" not in text, f"{page} shows a Python traceback"
    dead = []
    for href in links:
        url = urlparse(href)
        if url.scheme not in ("http", "https") or f"{url.scheme}://{url.netloc}/" != server:
            continue                                   # outside the site (papers, GitHub): not checked here
        target = SITE / unquote(url.path).lstrip("/")
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            dead.append(href)
    assert not dead, f"{page}: links to pages that do not exist: {dead}"
