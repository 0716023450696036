"""Every planner's options as a Markdown table, generated from the `Options` models (the
section "Options" of docs/planners.md is this output; a test keeps them equal).

``python -m tidal.planners.options_doc`` prints it.
"""

from __future__ import annotations

from typing import Any

from tidal.planners.base import available, options_model


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(str(v) for v in value) + ")"
    return repr(value) if isinstance(value, str) else str(value)


def _bounds(meta: list[Any]) -> str:
    parts = []
    for m in meta:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            v = getattr(m, attr, None)
            if v is not None:
                parts.append(f"{sym} {v:g}" if isinstance(v, int | float) else f"{sym} {v}")
        if getattr(m, "min_length", None) is not None:
            parts.append(f"length >= {m.min_length}")
    return ", ".join(parts)


def options_markdown() -> str:
    """One table per planner: option, type, default, bounds, description."""
    out = []
    for name in available():
        model = options_model(name)
        doc = (model.__doc__ or "").strip().splitlines()
        out.append(f"**`{name}`**: {doc[0] if doc else ''}")
        out.append("")
        out.append("| option | type | default | bounds | description |")
        out.append("|---|---|---|---|---|")
        for key, f in model.model_fields.items():
            t = f.annotation
            ann = t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")
            ann = ann.replace("|", "or")
            out.append(
                f"| `{key}` | {ann} | `{_fmt(f.default)}` | {_bounds(f.metadata)} | "
                f"{f.description or ''} |"
            )
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover - a documentation helper
    print(options_markdown(), end="")
