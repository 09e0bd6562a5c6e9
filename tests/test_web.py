"""The auditor's web view (``convostore serve``) through Starlette's test client, on real
stores: every route, the auth matrix, the access log, the absence of write routes,
verification of a tampered conversation, filters and paging, forks, encrypted stores."""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from test_web_data import (
    ACME_TOKEN,
    GLOBEX_TOKEN,
    IMAGE,
    ROOT_TOKEN,
    TOKENS_JSON,
    Seeded,
    bearer,
    imported_conversation,
    make_app,
    migrated_database,
    seed,
    tamper_step,
)

import convostore as cs
from convostore import _transfer as transfer
from convostore._exceptions import ConfigurationError
from convostore.cli import open_existing
from convostore.cli import run as run_cli
from convostore.models import ConversationRecord, TurnRecord
from convostore.web import AccessLog, ReadOnlyStore, Sessions, Tokens, check_bind, create_app
from convostore.web import _queries as q

WEB = Path(cs.__file__).parent / "web"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def postgres_web(postgres_url: str) -> Iterator[str]:
    with migrated_database(postgres_url, "web") as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def seeded(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    emulator_server: Any,
) -> Seeded:
    if request.param == "sqlite":
        url = sqlite_url(tmp_path_factory.mktemp("web") / "web.db")
    else:
        url = request.getfixturevalue("postgres_web")
    return seed(url, emulator_server.url)


