"""The demo report: a side-by-side table (rich), PNG figures (matplotlib) and an HTML page.

Figures (one curve per policy, time in seconds since the replay started):
- `load_latency.png`: offered load (req/s, from the schedule) and client p99 per 5-s bin vs SLO;
- `allocation.png`: cores and replicas in force (sampled from the dashboard JSON each second);
- `violations.png`: SLO violations per 5-s bin by policy.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from tidal.apps.demo import DemoSetup, RunResult

BIN_S = 5.0


def table(results: list[RunResult]) -> Table:
    t = Table(title="Tidal demo: live, same trace, same machine")
    cols = ("policy", "SLO violations", "p99 (ms)", "core-seconds", "accuracy", "requests")
    for c in cols:
        t.add_column(c, justify="right")
    for r in results:
        row = r.row()
        v = row["violations"]
        t.add_row(
            r.policy,
            f"{row['slo_violation_rate']:.2%} (late {v['late']}, refused {v['refused']}, "
            f"expired {v['expired']}, error {v['error']})",
            f"{row['p99_ms']}",
            f"{row['core_seconds']}",
            f"{row['accuracy']}",
            f"{row['requests']}",
        )
    return t


def _binned(r: RunResult, end: float) -> dict[str, np.ndarray]:
    nb = max(1, math.ceil(end / BIN_S))
    sent = np.zeros(nb)
    bad = np.zeros(nb)
    lat: list[list[float]] = [[] for _ in range(nb)]
    for o in r.outcomes:
        i = min(nb - 1, int(o.scheduled_s // BIN_S))
        sent[i] += 1
        if o.outcome != "ok":
            bad[i] += 1
        if o.status == 200:
            lat[i].append(o.latency_ms)
    p99 = np.array([np.percentile(x, 99) if x else np.nan for x in lat])
    return {"t": np.arange(nb) * BIN_S, "sent": sent / BIN_S, "bad": bad, "p99": p99}


def _alloc(r: RunResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t, cores, reps = [], [], []
    t0 = r.series[0]["t"] if r.series else 0.0
    for s in r.series:
        t.append(s["t"] - t0 - 1.5)
        st = s["data"]["stages"]
        cores.append(sum((x["cores"][-1] or 0.0) if x["cores"] else 0.0 for x in st))
        reps.append(sum(x["replicas"][-1] if x["replicas"] else 0 for x in st))
    return np.array(t), np.array(cores), np.array(reps)


def figures(setup: DemoSetup, results: list[RunResult], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = setup.schedule.duration_s + 1
    colors = {"hpa": "#d62728", "themis": "#1f77b4"}
    names = []
    fig, ax = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for r in results:
        b = _binned(r, end)
        c = colors.get(r.policy)
        ax[0].plot(b["t"], b["sent"], color=c, label=f"{r.policy}: offered load")
        ax[1].plot(b["t"], b["p99"], color=c, label=f"{r.policy}: p99")
    ax[1].axhline(setup.slo_ms, color="#555", ls="--", label="SLO")
    ax[0].set_ylabel("req/s")
    ax[1].set_ylabel("p99 latency (ms)")
    ax[1].set_yscale("log")
    ax[1].set_xlabel("time (s)")
    ax[0].legend()
    ax[1].legend()
    ax[0].set_title("Offered load and p99 latency (5-s bins)")
    fig.tight_layout()
    fig.savefig(out / "load_latency.png", dpi=90)
    plt.close(fig)
    names.append("load_latency.png")

    fig, ax = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    for r in results:
        t, cores, reps = _alloc(r)
        c = colors.get(r.policy)
        ax[0].step(t, cores, where="post", color=c, label=r.policy)
        ax[1].step(t, reps, where="post", color=c, label=r.policy)
    ax[0].axhline(setup.cores, color="#555", ls=":", label="machine cores")
    ax[0].set_ylabel("cores in force")
    ax[1].set_ylabel("replicas (ready)")
    ax[1].set_xlabel("time (s)")
    ax[0].legend()
    ax[0].set_title("Allocation in force (all stages)")
    fig.tight_layout()
    fig.savefig(out / "allocation.png", dpi=90)
    plt.close(fig)
    names.append("allocation.png")

    fig, ax = plt.subplots(figsize=(9, 3.2))
    width = BIN_S / (len(results) + 1)
    for i, r in enumerate(results):
        b = _binned(r, end)
        ax.bar(
            b["t"] + i * width, b["bad"], width=width, color=colors.get(r.policy), label=r.policy
        )
    ax.set_ylabel("violations per 5 s")
    ax.set_xlabel("time (s)")
    ax.legend()
    ax.set_title("SLO violations (late + refused + expired + error)")
    fig.tight_layout()
    fig.savefig(out / "violations.png", dpi=90)
    plt.close(fig)
    names.append("violations.png")
    return names


def write_report(
    setup: DemoSetup, results: list[RunResult], out: Path, verdict: str, notes: list[str]
) -> Path:
    """Write `out/index.html`, the PNGs, `results.json` and the per-run outcome CSVs."""
    from tidal.workload.loadgen import write_outcomes

    out.mkdir(parents=True, exist_ok=True)
    figs = figures(setup, results, out)
    for r in results:
        write_outcomes(out / f"outcomes-{r.policy}.csv", r.outcomes)
        (out / f"decisions-{r.policy}.json").write_text(json.dumps(r.decisions, indent=1))
    rows = [r.row() for r in results]
    (out / "results.json").write_text(
        json.dumps(
            {
                "pipeline": setup.pipeline_file,
                "slo_ms": setup.slo_ms,
                "trace": setup.trace_desc,
                "synthetic": setup.synthetic,
                "results": rows,
                "verdict": verdict,
            },
            indent=2,
        )
    )
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0]) if rows else ""
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>"
        for row in rows
    )
    decisions = ""
    for r in results:
        applied = [d for d in r.decisions if d.get("action") == "applied"][-12:]
        items = "".join(
            f"<li>t={d['t']:.1f} {html.escape(_plan(d.get('output')))} "
            f"(decided in {d['decision_ms']} ms, in force after {d.get('time_to_effect_s')} s)"
            f"{' infeasible: ' + html.escape(d['reason']) if not d['feasible'] else ''}</li>"
            for d in applied
        )
        n_kept = sum(1 for d in r.decisions if d.get("action") == "kept-last-feasible")
        decisions += (
            f"<h3>{r.policy}: {len(r.decisions)} decisions, "
            f"{sum(1 for d in r.decisions if d.get('action') == 'applied')} applied, "
            f"{n_kept} infeasible kept out (last applied below)</h3><ul>{items}</ul>"
        )
    stages = " &rarr; ".join(
        f"{html.escape(s.name)} [{html.escape(s.variants[0])}]" for s in setup.pipeline.stages
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Tidal demo report</title>
<style>body{{font:14px system-ui,sans-serif;margin:24px;max-width:1000px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px}}</style></head>
<body><h1>Tidal demo: hpa vs themis, live on this machine</h1>
<p>Pipeline <code>{html.escape(setup.pipeline_file)}</code>
({stages}),
SLO {setup.slo_ms:g} ms, {setup.cores:g} cores. Trace: {html.escape(setup.trace_desc)}.</p>
<table><tr>{head}</tr>{body}</table>
<p><b>{html.escape(verdict)}</b></p>
<ul>{"".join(f"<li>{html.escape(n)}</li>" for n in notes)}</ul>
{"".join(f'<p><img src="{f}" alt="{f}"></p>' for f in figs)}
<h2>Planner decisions</h2>{decisions}
</body></html>"""
    (out / "index.html").write_text(page)
    return out / "index.html"


