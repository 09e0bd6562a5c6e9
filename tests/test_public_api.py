"""The public surface: names of DESIGN.md §3, a sorted ``__all__``, and asyncio/sync twins
with the same method names."""

from __future__ import annotations

import inspect

import pytest

import convostore as cs

DESIGN_NAMES = [
    "AsyncConversation",
    "AsyncConversations",
    "AsyncInteractionsClient",
    "Conversation",
    "Conversations",
    "ConvostoreError",
    "ConcurrentTurnError",
    "InteractionsClient",
    "open_async_store",
    "open_store",
]

TWINS = [
    ("AsyncConversations", "Conversations"),
    ("AsyncConversation", "Conversation"),
    ("AsyncTurnStream", "TurnStream"),
    ("AsyncPendingTurn", "PendingTurn"),
    ("AsyncInteractionsClient", "InteractionsClient"),
    ("AsyncInteractionStream", "InteractionStream"),
    ("AsyncStore", "Store"),
    ("AsyncEncryptedStore", "EncryptedStore"),
]


def test_all_is_sorted_and_importable() -> None:
    assert cs.__all__ == sorted(cs.__all__)
    assert len(set(cs.__all__)) == len(cs.__all__)
    for name in cs.__all__:
        assert hasattr(cs, name), name


def test_design_names_are_public() -> None:
    assert set(DESIGN_NAMES) <= set(cs.__all__)
    from convostore.emulator import Emulator

    assert inspect.isclass(Emulator)


def test_every_public_class_and_function_is_documented() -> None:
    for name in cs.__all__:
        obj = getattr(cs, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


def _methods(cls: type) -> set[str]:
    names = {n for n in dir(cls) if not n.startswith("_") or n in ("__enter__", "__aenter__")}
    return {"close" if n == "aclose" else n for n in names} - {"__enter__", "__aenter__"}


@pytest.mark.parametrize(("async_name", "sync_name"), TWINS)
def test_twins_have_the_same_methods(async_name: str, sync_name: str) -> None:
    async_cls, sync_cls = getattr(cs, async_name), getattr(cs, sync_name)
    assert _methods(async_cls) == _methods(sync_cls)
    for name in _methods(sync_cls):
        sync_attr = getattr(sync_cls, name)
        async_attr = getattr(async_cls, "aclose" if name == "close" else name, None)
        if inspect.isfunction(sync_attr) and inspect.isfunction(async_attr):
            sync_params = list(inspect.signature(sync_attr).parameters)
            async_params = list(inspect.signature(async_attr).parameters)
            assert sync_params == async_params, name


def test_errors_share_one_root() -> None:
    for name in cs.__all__:
        obj = getattr(cs, name)
        if inspect.isclass(obj) and issubclass(obj, Exception):
            assert issubclass(obj, cs.ConvostoreError), name


def test_interaction_outcome_errors_are_public_api_errors() -> None:
    for name in ("InteractionFailed", "InteractionUnfinished"):
        assert name in cs.__all__
        error = getattr(cs, name)(interaction_id="i", status="x", errors=[])
        assert isinstance(error, cs.APIError)
        assert (error.interaction_id, error.status, error.errors) == ("i", "x", [])
