"""Apache Flink adapter (optional extra ``tidal[flink]``, PyFlink is ~850 MB).

`TidalOperatorFunction` is a PyFlink `ProcessFunction`: `open()` asks the node manager for
the operator (HTTP API, bearer token) and connects an `OperatorClient`; each
`process_element` buffers the event (flushed every F ms or B events by the client) and
yields the results received so far, so results are emitted on Flink's own task thread,
never from the client's receiver thread. PyFlink gives a ProcessFunction no end-of-input
hook, so a bounded input ends with the `EOS` element, on which the adapter flushes, waits
until the operator has consumed everything and emits the remaining results.

    env = StreamExecutionEnvironment.get_execution_environment()
    ds = env.from_collection([json.dumps(e) for e in events] + [EOS], Types.STRING())
    ds.process(TidalOperatorFunction("fraud_flag", url, token), Types.STRING()).print()
    env.execute("cep")

Events cross Flink as JSON strings (the json codec). See docs/cep.md for a full run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

try:  # pragma: no cover - exercised only where PyFlink is installed
    from pyflink.datastream import ProcessFunction as _Base

    HAVE_PYFLINK = True
except ImportError:  # PyFlink absent: the class still imports, for docs and tests
    _Base = object
    HAVE_PYFLINK = False


EOS_FIELD = "__tidal_eos__"
#: Append this element to a bounded input so the adapter emits the last results.
EOS = json.dumps({EOS_FIELD: True})


class TidalOperatorFunction(_Base):
    """Forwards a Flink stream of JSON strings through Tidal operator `name`."""

    def __init__(self, name: str, url: str, token: str, drain_timeout_s: float = 30.0) -> None:
        self.name, self.url, self.token = name, url, token
        self.drain_timeout_s = drain_timeout_s
        self._client: Any = None
        self._pending: list[str] = []

    def open(self, runtime_context: Any = None) -> None:
        from tidal.cep.api import ApiHub
        from tidal.cep.stream import connect

        self._hub = ApiHub(self.url, self.token)
        self._client = connect(self._hub, self.name)

    def process_element(self, value: str, ctx: Any = None) -> Iterator[str]:
        ev = json.loads(value)
        if isinstance(ev, dict) and ev.get(EOS_FIELD):
            yield from self.drain()  # end of a bounded input: emit everything still due
            return
        self._client.submit(ev)
        for out in self._client.results():
            yield json.dumps(out)

    def drain(self) -> list[str]:
        """Flush and wait until every submitted event's results arrived (end of input)."""
        import time

        self._client.flush()
        deadline = time.monotonic() + self.drain_timeout_s
        out: list[str] = []
        while not self._client.drained() and time.monotonic() < deadline:
            out += [json.dumps(e) for e in self._client.results()]
            time.sleep(0.002)
        return out + [json.dumps(e) for e in self._client.results()]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._hub.close()
