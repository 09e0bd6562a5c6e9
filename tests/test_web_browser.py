"""The auditor's web view end to end in a real headless Chromium (Debian's ``chromium``,
driven by Playwright; never a downloaded browser), on SQLite and PostgreSQL: sign in with a
token, list, open a transcript, see a conversation altered by direct SQL flagged, follow fork
links, export. Screenshots of the key pages go to the test's tmp directory."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_web_data import (
    ACME_TOKEN,
    IMAGE,
    Seeded,
    make_app,
    migrated_database,
    seed,
    tamper_step,
)

from convostore import _transfer as transfer
from convostore.cli import open_existing

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _need_browser() -> Any:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"Chromium ({CHROMIUM}: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("Playwright (pip install playwright, in the [dev] extra)")
    if missing:
        message = f"{' and '.join(missing)} missing"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI requires it", pytrace=False)
        pytest.skip(message)
    return sync_playwright


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'browser.db'}"
        return
    with migrated_database(request.getfixturevalue("postgres_url"), "browser") as url:
        yield url


@pytest.fixture
def served(store_url: str, tmp_path: Path, emulator_server: Any) -> Iterator[tuple[str, Seeded]]:
    """The seeded store, a step of one conversation altered, served over real HTTP."""
    import uvicorn

    seeded = seed(store_url, emulator_server.url)
    tamper_step(store_url, seeded.tamper, 3, "Remember the number 42.")
    app = make_app(open_existing(store_url), tmp_path / "reads.jsonl")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", seeded
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def test_an_auditor_in_a_real_browser(served: tuple[str, Seeded], tmp_path: Path) -> None:
    sync_playwright = _need_browser()
    base, seeded = served
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                viewport={"width": 1280, "height": 900}, accept_downloads=True
            )
            page = context.new_page()
            problems: list[str] = []
            # expected answers (the wrong token's 401, the last 404, favicon.ico) are
            # "Failed to load resource"; anything else, a CSP violation included, is a problem
            page.on(
                "console",
                lambda m: (
                    problems.append(m.text)
                    if m.type == "error" and not m.text.startswith("Failed to load resource")
                    else None
                ),
            )
            page.on("pageerror", lambda exc: problems.append(str(exc)))

            # signing in
            page.goto(base + "/")
            assert page.url == base + "/login"
            page.screenshot(path=shots / "login.png")
            page.fill("#token", "not-the-token-000000")
            page.click("button[type=submit]")
            assert "That token is not valid." in page.inner_text("main")
            page.fill("#token", ACME_TOKEN)
            page.click("button[type=submit]")
            page.wait_for_url(base + "/conversations")
            cookies = {c["name"]: c for c in context.cookies()}
            session = cookies["convostore_session"]
            assert session["httpOnly"] and session["sameSite"] == "Strict"
            assert ACME_TOKEN not in page.url and session["value"] not in page.url

            # the list: tenant acme only
            rows = page.locator("table.list tbody tr")
            assert rows.count() == 6
            assert seeded.globex not in page.content()
            page.screenshot(path=shots / "list.png", full_page=True)
            page.check("input[name=flag][value=failed]")
            page.click("form.filters button[type=submit]")
            assert page.locator("table.list tbody tr").count() == 1
            assert seeded.imported in page.inner_text("table.list")
            page.click("text=Reset")

            # a transcript: tool call, result, thought, a picture by reference, verified
            page.click(f"text={seeded.tools}")
            badge = page.locator("#verification")
            assert "Verified intact" in badge.inner_text()
            transcript = page.inner_text(".transcript")
            assert "get_weather" in transcript and "image/png" in transcript
            assert IMAGE[:40] not in page.content()
            page.locator("details.step.call summary").first.click()
            assert '"city"' in page.inner_text("details.step.call[open] pre")
            page.screenshot(path=shots / "transcript.png", full_page=True)

            # the conversation altered by direct SQL is flagged, at its turn
            page.goto(base + "/conversations")
            page.click(f"text={seeded.tamper}")
            verdict = page.locator("#verification").inner_text()
            assert "Verification failed at turn 2" in verdict
            assert "audit hash mismatch" in verdict
            assert page.locator("section.turn.flagged").get_attribute("id") == "turn-2"
            page.screenshot(path=shots / "tampered.png", full_page=True)

            # forks: from the grandchild up to its parent, then the tree, then the root
            page.goto(base + "/conversations?user=u1")
            page.click(f"text={seeded.grandchild}")
            page.click(f".origin >> text={seeded.fork}")
            assert page.locator("h1").first.inner_text() == seeded.fork
            page.click("text=Fork tree")
            tree = page.locator("ul.tree")
            for cid in (seeded.root, seeded.fork, seeded.grandchild):
                assert tree.locator(f"text={cid}").count() == 1
            page.screenshot(path=shots / "forks.png", full_page=True)
            tree.locator(f"text={seeded.root}").click()
            assert page.locator("h1").first.inner_text() == seeded.root

            # export, byte for byte what `convostore export` writes
            with page.expect_download() as download_info:
                page.click("text=Export JSON Lines")
            download = download_info.value
            assert download.suggested_filename == f"{seeded.root}.jsonl"
            saved = tmp_path / download.suggested_filename
            download.save_as(saved)
            bundles = transfer.read_export(saved.read_text(encoding="utf-8").splitlines())
            assert [b.record.id for b in bundles] == [seeded.root]
            assert json.loads(saved.read_text().splitlines()[0])["kind"] == "conversation"

            # the case file
            page.click("text=Case file")
            assert "Case file" in page.inner_text("h1")
            assert "Verified intact" in page.inner_text("#verification")
            page.screenshot(path=shots / "case-file.png", full_page=True)

            # signing out ends the session
            page.click("text=Sign out")
            page.wait_for_url(base + "/login")
            page.goto(base + "/conversations")
            assert page.inner_text("h1") == "Not found"
            assert problems == [], problems  # no script errors, no CSP violations
        finally:
            browser.close()
    for name in ("login", "list", "transcript", "tampered", "forks", "case-file"):
        assert (shots / f"{name}.png").stat().st_size > 10_000