def _plan(p: list[dict[str, Any]] | None) -> str:
    if not p:
        return "-"
    return "; ".join(
        f"{s['stage']}: {'+'.join(v['name'] for v in s['variants'])} "
        f"{s['replicas']}x{s['cores']}c b{s['batch']}"
        for s in p
    )


def verdict(results: list[RunResult]) -> tuple[str, list[str]]:
    """A one-line verdict comparing themis to hpa, and explanatory notes with figures."""
    by = {r.policy: r for r in results}
    if "hpa" not in by or "themis" not in by:
        return "incomplete run", []
    h, t = by["hpa"], by["themis"]
    vh, vt = h.report.violation_rate, t.report.violation_rate
    cost = t.core_seconds / h.core_seconds if h.core_seconds else math.nan
    notes = [
        f"hpa: {vh:.2%} violations, {h.core_seconds:.0f} core-s; "
        f"themis: {vt:.2%} violations, {t.core_seconds:.0f} core-s (cost ratio {cost:.2f}).",
    ]
    for r in results:
        if not r.report.kept_up:
            notes.append(f"{r.policy}: the load generator did not keep up: {r.report.reason}")
    if vt < vh and cost <= 1.25:
        v = (
            f"themis had fewer SLO violations than hpa ({vt:.2%} vs {vh:.2%}) "
            f"at comparable cost ({cost:.2f}x the core-seconds)."
        )
    elif vt < vh:
        v = f"themis had fewer violations ({vt:.2%} vs {vh:.2%}) but cost {cost:.2f}x hpa."
    else:
        v = (
            f"themis did NOT have fewer violations than hpa here ({vt:.2%} vs {vh:.2%}; "
            f"cost {cost:.2f}x); see the figures."
        )
    return v, notes


def print_summary(console: Console, results: list[RunResult]) -> None:
    console.print(table(results))
