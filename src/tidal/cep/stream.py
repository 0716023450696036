"""Host CEP engines: pipelines of stages, where an operator as a service can sit anywhere.

`Stream` is the Flink-style host (``Stream(hub).serverless("fraud_flag").key_by("card")
.pattern(p).select(fn)``); `SaseEngine` runs a textual query (`tidal.cep.sase`). Both build a
`Pipeline`: events go through the stages in order; a `ServerlessStage` sends them to the
operator (through an `OperatorClient`) and later stages receive its results when the host
calls `pump()` / `finish()` on its own thread. Per-event errors (missing fields) are
recorded in `Pipeline.errors` and the pipeline keeps running.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from tidal.cep.client import OperatorClient
from tidal.cep.codec import Codec
from tidal.cep.nfa import NFA, Match, Pattern
from tidal.cep.store import open_store
from tidal.core.clock import Clock, MonotonicClock
from tidal.core.errors import TidalError

Event = dict[str, Any]


class Hub(Protocol):
    """Resolves an operator name to addresses (`NodeManager.request` or the HTTP API)."""

    def request(self, name: str) -> dict[str, Any]: ...


def connect(hub: Hub, name: str, clock: Clock | None = None) -> OperatorClient:
    """An `OperatorClient` for operator `name` (started by the hub if needed)."""
    a = hub.request(name)
    return OperatorClient(
        open_store(a["store"]),
        a["in"],
        a["out"],
        Codec(a["codec"]),
        mode=a["mode"],
        batch=int(a["batch"]),
        flush_ms=float(a["flush_ms"]),
        clock=clock,
    )


class StageBase:
    def feed(self, events: list[Event], errors: list[str]) -> list[Event]:
        raise NotImplementedError

    def pump(self, errors: list[str]) -> list[Event]:
        return []

    def finish(self, errors: list[str], timeout: float) -> list[Event]:
        return []

    def close(self) -> None:
        return None


class MapStage(StageBase):
    def __init__(self, fn: Callable[[Event], Event | None]) -> None:
        self.fn = fn

    def feed(self, events: list[Event], errors: list[str]) -> list[Event]:
        out = []
        for e in events:
            try:
                r = self.fn(e)
            except (KeyError, TypeError, ValueError) as ex:
                errors.append(f"map failed on {e!r}: {type(ex).__name__}: {ex}")
                continue
            if r is not None:
                out.append(r)
        return out


class PatternStage(StageBase):
    def __init__(
        self,
        nfa: NFA,
        select: Callable[[Match], Event],
        unevaluable: Counter[str] | None = None,
    ) -> None:
        self.nfa, self.select = nfa, select
        self.unevaluable: Counter[str] = Counter() if unevaluable is None else unevaluable

    def feed(self, events: list[Event], errors: list[str]) -> list[Event]:
        out = []
        for e in events:
            try:
                ms = self.nfa.process(e)
            except TidalError as ex:
                errors.append(str(ex))
                msg = str(ex)
                self.unevaluable[
                    msg[msg.find(" is missing ") + 4 :] if " is missing " in msg else msg
                ] += 1
                continue
            out += [self.select(m) for m in ms]
        return out

    def finish(self, errors: list[str], timeout: float) -> list[Event]:
        return [self.select(m) for m in self.nfa.advance_to(float("inf"))]


class ServerlessStage(StageBase):
    """Calls an operator as a service; results come back on the host thread."""

    def __init__(self, client: OperatorClient, clock: Clock | None = None) -> None:
        self.client = client
        self.clock = clock or MonotonicClock()

    def feed(self, events: list[Event], errors: list[str]) -> list[Event]:
        before = len(self.client.rejected)
        if events:
            self.client.submit(events)
        errors += self.client.rejected[before:]
        return self.pump(errors)

    def pump(self, errors: list[str]) -> list[Event]:
        return self.client.results()

    def finish(self, errors: list[str], timeout: float) -> list[Event]:
        self.client.flush()
        deadline = self.clock.now() + timeout
        out: list[Event] = []
        while not self.client.drained():
            out += self.client.results()
            if self.clock.now() > deadline:
                errors.append(f"operator did not drain within {timeout} s")
                break
            time.sleep(0.002)
        return out + self.client.results()

    def close(self) -> None:
        self.client.close()


class Pipeline:
    """Stages in order. `push` events in; results come out of `push`, `pump`, `finish`."""

    def __init__(self, stages: list[StageBase]) -> None:
        self.stages = stages
        self.errors: list[str] = []

    def unevaluable(self) -> dict[str, int]:
        """Events that could not be evaluated, by reason (missing ts / key / attribute)."""
        total: Counter[str] = Counter()
        for st in self.stages:
            if isinstance(st, PatternStage):
                total.update(st.unevaluable)
        return dict(total)

    def _from(self, k: int, events: list[Event]) -> list[Event]:
        for st in self.stages[k:]:
            events = st.feed(events, self.errors)
        return events

    def push(self, events: Iterable[Event]) -> list[Event]:
        out = self._from(0, list(events))
        return out + self.pump()

    def pump(self) -> list[Event]:
        out: list[Event] = []
        for k, st in enumerate(self.stages):
            got = st.pump(self.errors)
            if got:
                out += self._from(k + 1, got)
        return out

    def finish(self, timeout: float = 30.0) -> list[Event]:
        out: list[Event] = []
        for k, st in enumerate(self.stages):
            got = st.finish(self.errors, timeout)
            if got:
                out += self._from(k + 1, got)
        return out

    def run(self, events: Iterable[Event], timeout: float = 30.0) -> list[Event]:
        """Push all events, then finish: every result, in order of arrival."""
        try:
            return self.push(events) + self.finish(timeout)
        finally:
            self.close()

    def close(self) -> None:
        for st in self.stages:
            st.close()


class Stream:
    """The Flink-style host engine (a fluent builder of a `Pipeline`)."""

    def __init__(self, hub: Hub | None = None, clock: Clock | None = None) -> None:
        self.hub, self.clock = hub, clock
        self._stages: list[Callable[[], StageBase]] = []
        self._key: str | None = None

    def serverless(self, name: str) -> Stream:
        """Route the stream through operator `name` (CEPless' ``DataStream.serverless``)."""
        if self.hub is None:
            raise TidalError("serverless() needs a hub (a NodeManager or the HTTP API)")
        hub = self.hub
        self._stages.append(lambda: ServerlessStage(connect(hub, name, self.clock), self.clock))
        return self

    def map(self, fn: Callable[[Event], Event | None]) -> Stream:
        self._stages.append(lambda: MapStage(fn))
        return self

    def filter(self, pred: Callable[[Event], bool]) -> Stream:
        return self.map(lambda e: e if pred(e) else None)

    def key_by(self, field: str) -> Stream:
        self._key = field
        return self

    def pattern(self, p: Pattern, select: Callable[[Match], Event] | None = None) -> Stream:
        key = self._key
        sel = select or (lambda m: {k: list(v) for k, v in m.items()})
        self._stages.append(lambda: PatternStage(NFA(p, key=key), sel))
        return self

    def build(self) -> Pipeline:
        """Instantiate the stages (connects serverless operators; TidalError if unknown)."""
        return Pipeline([mk() for mk in self._stages])


class SaseEngine:
    """The SASE-style host engine: a query text becomes a `Pipeline`."""

    def __init__(
        self,
        hub: Hub | None = None,
        clock: Clock | None = None,
        ts_field: str = "ts",
        type_field: str = "type",
    ) -> None:
        self.hub, self.clock = hub, clock
        self.ts_field, self.type_field = ts_field, type_field

    def compile(self, text: str) -> Pipeline:
        from tidal.cep.sase import parse

        q = parse(text, ts_field=self.ts_field, type_field=self.type_field)
        stages: list[StageBase] = []
        for names in (q.pre_ops, None, q.post_ops):
            if names is None:
                stages.append(PatternStage(q.nfa(), q.row, q.unevaluable))
                continue
            for name in names:
                if self.hub is None:
                    raise TidalError(f"SERVERLESS {name} needs a hub (a NodeManager or the API)")
                try:
                    stages.append(ServerlessStage(connect(self.hub, name, self.clock), self.clock))
                except TidalError:
                    for st in stages:
                        st.close()
                    raise
        return Pipeline(stages)
