"""Issue 12's end-to-end check: models the test builds itself (not the zoo), served from a
repository with `tidal serve --model-repository DIR --policy themis` as a real process.

- digits-clf: a scikit-learn pipeline (StandardScaler + classifier) converted with skl2onnx,
  version 1 a logistic regression (4 kB, microseconds a row), version 2 a 1-nearest-neighbour
  classifier over the training images and their 8 one-pixel shifts (3 MB, milliseconds a row);
  accuracies measured here on a held-out split and written to config.yaml;
- text-clf: a two-input text model (input_ids + attention_mask, int64) exported from torch,
  no config.yaml (everything read from the graph).

Checks: every version is profiled automatically (fresh cache: estimated first, measured
after, in /metrics and the model metadata; the cache holds one entry per version), themis
chooses between digits-clf's versions by the load (`variants=auto`): idle, the most accurate
version 2; under open-loop load above version 2's capacity (computed from its measured profile)
the answers come from version 1; when the load falls, from version 2 again. A pinned version is
served by that version, the two-input model answers, and text-clf is unloaded and loaded again
over the repository extension while digits-clf keeps serving. Figures (profiling seconds per
version, unload/load seconds) are printed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip(
    "skl2onnx", reason="skl2onnx is a dev dependency: `make install` (uv pip install -e '.[dev]')"
)
torch = pytest.importorskip("torch", reason="torch (CPU build): `make install` installs it first")

TOKEN = "repository-integration-token"
SEQ = 16
BUDGET_S = 4  # auto-profile bound per version (the default is 60 s): keeps the test short
HOLD_S = 5  # themis variant_hold_s (default 30 s): keeps the return to version 2 short
# themis core_step: whole cores per replica, so version 2's capacity on this machine (two
# replicas at most) stays within the load this test can send next to the server (measured:
# with 0.5-core replicas it was ~400 req/s, and the server and the load generator on 2 busy
# cores could no longer keep an even rate at 1.4x that)
STEP = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_sklearn(root: Path) -> dict[int, float]:
    """digits-clf versions 1 (logistic regression) and 2 (random forest); held-out accuracy."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    xt, xv, yt, yv = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    img = xt.reshape(-1, 8, 8)
    shifted = [np.roll(img, (dy, dx), (1, 2)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    train = {1: (xt, yt), 2: (np.concatenate(shifted).reshape(-1, 64), np.tile(yt, 9))}
    acc: dict[int, float] = {}
    ests = {1: LogisticRegression(max_iter=300), 2: KNeighborsClassifier(1)}
    for ver, est in ests.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn convergence / skl2onnx notices
            p = make_pipeline(StandardScaler(), est).fit(*train[ver])
            onx = to_onnx(
                p, xt[:1], options={id(est): {"zipmap": False}},
                target_opset={"": 17, "ai.onnx.ml": 3},
            )  # fmt: skip
        acc[ver] = float(p.score(xv, yv))
        d = root / "digits-clf" / str(ver)
        d.mkdir(parents=True)
        (d / "model.onnx").write_bytes(onx.SerializeToString())
    lines = ["task: digits", "max_batch_size: 64", "versions:"]
    for ver, a in acc.items():
        lines.append(f"  {ver}: {{accuracy: {a:.4f}, accuracy_source: 'held-out 25% (test)'}}")
    (root / "digits-clf" / "config.yaml").write_text("\n".join(lines) + "\n")
    return acc


def build_text(root: Path) -> None:
    """text-clf version 1: embedding + masked mean + linear, two int64 inputs, from torch."""
    from torch import nn

    class Text(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(1000, 32)
            self.out = nn.Linear(32, 2)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            m = attention_mask.unsqueeze(-1).to(torch.float32)
            h = (self.emb(input_ids) * m).sum(1) / m.sum(1).clamp(min=1.0)
            return self.out(h)

    torch.manual_seed(0)
    model = Text().eval()
    ids = torch.randint(1, 1000, (2, SEQ))
    mask = torch.ones(2, SEQ, dtype=torch.int64)
    d = root / "text-clf" / "1"
    d.mkdir(parents=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (ids, mask), str(d / "model.onnx"),
            input_names=["input_ids", "attention_mask"], output_names=["logits"],
            dynamic_axes={"input_ids": {0: "b"}, "attention_mask": {0: "b"}, "logits": {0: "b"}},
            opset_version=17, dynamo=False,
        )  # fmt: skip


class Server:
    def __init__(self, proc: subprocess.Popen[str], base: str, log: list[str]) -> None:
        self.proc, self.base, self.log = proc, base, log

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.base + path, timeout=30, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return httpx.post(self.base + path, json=body, timeout=60, **kw)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[int, float]]]:
    tmp = tmp_path_factory.mktemp("repo12")
    repo = tmp / "repo"
    acc = build_sklearn(repo)
    build_text(repo)
    assert acc[2] > acc[1], acc  # version 2 is the more accurate one (precondition)
    port = _free_port()
    env = {**os.environ, "TIDAL_TOKEN": TOKEN, "TIDAL_CACHE": str(tmp / "cache")}
    cmd = [
        sys.executable, "-m", "tidal.cli.main", "serve", "--model-repository", str(repo),
        "--policy", "themis", "--policy-option", "variants=auto",
        "--policy-option", f"variant_hold_s={HOLD_S}", "--policy-option", f"core_step={STEP}",
        "--port", str(port), "--grpc-port", str(_free_port()),
        "--auto-profile-budget", str(BUDGET_S), "--decisions", str(tmp / "decisions.jsonl"), "-v",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    log: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    srv = Server(proc, f"http://127.0.0.1:{port}", log)
    srv.decisions = tmp / "decisions.jsonl"  # type: ignore[attr-defined]
    srv.cache = tmp / "cache" / "profiles"  # type: ignore[attr-defined]
    try:
        for _ in range(900):
            if proc.poll() is not None:
                raise AssertionError("server exited:\n" + "".join(log))
            try:
                if srv.get("/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("server never became ready:\n" + "".join(log[-50:]))
        yield srv, acc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(timeout=5)  # the log reader ends at the pipe's EOF
        if proc.stdout is not None:
            proc.stdout.close()


_EST = re.compile(r'tidal_variant_profile_estimated\{[^}]*variant="([^"]+)"[^}]*\} (\S+)')


def _estimated(srv: Server) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in _EST.finditer(srv.get("/metrics").text)}


def _digits_body(n: int) -> dict[str, Any]:
    from tidal.models.digits_data import heldout_batch

    x, _ = heldout_batch(n)
    return {"inputs": [{"name": "X", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}]}  # fmt: skip


def test_versions_are_profiled_automatically(served: tuple[Server, dict[int, float]]) -> None:
    srv, _ = served
    est = _estimated(srv)
    assert set(est) == {"digits-clf/1", "digits-clf/2", "text-clf/1"}
    _wait_measured(srv)
    meta = srv.get("/v2/models/digits-clf").json()
    assert meta["parameters"]["profiles"] == {"1": "measured (quick)", "2": "measured (quick)"}
    done = [ln for ln in srv.log if "auto-profile" in ln and ": done in" in ln]
    assert len(done) == 3, done
    for ln in done:
        print(ln.strip())  # the measured profiling time per version
        secs = float(re.search(r"done in ([\d.]+) s", ln).group(1))  # type: ignore[union-attr]
        assert secs <= BUDGET_S + 5.0  # the bound + the point in progress and the stop
    progress = [ln for ln in srv.log if "auto-profile" in ln and "point " in ln]
    assert len(progress) >= 3 * 4  # one progress line per point, >= 4 points per version
    assert len(list(srv.cache.glob("*.quick.json"))) == 3  # type: ignore[attr-defined]
    # while estimated, the planner's decisions said so; once measured, they no longer do
    reasons = [d.get("reason") or "" for d in _decisions(srv)]
    flagged = [r for r in reasons if "conservative estimate (not profiled yet)" in r]
    assert flagged, reasons[:5]
    time.sleep(2.5)  # two more themis ticks on measured profiles
    assert "conservative estimate" not in (_decisions(srv)[-1].get("reason") or "")


def test_two_input_text_model_from_torch(served: tuple[Server, dict[int, float]]) -> None:
    srv, _ = served
    meta = srv.get("/v2/models/text-clf").json()
    assert [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask"]
    ids = np.random.default_rng(0).integers(1, 1000, (3, SEQ)).ravel().tolist()
    body = {"inputs": [
        {"name": "input_ids", "datatype": "INT64", "shape": [3, SEQ], "data": ids},
        {"name": "attention_mask", "datatype": "INT64", "shape": [3, SEQ], "data": [1] * 3 * SEQ},
    ]}  # fmt: skip
    r = srv.post("/v2/models/text-clf/infer", body)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["name"] == "logits" and out["shape"] == [3, 2]


def _decisions(srv: Server) -> list[dict[str, Any]]:
    path: Path = srv.decisions  # type: ignore[attr-defined]
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _wait_measured(srv: Server) -> None:
    t0 = time.monotonic()
    while any(v == 1.0 for v in _estimated(srv).values()):
        assert time.monotonic() - t0 < 240, "".join(srv.log[-40:])
        time.sleep(0.5)


def _capable_limit(srv: Server, version: str) -> float:
    """The highest rate (req/s) at which themis finds digits-clf `version` capable, from the
    measured profiles in the cache (the other stages on their only version): the same check
    the server's planner runs, used here only to pick the test's load levels."""
    from tidal.core.capacity import Capacity
    from tidal.planners.base import PlanContext, StageCandidates
    from tidal.planners.themis import Themis
    from tidal.profiling.cache import CacheEntry

    cache: Path = srv.cache  # type: ignore[attr-defined]
    profs = [CacheEntry.model_validate_json(p.read_text()).profile for p in cache.glob("*.json")]
    order = [st["stage"] for st in _decisions(srv)[-1]["output"]]
    stages = tuple(
        StageCandidates(s, tuple(sorted((p for p in profs if p.name.startswith(s + "/")),
                                        key=lambda p: p.name)))
        for s in order
    )  # fmt: skip
    ctx = PlanContext(
        0.0, (0.0,), None, stages, None, 200.0, Capacity(1, float(os.cpu_count() or 1))
    )
    combo = [
        next(v for v in st.variants if v.name == version) if st.stage == "digits-clf"
        else st.variants[0]
        for st in stages
    ]  # fmt: skip
    th = Themis(variants="auto", core_step=STEP)
    # scanned, not bisected: a larger batch becomes feasible as the rate fills it faster
    grid = [1.0 * 1.02**k for k in range(400)]  # 1 .. 2,700 req/s
    return max((r for r in grid if th.capable(ctx, combo, r)), default=0.0)


def _replay(srv: Server, rate: float, seconds: int) -> list[Any]:
    """Open-loop Poisson load at `rate` req/s for `seconds` on digits-clf; the outcomes."""
    import asyncio

    from tidal.workload.loadgen import LoadGenerator, schedule_from_rates

    gen = LoadGenerator(srv.base + "/v2/models/digits-clf/infer", _digits_body(1), timeout_s=10)
    outcomes, report = asyncio.run(gen.run(schedule_from_rates([rate] * seconds, seed=seconds)))
    print(f"load {rate:.0f} req/s x {seconds} s: {report.counts}, achieved "
          f"{report.achieved_rps:.0f} req/s, kept up: {report.kept_up}")  # fmt: skip
    return outcomes


def _versions(outcomes: list[Any], after_s: float) -> dict[str, int]:
    """Answers per version among the requests sent after `after_s` into the replay."""
    seen: dict[str, int] = {}
    for o in outcomes:
        if o.status == 200 and o.scheduled_s >= after_s:
            seen[o.variant] = seen.get(o.variant, 0) + 1
    return seen


def _switches(decisions: list[dict[str, Any]], since: int = 0) -> list[tuple[str, float, str]]:
    """(version, observed rate, reason) of every applied decision from index `since` on that
    changed digits-clf's version (the version in force before `since` is tracked too, so an
    applied decision that keeps it is not a change)."""
    out, last = [], None
    for i, d in enumerate(decisions):
        for st in d.get("output") or []:
            if st["stage"] == "digits-clf" and d["action"] == "applied":
                v = st["variants"][0]["name"]
                if v != last and i >= since:
                    out.append((v, float(d["inputs"]["rate"] or 0.0), d.get("reason") or ""))
                last = v
    return out


def test_themis_chooses_between_versions_under_load(
    served: tuple[Server, dict[int, float]],
) -> None:
    srv, acc = served
    assert max(acc, key=lambda k: acc[k]) == 2
    _wait_measured(srv)
    # Idle, themis (variants=auto) serves the most accurate version by the repository's
    # accuracies: version 2 (the initial plan runs version 1, the first).
    t0 = time.monotonic()
    while not _switches(_decisions(srv)) or _switches(_decisions(srv))[-1][0] != "digits-clf/2":
        assert time.monotonic() - t0 < 60, _decisions(srv)[-3:]
        time.sleep(0.5)
    cap2, cap1 = _capable_limit(srv, "digits-clf/2"), _capable_limit(srv, "digits-clf/1")
    high, low = 1.4 * cap2, max(2.0, min(0.2 * cap2, 10.0))
    print(f"capable limits from the measured profiles: version 2 {cap2:.0f} req/s, version 1 "
          f"{cap1:.0f} req/s; load: high {high:.0f}, low {low:.1f} req/s")  # fmt: skip
    assert cap2 >= 8.0 and high <= 0.7 * cap1 and high <= 800, "the versions do not differ enough"
    before = len(_decisions(srv))
    up = _replay(srv, high, 15)
    down = _replay(srv, low, HOLD_S + 15)
    switches = _switches(_decisions(srv), since=before)
    print(f"version changes (version, observed req/s, reason): {switches}")
    print(f"answers in the last 5 s of high load: {_versions(up, 10.0)}; "
          f"of low load: {_versions(down, HOLD_S + 10.0)}")  # fmt: skip
    # under load above version 2's capacity: version 1, with the reason; then back to 2
    assert [v for v, _, _ in switches] == ["digits-clf/1", "digits-clf/2"], switches
    (_, r_down, why_down), (_, r_up, why_up) = switches
    assert "digits-clf/2 -> digits-clf/1" in why_down and "cannot carry" in why_down
    assert "digits-clf/1 -> digits-clf/2" in why_up and r_down > cap2 >= r_up
    v_high, v_low = _versions(up, 10.0), _versions(down, HOLD_S + 10.0)
    assert v_high.get("digits-clf/1", 0) >= 0.95 * sum(v_high.values()) > 0, v_high
    assert v_low.get("digits-clf/2", 0) >= 0.95 * sum(v_low.values()) > 0, v_low
    # A pinned version bypasses the weights: version 2 answers; version 1, which the plan no
    # longer runs, is a clear 503 naming it (never a silent answer from another version).
    r2 = srv.post("/v2/models/digits-clf/versions/2/infer", _digits_body(4))
    assert r2.status_code == 200 and str(r2.json()["model_version"]) in ("2", "digits-clf/2")
    r1 = srv.post("/v2/models/digits-clf/versions/1/infer", _digits_body(4))
    assert r1.status_code == 503 and "digits-clf/1" in r1.text
    assert srv.post("/v2/models/digits-clf/versions/7/infer", _digits_body(1)).status_code == 404


def test_unload_and_load_while_serving(served: tuple[Server, dict[int, float]]) -> None:
    srv, _ = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert srv.post("/v2/repository/models/text-clf/unload").status_code in (401, 403)
    idx = {
        (e["name"], e.get("version", "")): e["state"]
        for e in srv.post("/v2/repository/index").json()
    }
    assert idx[("text-clf", "1")] == "READY"
    t0 = time.monotonic()
    r = srv.post("/v2/repository/models/text-clf/unload", headers=auth)
    unload_s = time.monotonic() - t0
    assert r.status_code == 200, r.text
    states = {e["name"]: e["state"] for e in srv.post("/v2/repository/index").json()}
    assert states["text-clf"] == "UNAVAILABLE"
    assert srv.get("/v2/models/text-clf/ready").status_code in (404, 503)
    assert srv.post("/v2/models/digits-clf/infer", _digits_body(2)).status_code == 200
    t0 = time.monotonic()
    r = srv.post("/v2/repository/models/text-clf/load", headers=auth)
    load_s = time.monotonic() - t0
    assert r.status_code == 200, r.text
    assert srv.get("/v2/models/text-clf/ready").status_code == 200
    print(f"unload {unload_s:.2f} s, load (cached profile, worker start) {load_s:.2f} s")
    meta = srv.get("/v2/models/text-clf").json()
    assert meta["parameters"]["profiles"] == {"1": "measured (quick)"}  # cache hit on reload
