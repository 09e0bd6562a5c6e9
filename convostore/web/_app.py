"""The routes of the auditor's web view (a Starlette app).

Every route but ``/login``, ``/logout`` and the style sheet reads as a principal; a request
without one, a conversation of a tenant the principal may not read, a tenant outside its
grant and a missing conversation all get the same "not found" page, byte for byte. Only
``/login`` and ``/logout`` take POST; every other method on every path is refused by the
router (405 or 404). Store work runs in Starlette's thread pool (the endpoints are plain
functions over the sync store).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from io import StringIO
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from .. import _transfer as transfer
from .._exceptions import (
    ConfigurationError,
    ConversationNotFound,
    ConvostoreError,
    StoreError,
    ValidationError,
)
from .._sync.store import Store
from ..models import MODES, ConversationRecord, StoredStep, TurnRecord, check_id
from . import _queries as q
from . import _render as render
from . import _transcript as transcript_html
from ._access_log import AccessLog
from ._auth import Principal, Sessions, Tokens
from ._reader import ReadOnlyStore
from ._security import SecurityHeaders, check_bind, same_origin

__all__ = ["COOKIE", "check_bind", "create_app"]

COOKIE = "convostore_session"
PAGE_TURNS = 25
"""Turns per transcript page."""


@dataclass
class _Web:
    reader: ReadOnlyStore
    log: AccessLog
    tokens: Tokens | None
    sessions: Sessions
    anonymous: Principal | None
    runs: q.VerifyRuns
    verifications: q.Verifications

    # ------------------------------------------------------------------ who is asking

    def principal(self, request: Request) -> Principal | None:
        if self.anonymous is not None:
            return self.anonymous
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip() or self.tokens is None:
                return None
            return self.tokens.authenticate(token.strip())
        session_id = request.cookies.get(COOKIE)
        if session_id:
            return self.sessions.get(session_id)
        return None

    def record(self, request: Request, principal: Principal | None, action: str, **kw: Any) -> None:
        client = request.client.host if request.client else None
        self.log.write(
            principal=principal.name if principal else None, action=action, client=client, **kw
        )

    def not_found(self, principal: Principal | None) -> HTMLResponse:
        if principal is None:
            page = render.message_page(
                "Not found",
                "There is nothing here, or nothing you may read. Sign in at /login.",
                principal=None,
            )
        else:
            page = render.message_page(
                "Not found",
                "There is nothing here, or nothing you may read.",
                principal=principal,
                store_url=self.reader.url,
            )
        return HTMLResponse(page, status_code=404)

    def problem(self, principal: Principal | None, title: str, text: str, status: int) -> Response:
        page = render.message_page(title, text, principal=principal, store_url=self.reader.url)
        return HTMLResponse(page, status_code=status)


Endpoint = Callable[[Request], Response]


def _conversation_scope(request: Request, principal: Principal) -> tuple[str, str] | None:
    tenant = request.path_params["tenant"]
    conversation_id = request.path_params["conversation_id"]
    try:
        check_id(tenant, "tenant")
        check_id(conversation_id, "conversation id")
    except ValidationError:
        return None
    if not principal.may_read(tenant):
        return None
    return tenant, conversation_id


def _day(value: str | None, what: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ValidationError(f"{what}: expected a date YYYY-MM-DD, got {value[:20]!r}") from None


def _filters(request: Request) -> q.Filters:
    params = request.query_params
    user = params.get("user") or None
    if user is not None:
        check_id(user, "user")
    end = _day(params.get("to"), "to")
    mode = params.get("mode") or None
    if mode is not None and mode not in MODES:
        raise ValidationError(f"mode must be one of {', '.join(MODES)}")
    flags = frozenset(params.getlist("flag"))
    unknown = flags - set(q.FLAGS)
    if unknown:
        raise ValidationError(f"unknown flag(s): {', '.join(sorted(unknown))}")
    model = params.get("model") or None
    if model is not None and len(model) > 200:
        raise ValidationError("model is longer than 200 characters")
    return q.Filters(
        user=user,
        created_from=_day(params.get("from"), "from"),
        created_to=end + timedelta(days=1) if end else None,
        mode=mode,
        model=model,
        flags=flags,
    )


def _history(
    reader: ReadOnlyStore, record: ConversationRecord, *, after: int, limit: int | None
) -> list[tuple[TurnRecord, list[StoredStep]]]:
    turns = reader.load_turns(record.id, tenant=record.tenant, after_seq=after, limit=limit)
    if limit is None:
        steps = reader.load_steps(record.id, tenant=record.tenant)
        by_turn: dict[int, list[StoredStep]] = {}
        for step in steps:
            by_turn.setdefault(step.turn_seq, []).append(step)
        return [(t, by_turn.get(t.seq, [])) for t in turns]
    return [(t, reader.load_steps(record.id, tenant=record.tenant, turn=t.seq)) for t in turns]


def _routes(web: _Web) -> list[Route]:
    def reading(handler: Callable[[Request, Principal], Response]) -> Endpoint:
        def endpoint(request: Request) -> Response:
            principal = web.principal(request)
            if principal is None:
                return web.not_found(None)
            try:
                return handler(request, principal)
            except ValidationError as exc:
                return web.problem(principal, "Bad request", str(exc), 400)
            except StoreError as exc:
                return web.problem(principal, "Store unavailable", str(exc), 503)

        return endpoint

    def conversation(
        handler: Callable[[Request, Principal, ConversationRecord], Response], action: str
    ) -> Endpoint:
        def with_record(request: Request, principal: Principal) -> Response:
            scope = _conversation_scope(request, principal)
            if scope is None:
                return web.not_found(principal)
            tenant, conversation_id = scope
            try:
                record = web.reader.get_listed(conversation_id, tenant=tenant)
            except ConversationNotFound:
                web.record(
                    request,
                    principal,
                    action,
                    tenant=tenant,
                    conversation_id=conversation_id,
                    outcome="not_found",
                )
                return web.not_found(principal)
            web.record(request, principal, action, tenant=tenant, conversation_id=conversation_id)
            return handler(request, principal, record)

        return reading(with_record)

    def full(record: ConversationRecord) -> tuple[ConversationRecord, str | None]:
        """The decrypted record, or the listed one and why it cannot be decrypted."""
        if not web.reader.encrypted:
            return record, None
        try:
            return web.reader.get_conversation(record.id, tenant=record.tenant), None
        except ConversationNotFound:
            raise
        except StoreError as exc:
            return record, f"This conversation cannot be read: {exc}"

    # ------------------------------------------------------------------ pages

    def home(request: Request) -> Response:
        target = "/conversations" if web.principal(request) else "/login"
        return RedirectResponse(target, status_code=303)

    def list_conversations(request: Request, principal: Principal) -> Response:
        tenant = request.query_params.get("tenant") or None
        if tenant is not None:
            try:
                check_id(tenant, "tenant")
            except ValidationError:
                return web.not_found(principal)
            if not principal.may_read(tenant):
                return web.not_found(principal)
        elif not principal.all_tenants:
            tenant = sorted(principal.tenants)[0]
        filters = _filters(request)
        cursor = request.query_params.get("cursor") or None
        page = q.scan(web.reader, tenant=tenant, filters=filters, cursor=cursor)
        detail = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "cursor"])
        web.record(request, principal, "list", tenant=tenant, detail=detail or None)
        next_query = None
        if page.next_cursor is not None:
            kept = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
            next_query = urlencode([*kept, ("cursor", page.next_cursor)])
        html = render.list_page(
            principal,
            tenant=tenant,
            filters=filters,
            page=page,
            next_query=next_query,
            store_url=web.reader.url,
        )
        return HTMLResponse(html)

    def transcript(request: Request, principal: Principal, listed: ConversationRecord) -> Response:
        try:
            after = max(0, int(request.query_params.get("after", "0")))
        except ValueError:
            raise ValidationError("after must be a turn number") from None
        record, error = full(listed)
        verification, verifying = web.verifications.check(listed)
        turns: list[tuple[TurnRecord, list[StoredStep]]] = []
        if error is None:
            try:
                turns = _history(web.reader, record, after=after, limit=PAGE_TURNS)
            except StoreError as exc:
                if isinstance(exc, ConversationNotFound):
                    return web.not_found(principal)
                error = f"This conversation cannot be read: {exc}"
        last = turns[-1][0].seq if turns else after
        html = transcript_html.transcript_page(
            principal,
            record,
            verification=verification,
            verifying=verifying,
            retention=q.retention(record),
            parent=q.forked_from(record),
            turns=turns,
            error=error,
            prev_after=max(0, after - PAGE_TURNS) if after > 0 else None,
            next_after=last if error is None and last < record.turn_count else None,
            store_url=web.reader.url,
        )
        background = BackgroundTask(web.verifications.start, listed) if verifying else None
        return HTMLResponse(html, background=background)

    def forks(request: Request, principal: Principal, record: ConversationRecord) -> Response:
        tree = q.fork_tree(web.reader, record)
        return HTMLResponse(render.fork_page(principal, record, tree, store_url=web.reader.url))

    def export(request: Request, principal: Principal, record: ConversationRecord) -> Response:
        out = StringIO()
        try:
            transfer.export(web.reader.as_store(), out, [record])
        except ConversationNotFound:
            return web.not_found(principal)
        except StoreError as exc:
            return web.problem(principal, "Cannot export", f"{record.id}: {exc}", 500)
        return Response(
            out.getvalue(),
            media_type="application/x-ndjson; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{record.id}.jsonl"'},
        )

    def case_file(request: Request, principal: Principal, listed: ConversationRecord) -> Response:
        record, error = full(listed)
        verification = q.verify(web.reader, listed)
        turns: list[tuple[TurnRecord, list[StoredStep]]] = []
        if error is None:
            try:
                turns = _history(web.reader, record, after=0, limit=None)
            except StoreError as exc:
                if isinstance(exc, ConversationNotFound):
                    return web.not_found(principal)
                error = f"This conversation cannot be read: {exc}"
        html = transcript_html.case_file_page(
            principal,
            record,
            verification=verification,
            retention=q.retention(record),
            turns=turns,
            error=error,
            exported_at=datetime.now(UTC),
            store_url=web.reader.url,
        )
        return HTMLResponse(html)

    def verify_store(request: Request, principal: Principal) -> Response:
        if request.query_params.get("run"):
            _run, started = web.runs.start(principal)
            if started:
                scope = "all tenants" if principal.all_tenants else None
                web.record(request, principal, "verify_store", detail=scope)
            return RedirectResponse("/verify", status_code=303)
        run = web.runs.latest(principal)
        return HTMLResponse(render.verify_page(principal, run, store_url=web.reader.url))

    def access_log(request: Request, principal: Principal) -> Response:
        if not principal.all_tenants:
            return web.not_found(principal)
        raw = request.query_params.get("before")
        try:
            before = int(raw) if raw else None
        except ValueError:
            raise ValidationError("before must be a byte offset") from None
        web.record(request, principal, "access_log")
        entries = web.log.read_back(before=before, limit=100)
        next_before = entries[-1].offset if len(entries) == 100 and entries[-1].offset else None
        html = render.access_log_page(
            principal, entries, next_before=next_before, store_url=web.reader.url
        )
        return HTMLResponse(html)

    # ------------------------------------------------------------------ signing in

    def login_form(request: Request) -> Response:
        if web.principal(request) is not None:
            return RedirectResponse("/conversations", status_code=303)
        return HTMLResponse(render.login_page())

    async def login(request: Request) -> Response:
        if web.anonymous is not None:
            return RedirectResponse("/conversations", status_code=303)
        if not same_origin(request):
            return HTMLResponse(render.login_page("Sign in from this site."), status_code=403)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > 8192:  # a sign-in form is a few dozen bytes: read no further
                break
        fields = parse_qs(body.decode("utf-8", "replace")) if len(body) <= 8192 else {}
        token = (fields.get("token") or [""])[0].strip()
        principal = web.tokens.authenticate(token) if web.tokens and token else None
        if principal is None:
            await run_in_threadpool(web.record, request, None, "login", outcome="denied")
            return HTMLResponse(render.login_page("That token is not valid."), status_code=401)
        await run_in_threadpool(web.record, request, principal, "login")
        response = RedirectResponse("/conversations", status_code=303)
        response.set_cookie(
            COOKIE,
            web.sessions.open(principal),
            max_age=int(web.sessions.lifetime),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    def logout(request: Request) -> Response:
        if not same_origin(request):
            return Response(status_code=403)
        principal = web.principal(request)
        session_id = request.cookies.get(COOKIE)
        if session_id:
            web.sessions.close(session_id)
        if principal is not None:
            web.record(request, principal, "logout")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    css = resources.files(__package__).joinpath("style.css").read_bytes()

    def style(request: Request) -> Response:
        return Response(
            css, media_type="text/css", headers={"cache-control": "private, max-age=3600"}
        )

    return [
        Route("/", home, methods=["GET"]),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/static/style.css", style, methods=["GET"]),
        Route("/conversations", reading(list_conversations), methods=["GET"]),
        Route(
            "/t/{tenant}/c/{conversation_id}",
            conversation(transcript, "open"),
            methods=["GET"],
        ),
        Route(
            "/t/{tenant}/c/{conversation_id}/forks",
            conversation(forks, "forks"),
            methods=["GET"],
        ),
        Route(
            "/t/{tenant}/c/{conversation_id}/export",
            conversation(export, "export"),
            methods=["GET"],
        ),
        Route(
            "/t/{tenant}/c/{conversation_id}/case",
            conversation(case_file, "case_file"),
            methods=["GET"],
        ),
        Route("/verify", reading(verify_store), methods=["GET"]),
        Route("/access-log", reading(access_log), methods=["GET"]),
    ]


def create_app(
    store: Store,
    *,
    access_log: AccessLog,
    tokens: Tokens | None = None,
    no_auth: bool = False,
    sessions: Sessions | None = None,
) -> Starlette:
    """The web view over ``store``, opened through :class:`ReadOnlyStore`.

    Args:
        store: any sync store (an encrypted one included); closed when the app shuts down.
        access_log: where the auditors' reads are appended.
        tokens: who may sign in, and what they may read.
        no_auth: serve every tenant to anyone who can connect (bind to loopback only, see
            :func:`check_bind`); excludes ``tokens``.
        sessions: the session table (default: 30 min idle, 12 h at most).

    Raises:
        ConfigurationError: neither ``tokens`` nor ``no_auth``, or both.
    """
    if (tokens is None) == (not no_auth):
        raise ConfigurationError(
            "the web view needs tokens (a tokens file or CONVOSTORE_WEB_TOKENS) or, on "
            "loopback only, --no-auth"
            if tokens is None
            else "give tokens or no_auth, not both"
        )
    reader = ReadOnlyStore(store)
    web = _Web(
        reader=reader,
        log=access_log,
        tokens=tokens,
        sessions=sessions or Sessions(),
        anonymous=Principal("local", all_tenants=True) if no_auth else None,
        runs=q.VerifyRuns(reader),
        verifications=q.Verifications(reader),
    )

    def refused(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 404:
            return web.not_found(web.principal(request))
        return HTMLResponse(
            render.message_page(
                "Not allowed", "This view is read-only.", principal=web.principal(request)
            ),
            status_code=status,
            headers={"allow": exc.headers.get("allow", "")}
            if isinstance(exc, HTTPException) and exc.headers
            else None,
        )

    def failed(request: Request, exc: Exception) -> Response:
        return web.problem(web.principal(request), "Error", str(exc), 500)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        web.verifications.close()
        reader.close()

    app = Starlette(
        routes=_routes(web),
        exception_handlers={404: refused, 405: refused, ConvostoreError: failed},
        lifespan=lifespan,
    )
    app.add_middleware(SecurityHeaders)
    return app
