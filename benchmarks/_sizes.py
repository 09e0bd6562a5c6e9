"""How much each measurement does: the default run and the ``--quick`` smoke run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    append_turns: int = 1000
    append_window: int = 100
    durable_turns: int = 400
    load_steps: tuple[int, ...] = (100, 1000, 10_000)
    load_repeat: int = 9
    read_repeat: int = 60
    replay_steps: int = 1000
    replay_repeat: int = 40
    send_turns: int = 100
    many_conversations: int = 1000
    many_turns: int = 10
    concurrency: int = 50
    resume_samples: int = 200


DEFAULT = Sizes()
QUICK = Sizes(
    append_turns=200,
    append_window=20,
    durable_turns=60,
    load_steps=(100, 1000),
    load_repeat=5,
    read_repeat=15,
    replay_repeat=10,
    send_turns=6,
    many_conversations=60,
    concurrency=10,
    resume_samples=20,
)
