"""A worker that stalls mid-turn past its lease (a GC pause, a stopped VM) while another worker
takes its turn over, then comes back: the late original must neither duplicate the turn, nor
leave on the server an answer nobody will ever reference, nor delete the one the other
worker adopted.

The same interleavings run in ``scripts/soak.py``'s durable run with real processes; here
they are pinned in one process (two ``Conversations`` on one store, the stall an event) so
each fails on its own.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

import convostore as cs
from convostore.emulator import Emulator
from convostore.models import LOST_STATUS

pytestmark = pytest.mark.reliability

KEY = "late-key-0123456789"
LEASE = timedelta(milliseconds=200)


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, make_store_url: Callable[[str], str]) -> str:
    return make_store_url(request.param)


@contextlib.contextmanager
def worker(store_url: str, emulator: Emulator, lease: timedelta) -> Iterator[cs.Conversations]:
    with (
        cs.InteractionsClient(api_key=KEY, base_url=emulator.url, max_retries=0) as client,
        cs.Conversations(store_url, client, lease=lease, poll_interval=0.02) as convos,
    ):
        yield convos


class Stall:
    """Stalls the worker inside ``method`` of its store (after the call when ``after``) until
    released; ``reached`` is set when it stalls."""

    def __init__(self, convos: cs.Conversations, method: str, *, after: bool = True) -> None:
        self.reached, self.release = threading.Event(), threading.Event()
        store: Any = convos.store
        real = getattr(store, method)

        def stalled(*args: Any, **kwargs: Any) -> Any:
            if not after:
                self._stall()
            result = real(*args, **kwargs)
            if after:
                self._stall()
            return result

        setattr(store, method, stalled)

    def _stall(self) -> None:
        if not self.reached.is_set():
            self.reached.set()
            assert self.release.wait(30)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def recover_after_lease(store_url: str, emulator: Emulator, tenant: str) -> cs.RecoveryReport:
    with worker(store_url, emulator, timedelta(seconds=30)) as other:
        threading.Event().wait(LEASE.total_seconds() + 0.1)
        return other.recover(tenant=tenant)


def test_late_original_of_an_adopted_unary_turn_returns_the_adopted_turn(
    store_url: str, emulator: Emulator
) -> None:
    with worker(store_url, emulator, LEASE) as convos:
        conv = convos.create(tenant="late", mode="server")
        stall = Stall(convos, "append_turn", after=False)  # answered and recorded
        thread, out = in_thread(lambda: conv.send("slow one"))
        assert stall.reached.wait(10)
        report = recover_after_lease(store_url, emulator, "late")
        assert report.adopted == [f"{conv.id}#1"]
        stall.release.set()
        thread.join()
        assert isinstance(out[0], cs.Turn)
        turns = conv.turns()
        assert [(t.seq, t.interaction_id) for t in turns] == [(1, out[0].interaction_id)]
        assert out[0].interaction_id in emulator.interactions


def test_late_original_of_a_lost_turn_leaves_nothing_on_the_server(
    store_url: str, emulator: Emulator
) -> None:
    with worker(store_url, emulator, LEASE) as convos:
        conv = convos.create(tenant="late", mode="server")
        first = conv.send("first")
        stall = Stall(convos, "begin_turn")  # pending written, request not sent
        before = set(emulator.interactions)
        thread, out = in_thread(lambda: conv.send("slow one"))
        assert stall.reached.wait(10)
        report = recover_after_lease(store_url, emulator, "late")
        assert report.lost == [f"{conv.id}#2"]
        stall.release.set()
        thread.join()
        assert isinstance(out[0], cs.LeaseLost)
        assert [t.status for t in conv.turns()] == ["completed", LOST_STATUS]
        assert conv.refresh().head_interaction_id == first.interaction_id
        # the answer the late original received belongs to no turn: it must not stay
        assert set(emulator.interactions) - before == set()


def test_late_original_of_an_adopted_stream_ends_with_the_adopted_turn(
    store_url: str, emulator: Emulator
) -> None:
    with worker(store_url, emulator, LEASE) as convos:
        conv = convos.create(tenant="late", mode="server")
        resume = threading.Event()
        reached = threading.Event()

        def stream() -> cs.Turn | None:
            with conv.stream("slow stream") as events:
                for n, _ in enumerate(events):
                    if n == 1:  # the interaction's id is recorded at the first event
                        reached.set()
                        assert resume.wait(30)
            return events.turn

        thread, out = in_thread(stream)
        assert reached.wait(10)
        report = recover_after_lease(store_url, emulator, "late")
        assert report.adopted == [f"{conv.id}#1"]
        adopted = conv.turns()[0]
        resume.set()
        thread.join()
        # the adopted answer stays on the server (it is the conversation's head) ...
        assert adopted.interaction_id in emulator.interactions
        # ... and the late stream ends with that turn (or a LeaseLost), never an internal error
        assert not isinstance(out[0], cs._core.lifecycle.LifecycleError), repr(out[0])
        assert isinstance(out[0], cs.Turn | cs.LeaseLost), repr(out[0])
        assert [t.seq for t in conv.turns()] == [1]
