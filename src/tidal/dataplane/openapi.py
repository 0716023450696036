"""The OpenAPI 3.1 document of Tidal's REST API: OIP v2 plus `slo_ms`, `x-tidal-slo-ms`, the
repository extension and the admin routes. Served at `GET /v2/openapi.json`; committed as
docs/openapi.json (regenerate: `python -m tidal.dataplane.openapi > docs/openapi.json`; a test
checks the committed copy is current).

The request bodies are pydantic models (KServe's protocol layer does the same); the handlers
in `tidal.dataplane.oip` enforce every constraint declared here (and more: the model's own
input names, datatypes and shapes), so a schema-invalid request is never accepted.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import tidal
from tidal.core.plan import Plan

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputParameters(_Open):
    binary_data_size: int | None = Field(
        default=None, ge=0, description="Bytes of this input in the binary section."
    )


class RequestInput(_Open):
    name: str = Field(description="One of the model's inputs (see the model metadata).")
    shape: list[int] = Field(description="Batch first; [n, ...] or one sample without n.")
    datatype: Datatype
    parameters: InputParameters | None = None
    data: list[Any] | None = Field(
        default=None, description="Row-major values (flat or nested); absent when binary."
    )


class OutputParameters(_Open):
    binary_data: bool | None = Field(default=None, description="Return in the binary section.")
    classification: int | None = Field(
        default=None, ge=0, description="Classification extension: top-k as 'score:index'."
    )
    class_count: int | None = Field(default=None, ge=0, description="Alias of classification.")


class RequestOutput(_Open):
    name: str
    parameters: OutputParameters | None = None


class RequestParameters(_Open):
    slo_ms: float | None = Field(
        default=None, gt=0, le=600_000, description="Tidal: the request's latency SLO (ms)."
    )
    binary_data_output: bool | None = Field(
        default=None, description="Default for every requested output's binary_data."
    )


class InferenceRequest(_Open):
    """An OIP v2 inference request (JSON part)."""

    id: str | None = None
    parameters: RequestParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class RepositoryIndexRequest(_Open):
    ready: bool | None = None


class RepositoryLoadRequest(_Open):
    parameters: dict[str, Any] | None = None


_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
_TENSOR_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
    },
    "required": ["name", "datatype", "shape"],
}


def _schemas() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in (InferenceRequest, RepositoryIndexRequest, RepositoryLoadRequest, Plan):
        s = m.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(s.pop("$defs", {}))
        out[m.__name__] = s
    out["Error"] = _ERROR
    out["TensorMetadata"] = _TENSOR_META
    return out


def _resp(desc: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"description": desc}
    if schema is not None:
        r["content"] = {"application/json": {"schema": schema}}
    return r


def _err(*codes: int) -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/Error"}
    return {str(c): _resp("error", ref) for c in codes}


def _json_body(name: str, required: bool = True) -> dict[str, Any]:
    return {
        "required": required,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
    }


_MODEL = {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "model_version", "in": "path", "required": True, "schema": {"type": "string"}}
_SLO_HEADER = {
    "name": "x-tidal-slo-ms",
    "in": "header",
    "required": False,
    "description": "Tidal: the request's latency SLO in ms (with the body's slo_ms too: "
    "the tighter one); an overloaded lane may answer 503 from the headers alone.",
    "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 600000},
}
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def _model_ops(versioned: bool) -> dict[str, Any]:
    params = [_MODEL, _VERSION] if versioned else [_MODEL]
    base = "/v2/models/{model_name}" + ("/versions/{model_version}" if versioned else "")
    meta = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorMetadata"}},
            "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorMetadata"}},
        },
        "required": ["name", "platform", "inputs", "outputs"],
    }
    return {
        base: {
            "get": {"summary": "Model metadata", "parameters": params,
                    "responses": {"200": _resp("metadata", meta), **_err(404)}},
        },
        base + "/ready": {
            "get": {"summary": "Model readiness", "parameters": params,
                    "responses": {"200": _resp("ready"), "503": _resp("not ready"),
                                  **_err(404)}},
        },
        base + "/config": {
            "get": {"summary": "Model configuration", "parameters": params,
                    "responses": {"200": _resp("config", {"type": "object"}), **_err(404)}},
        },
        base + "/stats": {
            "get": {"summary": "Model statistics", "parameters": params,
                    "responses": {"200": _resp("statistics", {"type": "object"}), **_err(404)}},
        },
        base + "/infer": {
            "post": {
                "summary": "Inference (JSON, or the binary tensor extension)",
                "parameters": [*params, _SLO_HEADER],
                "requestBody": _json_body("InferenceRequest"),
                "responses": {
                    "200": _resp("outputs", {"type": "object"}),
                    **_err(400, 404, 413, 415, 500, 502, 503, 504),
                },
            }
        },
    }  # fmt: skip


def document() -> dict[str, Any]:
    """The OpenAPI document (a JSON-able dict)."""
    paths: dict[str, Any] = {
        "/v2": {"get": {"summary": "Server metadata", "responses": {"200": _resp("metadata")}}},
        "/v2/health/live": {"get": {"summary": "Liveness", "responses": {"200": _resp("live")}}},
        "/v2/health/ready": {
            "get": {"summary": "Readiness", "responses": {"200": _resp("ready"),
                                                          "503": _resp("not ready")}}
        },
        "/v2/models/stats": {
            "get": {"summary": "Statistics of every model", "responses": {"200": _resp("stats")}}
        },
        **_model_ops(False),
        **_model_ops(True),
        "/v2/repository/index": {
            "post": {"summary": "Repository index",
                     "requestBody": _json_body("RepositoryIndexRequest", required=False),
                     "responses": {"200": _resp("index", {"type": "array"}), **_err(400)}}
        },
        "/v2/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": _resp("OpenAPI document")}}
        },
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "text exposition", "content": {"text/plain": {"schema": {
                "type": "string"}}}}}}},
        "/admin/plan": {
            "get": {"summary": "The plan in force", "security": _BEARER,
                    "responses": {"200": _resp("plan"), **_err(401, 403)}},
            "put": {"summary": "Apply a plan", "security": _BEARER,
                    "parameters": [{"name": "wait", "in": "query", "required": False,
                                    "schema": {"type": "boolean"}}],
                    "requestBody": _json_body("Plan"),
                    "responses": {"200": _resp("plan in force"), **_err(400, 401, 403, 409)}},
        },
        "/admin/stats": {
            "get": {"summary": "Per-stage snapshots", "security": _BEARER,
                    "responses": {"200": _resp("stats"), **_err(401, 403)}}
        },
        "/admin/refusals": {
            "get": {"summary": "Server-side refusal latency per admission stage (?reset=true "
                    "clears)", "security": _BEARER,
                    "responses": {"200": _resp("refusal latency"), **_err(401, 403)}}
        },
    }  # fmt: skip
    for action in ("load", "unload"):
        paths[f"/v2/repository/models/{{model_name}}/{action}"] = {
            "post": {
                "summary": f"Repository {action}",
                "security": _BEARER,
                "parameters": [_MODEL],
                "requestBody": _json_body("RepositoryLoadRequest", required=False),
                "responses": {"200": _resp(f"{action}ed"), **_err(400, 401, 403, 404)},
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tidal inference server (Open Inference Protocol v2)",
            "version": tidal.__version__,
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


if __name__ == "__main__":
    json.dump(document(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
