"""Read the basic fields of a Triton `config.pbtxt` (protobuf text format), without protobuf.

Contract: `parse_pbtxt(text, source)` returns a dict with the fields Tidal uses, when present:
`name` (str), `max_batch_size` (int), `platform` / `backend` (str), `default_model_filename`
(str), `input` / `output` (lists of {"name", "data_type" (OIP name, e.g. "FP32"), "dims"
(list of int, -1 dynamic)}). Other fields (instance_group, dynamic_batching, ...) are parsed and
ignored. A syntax error raises TidalError naming `source`, the line and the token.
"""

from __future__ import annotations

import re
from typing import Any

from tidal.core.errors import TidalError

# Triton's DataType enum names -> OIP datatype names.
TRITON_TYPES = {
    "TYPE_BOOL": "BOOL", "TYPE_UINT8": "UINT8", "TYPE_UINT16": "UINT16",
    "TYPE_UINT32": "UINT32", "TYPE_UINT64": "UINT64", "TYPE_INT8": "INT8",
    "TYPE_INT16": "INT16", "TYPE_INT32": "INT32", "TYPE_INT64": "INT64",
    "TYPE_FP16": "FP16", "TYPE_FP32": "FP32", "TYPE_FP64": "FP64", "TYPE_STRING": "BYTES",
}  # fmt: skip
_TOKEN = re.compile(
    r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')|([{}\[\]:,;<>])|([^\s{}\[\]:,;<>"\']+))'
)


def _tokens(text: str, source: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    pos = 0
    n = len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip() == "":
                break
            line = text.count("\n", 0, pos) + 1
            raise TidalError(f"{source}: line {line}: cannot parse {text[pos : pos + 20]!r}")
        pos = m.end()
        if m.group(1) is not None:
            continue
        tok = m.group(2) or m.group(3) or m.group(4)
        if tok:
            start = m.end() - len(tok)  # the token, not the whitespace before it
            out.append((tok, text.count("\n", 0, start) + 1))
    return out


def _scalar(tok: str) -> Any:
    if tok[0] in "\"'":
        return tok[1:-1].encode().decode("unicode_escape")
    try:
        return int(tok)
    except ValueError:
        pass
    try:
        return float(tok)
    except ValueError:
        return tok  # an enum name (TYPE_FP32, KIND_CPU) or true/false


class _Parser:
    def __init__(self, toks: list[tuple[str, int]], source: str) -> None:
        self.toks = toks
        self.i = 0
        self.source = source

    def _err(self, what: str) -> TidalError:
        if self.i < len(self.toks):
            tok, line = self.toks[self.i]
            return TidalError(f"{self.source}: line {line}: {what}, got {tok!r}")
        return TidalError(f"{self.source}: {what}, got end of file")

    def peek(self) -> str | None:
        return self.toks[self.i][0] if self.i < len(self.toks) else None

    def take(self) -> str:
        if self.i >= len(self.toks):
            raise self._err("unexpected end")
        tok = self.toks[self.i][0]
        self.i += 1
        return tok

    def message(self, close: str | None) -> dict[str, list[Any]]:
        fields: dict[str, list[Any]] = {}
        while True:
            tok = self.peek()
            if tok is None:
                if close is not None:
                    raise self._err(f"expected {close!r}")
                return fields
            if tok == close:
                self.i += 1
                return fields
            if tok in ",;":
                self.i += 1
                continue
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tok):
                raise self._err("expected a field name")
            name = self.take()
            if self.peek() == ":":
                self.i += 1
            fields.setdefault(name, []).extend(self.value())

    def value(self) -> list[Any]:
        tok = self.peek()
        if tok in ("{", "<"):
            self.i += 1
            return [self.message("}" if tok == "{" else ">")]
        if tok == "[":
            self.i += 1
            items: list[Any] = []
            while self.peek() != "]":
                if self.peek() is None:
                    raise self._err("expected ']'")
                if self.peek() == ",":
                    self.i += 1
                    continue
                items.extend(self.value())
            self.i += 1
            return items
        if tok is None or tok in "{}[]:,;<>":
            raise self._err("expected a value")
        return [_scalar(self.take())]


def _tensor(msg: dict[str, list[Any]], source: str, kind: str) -> dict[str, Any]:
    name = msg.get("name", [None])[-1]
    if not isinstance(name, str) or not name:
        raise TidalError(f"{source}: an {kind} has no name")
    raw = msg.get("data_type", [None])[-1]
    if raw not in TRITON_TYPES:
        raise TidalError(
            f"{source}: {kind} {name!r}: data_type {raw!r} unknown; valid: {sorted(TRITON_TYPES)}"
        )
    dims = msg.get("dims", [])
    if not all(isinstance(d, int) for d in dims):
        raise TidalError(f"{source}: {kind} {name!r}: dims {dims!r} must be integers")
    return {"name": name, "data_type": TRITON_TYPES[raw], "dims": [int(d) for d in dims]}


def parse_pbtxt(text: str, source: str = "config.pbtxt") -> dict[str, Any]:
    """The basic fields of a Triton model config (see the module docstring)."""
    top = _Parser(_tokens(text, source), source).message(None)
    out: dict[str, Any] = {}
    for key in ("name", "platform", "backend", "default_model_filename"):
        if key in top:
            val = top[key][-1]
            if not isinstance(val, str):
                raise TidalError(f"{source}: {key} must be a string, got {val!r}")
            out[key] = val
    if "max_batch_size" in top:
        mbs = top["max_batch_size"][-1]
        if not isinstance(mbs, int) or mbs < 0:
            raise TidalError(f"{source}: max_batch_size must be an integer >= 0, got {mbs!r}")
        out["max_batch_size"] = mbs
    for kind in ("input", "output"):
        if kind in top:
            msgs = top[kind]
            if not all(isinstance(m, dict) for m in msgs):
                raise TidalError(f"{source}: {kind} must be a list of messages")
            out[kind] = [_tensor(m, source, kind) for m in msgs]
    return out


__all__ = ["TRITON_TYPES", "parse_pbtxt"]