@pytest.fixture
def app_client(seeded: Seeded, tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    log = tmp_path / "access.jsonl"
    with TestClient(make_app(open_existing(seeded.url), log)) as client:
        yield client, log


def conv(tenant: str, conversation_id: str, suffix: str = "") -> str:
    return f"/t/{tenant}/c/{conversation_id}{suffix}"


def log_entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- tokens, binding


def test_token_table_rules() -> None:
    good = Tokens.from_json(TOKENS_JSON, source="t")
    assert good.authenticate(ACME_TOKEN).name == "ann"  # type: ignore[union-attr]
    assert good.authenticate(ACME_TOKEN + "x") is None
    assert good.authenticate("") is None
    hashed = Tokens.from_json(
        json.dumps(
            {
                "h": {
                    "token_sha256": __import__("hashlib").sha256(b"a" * 20).hexdigest(),
                    "tenants": ["acme"],
                }
            }
        ),
        source="t",
    )
    assert hashed.authenticate("a" * 20).tenants == {"acme"}  # type: ignore[union-attr]
    bad = {
        "not json": "{",
        "no principal": "{}",
        "short token": '{"p": {"token": "short", "tenants": ["a"]}}',
        "both grants": '{"p": {"token": "%s", "tenants": ["a"], "all_tenants": true}}' % ("x" * 20),
        "no grant": '{"p": {"token": "%s"}}' % ("x" * 20),
        "empty tenants": '{"p": {"token": "%s", "tenants": []}}' % ("x" * 20),
        "bad tenant": '{"p": {"token": "%s", "tenants": ["a b"]}}' % ("x" * 20),
        "unknown key": '{"p": {"token": "%s", "tenants": ["a"], "admin": true}}' % ("x" * 20),
        "both tokens": '{"p": {"token": "%s", "token_sha256": "00", "tenants": ["a"]}}'
        % ("x" * 20),
        "bad digest": '{"p": {"token_sha256": "abc", "tenants": ["a"]}}',
        "shared token": json.dumps(
            {
                "p": {"token": "x" * 20, "tenants": ["a"]},
                "q": {"token": "x" * 20, "all_tenants": True},
            }
        ),
    }
    for why, text in bad.items():
        with pytest.raises(ConfigurationError):
            Tokens.from_json(text, source=why)


def test_no_auth_binds_only_to_loopback(tmp_path: Path) -> None:
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"):
        check_bind(host, no_auth=True)
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        with pytest.raises(ConfigurationError, match="loopback"):
            check_bind(host, no_auth=True)
    check_bind("0.0.0.0", no_auth=False)
    store = cs.open_store(sqlite_url(tmp_path / "a.db"))
    with pytest.raises(ConfigurationError, match="needs tokens"):
        create_app(store, access_log=AccessLog(tmp_path / "log"))
    app = create_app(store, access_log=AccessLog(tmp_path / "log"), no_auth=True)
    with TestClient(app) as client:
        assert client.get("/conversations").status_code == 200


def test_serve_refuses_to_start_unsafely(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONVOSTORE_WEB_TOKENS", raising=False)
    monkeypatch.delenv("CONVOSTORE_WEB_TOKENS_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    store = ("--store", sqlite_url(tmp_path / "s.db"))
    cs.open_store(store[1]).close()
    assert run_cli(["serve", *store, "--no-auth", "--host", "0.0.0.0"]) == 2
    assert "loopback" in capsys.readouterr().err
    assert run_cli(["serve", *store]) == 2
    assert "--tokens-file" in capsys.readouterr().err
    (tmp_path / "t.json").write_text('{"p": {"token": "short", "tenants": ["a"]}}')
    assert run_cli(["serve", *store, "--tokens-file", str(tmp_path / "t.json")]) == 2
    assert "at least 16 characters" in capsys.readouterr().err


def test_sessions_expire_when_idle_and_at_their_lifetime() -> None:
    now = [0.0]
    sessions = Sessions(idle=10, lifetime=25, clock=lambda: now[0])
    principal = cs_principal = Tokens.from_json(TOKENS_JSON, source="t").principals[0]
    sid = sessions.open(principal)
    now[0] = 9
    assert sessions.get(sid) == cs_principal
    now[0] = 18
    assert sessions.get(sid) == cs_principal
    now[0] = 26  # active, but past the lifetime
    assert sessions.get(sid) is None
    sid = sessions.open(principal)
    now[0] = 37  # idle for 11
    assert sessions.get(sid) is None
    sid = sessions.open(principal)
    sessions.close(sid)
    assert sessions.get(sid) is None


# --------------------------------------------------------------------------- every route


def test_every_page_renders(app_client: tuple[TestClient, Path], seeded: Seeded) -> None:
    client, _ = app_client
    auth = bearer(ROOT_TOKEN)
    listing = client.get("/conversations", headers=auth)
    assert listing.status_code == 200
    for cid in (seeded.root, seeded.fork, seeded.tools, seeded.globex, seeded.imported):
        assert cid in listing.text
    page = client.get(conv("acme", seeded.root), headers=auth)
    assert page.status_code == 200
    assert "Verified intact" in page.text
    assert "I have 2 dogs in my house." in page.text
    assert "first_turn" in page.text and "chained" in page.text
    assert "Answer briefly." in page.text  # the settings
    tools = client.get(conv("acme", seeded.tools), headers=auth).text
    assert "get_weather" in tools and "requires_action" in tools
    assert "thought" in tools and "(signed)" in tools
    assert "temperature_c" in tools
    assert "image/png" in tools and "bytes inline (not shown)" in tools
    assert IMAGE[:40] not in tools  # media by reference, never inline
    case = client.get(conv("acme", seeded.tools, "/case"), headers=auth)
    assert case.status_code == 200 and "Case file" in case.text and "Verified intact" in case.text
    assert IMAGE[:40] not in case.text
    forks = client.get(conv("acme", seeded.fork, "/forks"), headers=auth)
    assert forks.status_code == 200
    assert seeded.root in forks.text and seeded.grandchild in forks.text
    export = client.get(conv("acme", seeded.root, "/export"), headers=auth)
    assert export.status_code == 200
    assert export.headers["content-type"].startswith("application/x-ndjson")
    assert f'filename="{seeded.root}.jsonl"' in export.headers["content-disposition"]
    retention = client.get(conv("acme", seeded.tamper), headers=auth).text
    assert "expires at" in retention and "(in 6 d)" in retention
    assert client.get("/verify", headers=auth).status_code == 200
    assert client.get("/access-log", headers=auth).status_code == 200
    css = client.get("/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert client.get("/", headers=auth, follow_redirects=False).headers["location"] == (
        "/conversations"
    )
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    assert "Access token" in client.get("/login").text


def test_export_is_what_the_command_exports(
    app_client: tuple[TestClient, Path], seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    client, _ = app_client
    for cid in (seeded.tools, seeded.grandchild):
        served = client.get(conv("acme", cid, "/export"), headers=bearer(ACME_TOKEN))
        capsys.readouterr()
        assert run_cli(["export", cid, "--tenant", "acme", "--store", seeded.url]) == 0
        assert served.text == capsys.readouterr().out
        assert transfer.read_export(served.text.splitlines())[0].record.id == cid


# --------------------------------------------------------------------------- auth matrix


def test_auth_matrix_everything_refused_looks_like_not_found(
    app_client: tuple[TestClient, Path], seeded: Seeded
) -> None:
    client, _ = app_client
    g = seeded.globex
    targets = [
        conv("globex", g),
        conv("globex", g, "/forks"),
        conv("globex", g, "/export"),
        conv("globex", g, "/case"),
        "/conversations?tenant=globex",
        "/conversations?tenant=globex&user=g1",
        "/verify",
        "/access-log",
    ]
    missing = client.get(conv("globex", "no-such-conversation"))
    assert missing.status_code == 404
    for headers in ({}, bearer("wrong-token-of-the-right-length"), {"authorization": "Basic x"}):
        for path in [*targets, "/no/such/page"]:
            answer = client.get(path, headers=headers)
            assert (answer.status_code, answer.text) == (404, missing.text), (path, headers)
    # tenant A's token asking for tenant B's data: by id, by list filter, export, fork tree
    acme = bearer(ACME_TOKEN)
    missing_for_acme = client.get(conv("acme", "no-such-conversation"), headers=acme)
    assert missing_for_acme.status_code == 404
    for path in [
        *targets[:6],
        conv("acme", g),  # the right id under the principal's own tenant
        conv("acme", g, "/export"),
        "/conversations?tenant=no-such-tenant",
        "/access-log",  # all-tenant principals only
    ]:
        answer = client.get(path, headers=acme)
        assert (answer.status_code, answer.text) == (404, missing_for_acme.text), path
    listing = client.get("/conversations", headers=acme).text
    assert g not in listing and seeded.root in listing
    forks = client.get(conv("acme", seeded.root, "/forks"), headers=acme).text
    assert g not in forks
    # and the owner sees it
    assert client.get(conv("globex", g), headers=bearer(GLOBEX_TOKEN)).status_code == 200


def test_login_sets_a_strict_httponly_cookie_and_logout_ends_it(
    app_client: tuple[TestClient, Path],
) -> None:
    client, log = app_client
    denied = client.post("/login", data={"token": "not-a-token-at-all-000"})
    assert denied.status_code == 401 and "not valid" in denied.text
    assert "convostore_session" not in denied.headers.get("set-cookie", "")
    foreign = client.post(
        "/login", data={"token": ACME_TOKEN}, headers={"origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    signed = client.post("/login", data={"token": ACME_TOKEN}, follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/conversations"
    cookie = signed.headers["set-cookie"]
    assert cookie.startswith("convostore_session=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    session_id = cookie.split(";")[0].split("=", 1)[1]
    assert ACME_TOKEN not in cookie and session_id not in signed.headers["location"]
    assert client.get("/conversations").status_code == 200  # the cookie jar carries it
    assert client.post("/logout", follow_redirects=False).status_code == 303
    client.cookies.set("convostore_session", session_id)
    assert client.get("/conversations").status_code == 404
    text = log.read_text()
    assert ACME_TOKEN not in text and session_id not in text
    actions = [(e["principal"], e["action"], e["outcome"]) for e in log_entries(log)]
    assert (None, "login", "denied") in actions
    assert ("ann", "login", "ok") in actions and ("ann", "logout", "ok") in actions


def test_security_headers_on_every_answer(
    app_client: tuple[TestClient, Path], seeded: Seeded
) -> None:
    client, _ = app_client
    answers = [
        client.get("/login"),
        client.get(conv("acme", seeded.root), headers=bearer(ROOT_TOKEN)),
        client.get(conv("acme", seeded.root, "/export"), headers=bearer(ROOT_TOKEN)),
        client.get("/nothing"),
        client.delete("/conversations"),
        client.get("/static/style.css"),
    ]
    for answer in answers:
        csp = answer.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src" not in csp  # no script at all
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
    assert answers[1].headers["cache-control"] == "no-store"


def test_no_write_route_exists(app_client: tuple[TestClient, Path], seeded: Seeded) -> None:
    client, _ = app_client
    store = open_existing(seeded.url)
    try:
        before = [
            transfer.load(store, r).fingerprint() for r in transfer.iter_records(store, tenant=None)
        ]
    finally:
        store.close()
    paths = [
        "/",
        "/conversations",
        conv("acme", seeded.root),
        conv("acme", seeded.root, "/forks"),
        conv("acme", seeded.root, "/export"),
        conv("acme", seeded.root, "/case"),
        conv("acme", seeded.root, "/turns/1"),
        conv("acme", seeded.root, "/fork"),
        conv("acme", seeded.root, "/send"),
        "/verify",
        "/access-log",
        "/static/style.css",
        "/import",
        "/purge",
        "/login",
        "/logout",
    ]
    for path in paths:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            if method == "POST" and path in ("/login", "/logout"):
                continue
            answer = client.request(method, path, headers=bearer(ROOT_TOKEN), json={"x": 1})
            assert answer.status_code in (404, 405), (method, path, answer.status_code)
    store = open_existing(seeded.url)
    try:
        after = [
            transfer.load(store, r).fingerprint() for r in transfer.iter_records(store, tenant=None)
        ]
    finally:
        store.close()
    assert after == before


def test_the_web_package_has_no_write_or_api_code_path() -> None:
    reader_methods = {n for n in dir(ReadOnlyStore) if not n.startswith("_")}
    assert reader_methods == {
        "as_store",
        "close",
        "encrypted",
        "get_conversation",
        "get_listed",
        "get_pending",
        "list_checked",
        "list_conversations",
        "list_outbox",
        "list_pending",
        "load_compactions",
        "load_steps",
        "load_turns",
    }
    forbidden = {
        "append_turn",
        "begin_turn",
        "update_pending",
        "claim_pending",
        "release_pending",
        "add_outbox",
        "update_outbox",
        "remove_outbox",
        "create_conversation",
        "update_conversation",
        "delete_conversation",
        "purge",
        "send",  # (and `stream`: reached only through a Conversation, never imported here)
        "fork",
        "import_bundles",
        "copy",
        "reconcile",
        "rotate_keys",
    }
    for source in [*WEB.glob("*.py"), WEB.parent / "cli" / "_web.py"]:
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert node.attr not in forbidden, (source.name, node.attr)
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                assert "client" not in module and "conversation" not in module, source.name
                assert not {a.name for a in node.names} & {"InteractionsClient", "Conversations"}
        assert "GEMINI_API_KEY" not in source.read_text()


# --------------------------------------------------------------------------- the access log


def test_access_log_records_reads_and_shows_them_to_all_tenant_principals(
    app_client: tuple[TestClient, Path], seeded: Seeded
) -> None:
    client, log = app_client
    acme = bearer(ACME_TOKEN)
    client.get(conv("acme", seeded.root), headers=acme)
    client.get(conv("acme", seeded.root, "/export"), headers=acme)
    client.get(conv("acme", seeded.tools, "/case"), headers=acme)
    client.get(conv("globex", seeded.globex), headers=acme)  # refused: not logged as a read
    client.get(conv("acme", "ghost"), headers=acme)
    client.get("/conversations?user=u1", headers=acme)
    entries = log_entries(log)
    seen = [(e["principal"], e["action"], e["conversation_id"], e["outcome"]) for e in entries]
    assert ("ann", "open", seeded.root, "ok") in seen
    assert ("ann", "export", seeded.root, "ok") in seen
    assert ("ann", "case_file", seeded.tools, "ok") in seen
    assert ("ann", "open", "ghost", "not_found") in seen
    assert ("ann", "list", None, "ok") in seen
    assert all(e["time"].endswith("+00:00") and e["client"] for e in entries)
    assert ACME_TOKEN not in log.read_text()
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    page = client.get("/access-log", headers=bearer(ROOT_TOKEN)).text
    assert "case_file" in page and seeded.tools in page and "ann" in page


def test_access_log_pages_back_through_a_long_file(tmp_path: Path) -> None:
    log = AccessLog(tmp_path / "a.jsonl")
    for i in range(250):
        log.write(principal="p", action="open", detail=f"{i:03d}" + "x" * (i % 50))
    got: list[str] = []
    before = None
    while True:
        page = log.read_back(before=before, limit=100)
        got.extend(e.data["detail"][:3] for e in page)
        if len(page) < 100:
            break
        before = page[-1].offset
    assert got == [f"{i:03d}" for i in reversed(range(250))]


# --------------------------------------------------------------------------- verification


def test_a_tampered_conversation_is_flagged_at_its_turn(
    app_client: tuple[TestClient, Path], seeded: Seeded
) -> None:
    client, _ = app_client
    auth = bearer(ROOT_TOKEN)
    assert "Verified intact" in client.get(conv("acme", seeded.tamper), headers=auth).text
    tamper_step(seeded.url, seeded.tamper, 3, "Remember the number 42.")
    page = client.get(conv("acme", seeded.tamper), headers=auth).text
    assert "Verification failed at turn 2" in page
    assert "audit hash mismatch" in page
    assert re.search(r'class="turn flagged" id="turn-2"', page)
    assert "Remember the number 42." in page  # shown as stored, flagged
    client.get("/verify?run=1", headers=auth)
    for _ in range(200):
        status = client.get("/verify", headers=auth).text
        if "verified</strong>" in status:
            break
        time.sleep(0.05)
    assert "6 of 7 verified" in status
    assert seeded.tamper in status


# --------------------------------------------------------------------------- lists


def test_list_filters(app_client: tuple[TestClient, Path], seeded: Seeded) -> None:
    client, _ = app_client
    auth = bearer(ROOT_TOKEN)

    def ids(query: str) -> set[str]:
        page = client.get(f"/conversations?{query}", headers=auth)
        assert page.status_code == 200, page.text
        return set(re.findall(r'href="/t/[^/]+/c/([^"/]+)"', page.text))

    acme = {seeded.root, seeded.fork, seeded.grandchild, seeded.tools, seeded.tamper}
    acme.add(seeded.imported)
    assert ids("tenant=acme") == acme
    assert ids("") == acme | {seeded.globex}
    assert ids("tenant=acme&user=u1") == {seeded.root, seeded.fork, seeded.grandchild}
    assert ids("tenant=acme&mode=stateless") == {seeded.imported}
    assert ids("mode=auto&model=gemini-3-flash-preview") == acme - {seeded.imported} | {
        seeded.globex
    }
    assert ids("model=other") == set()
    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)
    assert ids(f"from={today}&to={today}") >= {seeded.root, seeded.globex}
    assert ids(f"to={yesterday}") == set()
    assert ids(f"from={today + timedelta(days=1)}") == set()
    assert ids("flag=chain_break") == {seeded.imported}
    assert ids("flag=failed") == {seeded.imported}
    assert ids("flag=chain_break&flag=failed") == {seeded.imported}
    assert ids("flag=compaction") == set()
    for bad in ("from=yesterday", "mode=sometimes", "flag=odd", "user=a%20b", "cursor=zzz"):
        answer = client.get(f"/conversations?{bad}", headers=auth)
        assert answer.status_code == 400, bad


def test_compaction_flag_follows_turn_reasons() -> None:
    base = {"conversation_id": "c", "mode_used": "stateless", "status": "completed"}
    plain = TurnRecord(seq=1, reason="chained", **base)  # type: ignore[arg-type]
    later = TurnRecord.model_construct(seq=2, reason="compaction", **base)
    assert q.turn_flags([plain]) == set()
    assert q.turn_flags([plain, later]) == {"compaction"}
    pending = plain.model_copy(update={"status": "in_progress"})
    assert q.turn_flags([pending]) == {"failed"}
    assert q.turn_flags([plain.model_copy(update={"status": "requires_action"})]) == set()


def test_keyset_paging_of_lists_and_transcripts(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "many.db")
    store = cs.open_store(url)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(130):
        at = start + timedelta(minutes=i // 2)  # pairs share a created_at
        store.create_conversation(
            ConversationRecord(
                id=f"c{i:03d}",
                tenant="acme",
                model="m",
                mode="server" if i % 10 == 0 else "auto",
                created_at=at,
                updated_at=at,
            )
        )
    record, turns, steps = imported_conversation("long", tenant="acme", turns=60, statuses={})
    store.create_conversation(record, turns=turns, steps=steps)
    with TestClient(make_app(store, tmp_path / "log")) as client:
        seen: list[str] = []
        path = "/conversations?tenant=acme"
        while path:
            page = client.get(path, headers=bearer(ACME_TOKEN)).text
            seen.extend(re.findall(r'href="/t/acme/c/([^"/]+)"', page))
            more = re.search(r'href="(/conversations\?[^"]*cursor=[^"]+)"', page)
            path = more.group(1).replace("&amp;", "&") if more else ""
        assert sorted(seen) == sorted([f"c{i:03d}" for i in range(130)] + ["long"])
        assert len(seen) == len(set(seen))
        # a filter that matches few: pages still hold their matches, in order
        server = client.get("/conversations?tenant=acme&mode=server", headers=bearer(ACME_TOKEN))
        found = re.findall(r'href="/t/acme/c/([^"/]+)"', server.text)
        assert found == [f"c{i:03d}" for i in range(120, -1, -10)]
        # the transcript pages by turns
        first = client.get(conv("acme", "long"), headers=bearer(ACME_TOKEN)).text
        assert 'id="turn-1"' in first and 'id="turn-25"' in first and 'id="turn-26"' not in first
        assert "Verified intact" in first
        later = client.get(conv("acme", "long") + "?after=50", headers=bearer(ACME_TOKEN)).text
        assert 'id="turn-51"' in later and 'id="turn-60"' in later and "Later turns" not in later
        assert "?after=25" in later
        case = client.get(conv("acme", "long", "/case"), headers=bearer(ACME_TOKEN)).text
        assert 'id="turn-1"' in case and 'id="turn-60"' in case
    reader = ReadOnlyStore(cs.open_store(url))
    try:
        # a walk stops at its budget and says where to go on
        first_page = q.scan(
            reader, tenant="acme", filters=q.Filters(model="none"), budget=50, page_size=10
        )
        assert first_page.rows == [] and first_page.budget_spent and first_page.examined == 50
        rest = q.scan(
            reader,
            tenant="acme",
            filters=q.Filters(model="none"),
            cursor=first_page.next_cursor,
            budget=500,
        )
        assert rest.examined == 131 - 50 and rest.next_cursor is None
    finally:
        reader.close()


# --------------------------------------------------------------------------- forks


def test_fork_tree_in_both_directions_and_a_deleted_parent(
    tmp_path: Path, emulator_server: Any
) -> None:
    url = sqlite_url(tmp_path / "forks.db")
    seeded = seed(url, emulator_server.url)
    with TestClient(make_app(open_existing(url), tmp_path / "log")) as client:
        auth = bearer(ACME_TOKEN)
        page = client.get(conv("acme", seeded.grandchild), headers=auth).text
        assert f'Forked from <a class="mono" href="/t/acme/c/{seeded.fork}">' in page
        assert "at turn 2" in page
        for start in (seeded.root, seeded.fork, seeded.grandchild):
            tree = client.get(conv("acme", start, "/forks"), headers=auth).text
            tree = tree[tree.index('<ul class="tree">') :]
            # root, then its fork, then the fork's fork, nested in that order
            at = [
                tree.index(f">{cid}</a>") for cid in (seeded.root, seeded.fork, seeded.grandchild)
            ]
            assert at == sorted(at), start
            assert tree.count("<ul>") == 2
            assert "forked at turn 1" in tree and "forked at turn 2" in tree
        store = cs.open_store(url)
        store.delete_conversation(seeded.root, tenant="acme")
        store.close()
        tree = client.get(conv("acme", seeded.grandchild, "/forks"), headers=auth).text
        assert "(deleted)" in tree and seeded.root in tree and seeded.grandchild in tree


# --------------------------------------------------------------------------- encryption


def test_encrypted_store_and_key_problems_per_conversation(
    tmp_path: Path, emulator_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqlite_url(tmp_path / "enc.db")
    first = cs.KeyRing.generate("k1")
    monkeypatch.setenv("CONVOSTORE_KEYS", first)
    seeded = seed(url, emulator_server.url, store=open_existing(url, create=True))
    # one more conversation, its data key wrapped under a second key the server will not have
    monkeypatch.setenv("CONVOSTORE_KEYS", cs.KeyRing.generate("k2"))
    store = open_existing(url)
    with cs.InteractionsClient(api_key="k", base_url=emulator_server.url) as client:
        late = cs.Conversations(store, client).create(tenant="acme", user="u9")
        late.send("Written under the second key.")
    store.close()
    # served with only the first key: the last conversation's key is missing
    monkeypatch.setenv("CONVOSTORE_KEYS", first)
    with TestClient(make_app(open_existing(url), tmp_path / "log")) as client:
        auth = bearer(ROOT_TOKEN)
        listing = client.get("/conversations?tenant=acme", headers=auth)
        assert listing.status_code == 200
        assert late.id in listing.text and "key problem" in listing.text
        assert listing.text.count("key problem") == 1
        good = client.get(conv("acme", seeded.root), headers=auth).text
        assert "Verified intact" in good and "I have 2 dogs" in good
        bad = client.get(conv("acme", late.id), headers=auth)
        assert bad.status_code == 200
        assert "cannot be read" in bad.text and "k2" in bad.text
        assert "Written under the second key." not in bad.text
        export = client.get(conv("acme", late.id, "/export"), headers=auth)
        assert export.status_code == 500 and "Cannot export" in export.text
        case = client.get(conv("acme", late.id, "/case"), headers=auth)
        assert case.status_code == 200 and "cannot be read" in case.text
        assert client.get(conv("acme", seeded.tools, "/export"), headers=auth).status_code == 200
    # with a wrong key under the first id, every conversation reports it, none crashes
    monkeypatch.setenv("CONVOSTORE_KEYS", cs.KeyRing.generate("k1"))
    with TestClient(make_app(open_existing(url), tmp_path / "log")) as client:
        listing = client.get("/conversations?tenant=acme", headers=bearer(ROOT_TOKEN)).text
        assert listing.count("key problem") == 7
        page = client.get(conv("acme", seeded.root), headers=bearer(ROOT_TOKEN))
        assert page.status_code == 200 and "cannot be read" in page.text


# --------------------------------------------------------------------------- every backend


@pytest.mark.parametrize("backend", ["mysql", "redis", "memory"])
def test_other_backends(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, emulator_server: Any
) -> None:
    if backend == "memory":
        store = cs.open_store("memory://")
        seeded = seed("memory://", emulator_server.url, store=store)
        _browse(store, seeded, tmp_path)
        return
    if backend == "redis":
        base = request.getfixturevalue("redis_url")
        url = f"{base}?key_prefix={request.getfixturevalue('redis_prefix')}"
        seeded = seed(url, emulator_server.url)
        _browse(open_existing(url), seeded, tmp_path)
        return
    with migrated_database(request.getfixturevalue("mysql_url"), "web") as url:
        seeded = seed(url, emulator_server.url)
        _browse(open_existing(url), seeded, tmp_path)


def _browse(store: Any, seeded: Seeded, tmp_path: Path) -> None:
    with TestClient(make_app(store, tmp_path / "log")) as client:
        auth = bearer(ROOT_TOKEN)
        listing = client.get("/conversations?tenant=acme", headers=auth).text
        assert seeded.root in listing and seeded.imported in listing
        assert "Verified intact" in client.get(conv("acme", seeded.tools), headers=auth).text
        tree = client.get(conv("acme", seeded.root, "/forks"), headers=auth).text
        assert seeded.grandchild in tree
        export = client.get(conv("acme", seeded.root, "/export"), headers=auth)
        assert transfer.read_export(export.text.splitlines())[0].record.id == seeded.root
        assert client.get("/conversations?flag=failed", headers=auth).text.count("/c/") == 1


# --------------------------------------------------------------------------- PostgreSQL role


def test_serving_through_a_read_only_postgresql_role(
    postgres_url: str, emulator_server: Any, tmp_path: Path
) -> None:

    with migrated_database(postgres_url, "role") as url:
        seeded = seed(url, emulator_server.url)
        _serve_as_reader(url, seeded, tmp_path)


def _serve_as_reader(url: str, seeded: Seeded, tmp_path: Path) -> None:
    import sqlalchemy as sa

    role = f"convostore_auditor_{os.getpid()}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(sa.text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"))
    try:
        base, _, rest = url.partition("://")
        reader_url = f"{base}://{role}@{rest.split('@', 1)[1]}"
        with TestClient(make_app(open_existing(reader_url), tmp_path / "log")) as client:
            auth = bearer(ROOT_TOKEN)
            assert seeded.root in client.get("/conversations", headers=auth).text
            page = client.get(conv("acme", seeded.root), headers=auth).text
            assert "Verified intact" in page
            assert client.get(conv("acme", seeded.root, "/export"), headers=auth).status_code == 200
        engine = sa.create_engine(reader_url)
        try:
            with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError):
                conn.execute(sa.text("DELETE FROM steps"))
        finally:
            engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))
        admin.dispose()


# --------------------------------------------------------------------------- the command


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_command_serves_with_a_token(tmp_path: Path, emulator_server: Any) -> None:
    url = sqlite_url(tmp_path / "served.db")
    seeded = seed(url, emulator_server.url)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVOSTORE_")}
    env["CONVOSTORE_WEB_TOKENS"] = TOKENS_JSON
    script = str(Path(sys.executable).with_name("convostore"))
    log = tmp_path / "reads.jsonl"
    proc = subprocess.Popen(
        [script, "serve", "--store", url, "--port", str(port), "--access-log", str(log)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                httpx.get(base + "/login", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        page = httpx.get(base + conv("acme", seeded.root), headers=bearer(ACME_TOKEN))
        assert page.status_code == 200 and "Verified intact" in page.text
        assert httpx.get(base + conv("acme", seeded.root)).status_code == 404
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert "read-only" in err and ACME_TOKEN not in out + err
    assert "Traceback" not in err
    assert [e["action"] for e in log_entries(log)] == ["open"]


def test_a_long_conversation_is_verified_in_the_background(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "long.db")
    store = cs.open_store(url)
    record, turns, steps = imported_conversation("long", tenant="acme", turns=1001, statuses={})
    store.create_conversation(record, turns=turns, steps=steps)
    with TestClient(make_app(store, tmp_path / "log")) as client:
        first = client.get(conv("acme", "long"), headers=bearer(ACME_TOKEN)).text
        assert "Verifying…" in first and "2,002 steps" in first
        assert '<meta http-equiv="refresh" content="2">' in first
        assert 'id="turn-25"' in first  # the transcript does not wait for it
        for _ in range(200):
            page = client.get(conv("acme", "long"), headers=bearer(ACME_TOKEN)).text
            if "Verifying…" not in page:
                break
            time.sleep(0.05)
        assert "Verified intact" in page and "http-equiv" not in page
    # a change beneath the store is found once the result is older than max_age
    tamper_step(url, "long", 2001, "altered")
    reader = ReadOnlyStore(cs.open_store(url))
    checks = q.Verifications(reader, inline_steps=10, max_age=0)
    try:
        listed = reader.get_listed("long", tenant="acme")
        assert checks.check(listed) == (None, True)
        checks.start(listed)
        checks.start(listed)  # one at a time
        for _ in range(200):
            result, running = checks.check(listed)
            if result is not None:
                break
            time.sleep(0.05)
        assert result is not None and result.first_bad_seq == 1001
        assert running  # max_age=0: every look asks for a new check, showing the last verdict
        small = q.Verifications(reader, inline_steps=5000)
        verdict, running = small.check(listed)
        assert verdict is not None and not verdict.intact and not running
    finally:
        checks.close()
        reader.close()


def test_the_web_benchmark_runs_end_to_end() -> None:
    """benchmarks/web.py at a tiny size (its figures are not checked here)."""
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/web.py",
            "--conversations",
            "300",
            "--long-turns",
            "40",
            "--only",
            "sqlite",
            "--repeat",
            "1",
        ],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "| sqlite | list, first page (all tenants) |" in done.stdout
    assert "| sqlite | transcript of 80 steps, first page |" in done.stdout
    assert "1 walked" in done.stdout


def test_an_oversized_sign_in_is_refused_without_reading_it(
    app_client: tuple[TestClient, Path],
) -> None:
    client, _ = app_client
    answer = client.post("/login", content=b"token=" + ACME_TOKEN.encode() + b"&x=" + b"a" * 20000)
    assert answer.status_code == 401 and "convostore_session" not in str(answer.headers)
