"""Early refusal: answer 503 to a request that cannot finish in time before its body is
parsed (issue 13; issue 14's goodput at 2x).

Why: on a small machine the gateway's own work competes with the replicas for the cores.
A resnet18 request in OIP JSON is 887 KB; decoding it costs ~36 ms of CPU (orjson, then
numpy), so at 2x overload the gateway spent most of a core decoding requests it then
refused, and the replicas served slower exactly when overloaded. Pricing a request needs
only its deadline and a lower bound on its rows, both known without decoding:

- the SLO: the body's ``"slo_ms"`` when the raw bytes name it exactly once (in the binary
  tensor extension only the JSON header is searched), else the ``x-tidal-slo-ms`` header when
  the body does not name it, else the model's default SLO; a body naming it twice, or with a
  value that is not a plain number, is left to the full parse;
- the rows: at least 1.

`early_refusal` asks the model's first stage (`Stage.quote`): a refusal is returned only
when every lane the router may pick is under pressure (something queued, or no idle
replica: an idle lane is never refused early, and no search is spent then) and would refuse
even one row by that deadline. So an early refusal never refuses a request the full path
would admit (up to the arrivals in between), and costs one pass over the bytes
(`bytes.count`, ~0.6 ms for 887 KB) instead of the decode.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

from tidal.dataplane.replica import Refused

_KEY = b'"slo_ms"'
_VALUE = re.compile(rb"\s*:\s*(-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)\s*[,}]")


def slo_hint(
    body: bytes, header_len: int | None, slo_header: bytes | None, default_ms: float
) -> float | None:
    """The request's SLO in ms from its raw bytes (see the module docstring), or None when
    only the full parse can tell."""
    head = body if header_len is None else body[:header_len]
    n = head.count(_KEY)
    if n > 1:
        return None
    if n == 1:
        m = _VALUE.match(head, head.rfind(_KEY) + len(_KEY))
        return float(m.group(1)) if m is not None else None
    if slo_header is not None:
        try:
            v = float(slo_header)
        except ValueError:
            return None
        return v if math.isfinite(v) else None
    return default_ms


def early_refusal(
    gw: Any,
    model: str,
    body: bytes,
    header_len: int | None,
    slo_header: bytes | None,
    arrival: float | None,
    max_slo_ms: float,
) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
    """(503, body, headers) for a request to `model` that its first stage would refuse even
    at one row (see the module docstring); None: take the full path."""
    snames = gw.routes.get(model)
    if not snames or model in getattr(gw, "_unloading", ()):
        return None
    stage = gw.stages[snames[0]]
    if not stage.pressured():
        return None
    slo = slo_hint(body, header_len, slo_header, gw.config.default_slo_ms)
    if slo is None or not 0 < slo <= max_slo_ms:
        return None  # the full parse answers (and names a bad value)
    now = gw.clock.now()
    t0 = now if arrival is None else min(arrival, now)
    v: Refused | None = stage.quote(1, t0 + slo * 1e-3, now)
    if v is None:
        return None
    out: dict[str, Any] = {"error": v.reason, "cause": v.cause}
    headers: list[tuple[bytes, bytes]] = []
    if v.retry_after_s is not None:
        out["retry_after_ms"] = round(v.retry_after_s * 1e3, 3)
        headers.append((b"retry-after", str(max(1, math.ceil(v.retry_after_s))).encode()))
    return v.status, orjson.dumps(out), headers


__all__ = ["early_refusal", "slo_hint"]
