"""The REST infer request's checks and answers, in one place for both processes that run them.

`tidal.dataplane.http.OIPApp` (HTTP in the scheduler process) and the HTTP front ends'
compact path (`tidal.dataplane.frontend_infer`, `frontends: N`) validate an infer request and
build its answer with these functions, so a status code or a message has one source:

- `infer_headers(headers)` -> (Inference-Header-Content-Length or None, x-tidal-slo-ms or
  None); 400 for a header length that is not an integer.
- `check_header_len(header_len, body)`: 400 unless 1 <= header length <= body length.
- `request_slo(req, slo_header, max_slo_ms)` -> the request's SLO in ms or None (the
  model's default): the tighter of `parameters.slo_ms` and the header when both are given;
  400 for a value that is not a number, non-positive or above the cap
  (`tidal.dataplane.oip.parse_slo`).
- `error_answer(e)`: an `OIPError` as (status, `{"error": ...}`, headers);
  `internal_answer(e)`: any other exception as 500 `{"error": "internal error: ..."}`.
- `refusal_answer(e)`: a scheduler refusal (an `OIPError` with `cause`, from
  `tidal.dataplane.oip_serve.infer`) as (status, `{"error", "cause"[, "retry_after_ms"]}`,
  headers with Retry-After).
- `infer_answer(...)`: the 200 answer (JSON, or the binary extension with its
  Inference-Header-Content-Length) from the named outputs and the run's summary.
- `with_content_type(headers)`: `application/json` unless the headers name a type.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from tidal.dataplane.oip import (
    InferRequest,
    ModelSig,
    OIPError,
    encode_rest,
    parse_slo,
    select_outputs,
)
from tidal.dataplane.oip_serve import result_parameters, version_of

Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
JSON_TYPE = [(b"content-type", b"application/json")]
_BINARY_TYPE = (b"content-type", b"application/octet-stream")


def infer_headers(headers: Any) -> tuple[int | None, bytes | None]:
    """(Inference-Header-Content-Length, x-tidal-slo-ms) of a request's headers (lower-case
    names, as the server gives them); OIPError(400) for a header length that is not an int."""
    header_len: int | None = None
    slo_header: bytes | None = None
    for k, v in headers:
        if k == b"x-tidal-slo-ms":
            slo_header = v
        elif k == b"inference-header-content-length":
            try:
                header_len = int(v)
            except ValueError:
                raise OIPError(400, f"bad Inference-Header-Content-Length {v!r}") from None
    return header_len, slo_header


def check_header_len(header_len: int | None, body: bytes) -> None:
    if header_len is not None and not 0 < header_len <= len(body):
        raise OIPError(
            400, f"Inference-Header-Content-Length {header_len} out of range 1..{len(body)}"
        )


def request_slo(req: InferRequest, slo_header: bytes | None, max_slo_ms: float) -> float | None:
    """The request's SLO in ms (see the module docstring), None for the model's default."""
    slo: float | None = None
    if "slo_ms" in req.parameters:
        v = req.parameters["slo_ms"]
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise OIPError(400, f"slo_ms must be a number of milliseconds, got {v!r}")
        slo = parse_slo(v, max_slo_ms)
    if slo_header is not None:  # both given: the tighter one
        hdr = parse_slo(slo_header.decode("latin-1"), max_slo_ms)
        slo = hdr if slo is None else min(slo, hdr)
    return slo


def error_answer(e: OIPError) -> Answer:
    return e.status, orjson.dumps({"error": e.message}), e.headers


def internal_answer(e: Exception) -> Answer:
    """A bug (logged by the caller): 500 naming the exception, never the server down."""
    return 500, orjson.dumps({"error": f"internal error: {e!r}"}), []


def refusal_answer(e: OIPError) -> Answer:
    """A refusal, expiry or worker failure of the scheduler (an OIPError carrying `cause`)."""
    out: dict[str, Any] = {"error": e.message, "cause": e.cause}  # type: ignore[attr-defined]
    retry = getattr(e, "retry_after_s", None)
    if retry is not None:
        out["retry_after_ms"] = round(retry * 1e3, 3)
    return e.status, orjson.dumps(out), e.headers


def infer_answer(
    model: str,
    sig: ModelSig,
    named: dict[str, np.ndarray],
    req: InferRequest,
    summary: Any,
    slo_ms: float,
) -> Answer:
    """The 200 answer. `summary`: the run's InferResult, or any object with its `variants`,
    `batch_sizes`, `queue_ms`, `total_ms` and `late`; `slo_ms`: the SLO the request had
    (its own, else the default)."""
    outputs = select_outputs(sig, named, req)
    resp, hlen = encode_rest(
        model,
        version_of(model, summary.variants[-1]),
        outputs,
        req.id,
        result_parameters(summary, slo_ms),
    )
    if hlen is None:
        return 200, resp, []
    return 200, resp, [_BINARY_TYPE, (b"inference-header-content-length", str(hlen).encode())]


def with_content_type(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    if any(k == b"content-type" for k, _ in headers):
        return headers
    return [*JSON_TYPE, *headers]
