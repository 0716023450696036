"""What the REST and gRPC faces share above the codec: model lookup with URL versions,
metadata, config and statistics documents, readiness, and running one inference.

Contracts:
- `resolve(gw, model, version)` -> (ModelInfo, variant or None): 404 `OIPError` naming an
  unknown model (with the list) or an unknown version (with the model's versions). A version
  pins one variant: a repository version through `gw.repository.version_variant`, a zoo model's
  version is its variant name.
- `infer(gw, info, req, variant, slo_ms, arrival)` -> (named outputs, InferResult); a
  refusal becomes `OIPError(503 + Retry-After | 504 | 5xx)` with the gateway's reason, and
  `retry_after_s` on the error for gRPC's retry info.
- The documents (`server_metadata`, `model_metadata`, `model_config`, `model_stats`) are
  plain JSON-able dicts, the same over both transports.
"""

from __future__ import annotations

import math
from typing import Any

import tidal
from tidal.core.errors import TidalError
from tidal.dataplane.oip import InferRequest, ModelSig, OIPError, sig_of
from tidal.dataplane.replica import Refused
from tidal.dataplane.tensors import as_named

EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_repository",
    "model_configuration",
    "statistics",
    "schedule_policy",  # Tidal: per-request deadlines (slo_ms parameter / x-tidal-slo-ms)
]
_TRITON_TYPE = {
    "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64", "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}  # fmt: skip


def server_metadata() -> dict[str, Any]:
    return {"name": "tidal", "version": tidal.__version__, "extensions": EXTENSIONS}


def resolve(gw: Any, model: str, version: str | None) -> tuple[Any, str | None]:
    """(ModelInfo, pinned variant or None); 404 for an unknown model or version."""
    info = gw.models.get(model)
    if info is None:
        raise OIPError(404, f"unknown model {model!r}; models: {sorted(gw.models)}")
    if not version:
        return info, None
    repo = getattr(gw, "repository", None)
    variant: str | None = None
    if repo is not None and hasattr(repo, "version_variant"):
        variant = repo.version_variant(model, version)
    if variant is None and version in info.versions:
        variant = version
    if variant is None:
        raise OIPError(
            404, f"unknown version {version!r} of model {model!r}; versions: {versions(gw, info)}"
        )
    return info, variant


def versions(gw: Any, info: Any) -> list[str]:
    """The version names a client may put in the URL."""
    repo = getattr(gw, "repository", None)
    meta = None
    if repo is not None and hasattr(repo, "metadata"):
        try:
            meta = repo.metadata(info.name)
        except (KeyError, TidalError):
            meta = None
    if isinstance(meta, dict) and isinstance(meta.get("versions"), list):
        return [str(v) for v in meta["versions"]]
    return list(info.versions)


def in_repository(gw: Any, model: str) -> bool:
    """True when the repository knows `model` (e.g. unloaded: not ready, but not unknown)."""
    repo = getattr(gw, "repository", None)
    if repo is None:
        return False
    try:
        return any(e.get("name") == model for e in repo.index(False))
    except Exception:  # an index that cannot be read: the model is unknown
        return False


def model_ready(gw: Any, model: str, version: str | None) -> tuple[str, bool]:
    """(name, ready) for the ready route: False for a repository model that is not loaded,
    404 `OIPError` only for a model nobody knows (or an unknown version of a served one)."""
    if model not in gw.models and in_repository(gw, model):
        return model, False
    info, variant = resolve(gw, model, version)
    return info.name, ready(gw, info, variant)


def ready(gw: Any, info: Any, variant: str | None = None) -> bool:
    """Every stage has a ready replica (of `variant`, when a version is pinned)."""
    if not gw.ready:
        return False
    for s in info.stages:
        reps = gw.stages[s].replicas()
        if variant is not None and variant in gw.stages[s].allowed:
            reps = [r for r in reps if r.variant == variant]
        if not any(r.state == "ready" for r in reps):
            return False
    return True


def model_metadata(gw: Any, info: Any) -> dict[str, Any]:
    sig = sig_of(info)
    out: dict[str, Any] = {
        "name": info.name,
        "versions": versions(gw, info),
        "platform": "tidal_onnxruntime",
        "inputs": [m.to_json() for m in sig.inputs],
        "outputs": [m.to_json() for m in sig.outputs],
        "stages": list(info.stages),  # Tidal's (top level since before the parameters block)
        "parameters": {"stages": list(info.stages), "variants": list(info.versions)},
    }
    repo = getattr(gw, "repository", None)
    if repo is not None and hasattr(repo, "metadata"):
        try:
            extra = repo.metadata(info.name)
        except (KeyError, TidalError):
            extra = None
        if isinstance(extra, dict):
            out["parameters"].update({k: v for k, v in extra.items() if k != "versions"})
    return out


def model_config(gw: Any, info: Any) -> dict[str, Any]:
    """The model configuration extension (Triton's field names; dims without the batch)."""
    sig = sig_of(info)
    plan = gw.current_plan()
    batch = 0
    if plan is not None:
        batch = max((sp.batch for sp in plan.stages if sp.stage in info.stages), default=0)

    def tensors(ms: Any) -> list[dict[str, Any]]:
        return [
            {"name": m.name, "data_type": _TRITON_TYPE[m.datatype], "dims": list(m.shape[1:])}
            for m in ms
        ]

    return {
        "name": info.name,
        "platform": "tidal_onnxruntime",
        "backend": "onnxruntime",
        "max_batch_size": batch,
        "input": tensors(sig.inputs),
        "output": tensors(sig.outputs),
        "parameters": {
            "stages": list(info.stages),
            "variants": list(info.versions),
            "default_slo_ms": gw.config.default_slo_ms,
            "allow_nan": sig.allow_nan,
        },
    }


def model_stats(gw: Any, infos: list[Any]) -> dict[str, Any]:
    """The statistics extension: per model, counts from its stages' counters."""
    snaps = gw.metrics_snapshot()
    out = []
    for info in infos:
        last = snaps.get(info.stages[-1])
        first = snaps.get(info.stages[0])
        if last is None or first is None:
            continue
        viol = {k: sum(snaps[s].violations.get(k, 0) for s in info.stages) for k in last.violations}
        lat = sorted(last.latency_ms)
        out.append(
            {
                "name": info.name,
                "version": "",
                "inference_count": last.completions,
                "execution_count": last.completions,
                "inference_stats": {
                    "success": {"count": last.completions},
                    "fail": {"count": sum(viol.values())},
                },
                "arrivals": first.arrivals,
                "violations": viol,
                "queue_length": sum(snaps[s].queue_len for s in info.stages),
                "latency_ms_p50": lat[len(lat) // 2] if lat else None,
                "latency_ms_p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
            }
        )
    return {"model_stats": out}


async def infer(
    gw: Any,
    info: Any,
    req: InferRequest,
    variant: str | None,
    slo_ms: float | None,
    arrival: float | None = None,
) -> tuple[dict[str, Any], Any, ModelSig]:
    """Run one request (see the module contract). `arrival`: on the gateway's clock (the
    request's first byte), so reading and parsing the body count against its deadline."""
    sig = sig_of(info)
    kwargs: dict[str, Any] = {}
    if variant is not None:
        kwargs["version"] = variant
    if arrival is not None:
        kwargs["arrival"] = arrival
    try:
        res = await gw.infer(info.name, req.rows(), slo_ms, **kwargs)
    except Refused as e:
        raise refused_error(e) from None
    named = as_named(res.output, [m.name for m in sig.outputs])
    return named, res, sig


def refused_error(e: Refused) -> OIPError:
    """A scheduler refusal as the OIPError `infer` raises (503 + Retry-After | 504 | 5xx,
    `cause` and `retry_after_s` on the error)."""
    headers: list[tuple[bytes, bytes]] = []
    if e.retry_after_s is not None:  # before OIPError(): it copies an empty list
        headers.append((b"retry-after", str(max(1, math.ceil(e.retry_after_s))).encode()))
    err = OIPError(e.status, e.reason, headers)
    err.cause = e.cause  # type: ignore[attr-defined]
    err.retry_after_s = e.retry_after_s  # type: ignore[attr-defined]
    return err


def version_of(model: str, variant: str) -> str:
    """The version a response names: "2" for the repository variant "<model>/2", else the
    variant (a zoo model's versions are its variants)."""
    prefix = model + "/"
    return variant[len(prefix) :] if variant.startswith(prefix) else variant


def result_parameters(res: Any, slo_ms: float) -> dict[str, Any]:
    """Tidal's response parameters: how the request was served, and the SLO it was given
    (`slo_ms`: the request's, the gRPC deadline's if sooner, else the default)."""
    return {
        "slo_ms": round(slo_ms, 3),
        "variant": res.variants[-1],
        "variants": res.variants,
        "batch_size": res.batch_sizes[-1],
        "batch_sizes": res.batch_sizes,
        "queue_ms": round(res.queue_ms, 3),
        "total_ms": round(res.total_ms, 3),
        "late": res.late,
    }


NO_REPO = "no model repository is served (start with --model-repository DIR)"


def repository_index(gw: Any, repo: Any, ready_only: bool) -> list[dict[str, Any]]:
    """The repository index: the repository's entries, else the served models (READY)."""
    if repo is not None:
        return list(repo.index(ready_only))
    out = []
    for info in gw.models.values():
        ok = ready(gw, info)
        if ok or not ready_only:
            out.append({"name": info.name, "version": "", "state": "READY" if ok else "UNAVAILABLE",
                        "reason": ""})  # fmt: skip
    return out


async def repository_call(repo: Any, action: str, model: str) -> None:
    """`repo.load(model)` / `repo.unload(model)`: 404 unknown model, 400 other refusals."""
    try:
        await (repo.load(model) if action == "load" else repo.unload(model))
    except KeyError as e:
        raise OIPError(404, f"unknown model {model!r} in the repository: {e}") from None
    except TidalError as e:
        raise OIPError(400, f"{action} {model!r}: {e}") from None
