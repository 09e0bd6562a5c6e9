"""The auditor's web view: ``convostore serve``.

A small, read-only Starlette app over any store: the conversations of the tenants a principal
may read, transcripts with their verification, fork trees, retention, exports and case files,
and a log of every read. Install with ``pip install 'convostore[web]'``.

Layout: ``_auth`` (tokens and sessions), ``_reader`` (the read-only facade), ``_queries``
(bounded walks, verification, forks, retention), ``_access_log``, ``_render`` (HTML) and
``_app`` (the routes).
"""

from __future__ import annotations

from ._access_log import AccessLog
from ._app import COOKIE, create_app
from ._auth import Principal, Sessions, Tokens
from ._reader import ReadOnlyStore
from ._security import check_bind

__all__ = [
    "COOKIE",
    "AccessLog",
    "Principal",
    "ReadOnlyStore",
    "Sessions",
    "Tokens",
    "check_bind",
    "create_app",
]
