"""tidal.dataplane.frontend.serve's start-up hook: a serving process freezes its start-up heap
out of the cyclic collector once it is up, then runs the caller's on_start (its result passed
through, so a coroutine is still awaited by the server)."""

from __future__ import annotations

import gc

from tidal.dataplane.frontend import _freeze_then


def test_freeze_then_freezes_and_runs_on_start() -> None:
    calls: list[str] = []

    def on_start() -> str:
        calls.append("started")
        return "result"

    before = gc.get_freeze_count()
    try:
        out = _freeze_then(on_start, ["sockname"])
        assert calls == ["started"]
        assert out == "result"
        assert gc.get_freeze_count() > before  # objects alive now are frozen
    finally:
        gc.unfreeze()  # the test process must keep collecting everything


def test_freeze_then_without_on_start() -> None:
    try:
        assert _freeze_then(None) is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
