"""End to end: captures -> features -> split -> model -> switches -> metrics.

Contract: `evaluate(...)` loads the committed integer model and its torch weights (or the
given ones) and scores the packets of the chosen split: the held-out connection test split of
the shared captures by default, and *every* packet of captures given with `covert`/`benign`
(external captures are scored whole unless a split is asked for). It runs the integer
reference, the quantized torch model and the switch emulator (vectorised) on every packet;
`bit_exact` is true only if all three agree on every packet (verdicts and logits). Flow
figures come from the exit switch's decision after k packets (flowstate.py), per flow and per
direction (metrics.flow_report). `frames(...)` replays the first N packets of every capture
as real frames through the whole chain (entry switch parsing real frames -> model switches ->
exit switch), in-process or in network namespaces, and reports agreement with the vectorised
path.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from tidal.core.errors import TidalError
from tidal.innet import dataset, metrics
from tidal.innet.chain import Chain, flows_from_decisions
from tidal.innet.fabric import Fabric
from tidal.innet.flowstate import (
    DEFAULT_K,
    DEFAULT_SLOTS,
    DEFAULT_TIMEOUT_US,
    default_need,
    flow_decisions,
)
from tidal.innet.mapper import Budget, Mapping, map_network
from tidal.innet.netns import NamespaceFabric
from tidal.innet.qmodel import NetNN, torch_predict

WEIGHTS = Path(__file__).parent / "weights"
DEFAULT_MODEL = WEIGHTS / "netnn_channel.pt"
Split = Literal["train", "test", "all"]


def load_model(path: Path = DEFAULT_MODEL) -> NetNN:
    """The committed QAT model (state dict + shape)."""
    if not path.exists():
        raise TidalError(f"model {str(path)!r} not found: run `tidal innet train` first")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    shape = blob["shape"]
    side = tuple(bool(v) for v in shape[5:].tolist()) or (True,)
    m = NetNN(
        int(shape[0]), int(shape[1]), int(shape[2]), bool(shape[3]), bool(shape[4]), side=side
    )
    m.load_state_dict(blob["state"])
    return m.eval()


def save_model(m: NetNN, path: Path, k: int = DEFAULT_K, need: int | None = None) -> None:
    """Save the model with the decision window `k` and the quorum `need` (covert votes of
    k that flag a flow; None: 3/4 of k) it was validated for."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = torch.tensor(
        [m.c1, m.c2, m.hidden, int(m.use_bytes), int(m.use_timing), *(int(v) for v in m.side)]
    )
    blob: dict[str, Any] = {"state": m.state_dict(), "shape": shape, "k": torch.tensor(k)}
    if need is not None:
        blob["need"] = torch.tensor(need)
    torch.save(blob, path)


def model_rule(path: Path = DEFAULT_MODEL) -> tuple[int, int | None]:
    """The decision rule a saved model was validated for, read in one load: its window k
    (voting packets; `DEFAULT_K` when not stored or no file) and its quorum (None: not
    stored, 3/4 of k)."""
    if not path.exists():
        return DEFAULT_K, None
    blob = torch.load(path, map_location="cpu", weights_only=True)
    k = int(blob["k"]) if "k" in blob else DEFAULT_K
    return k, int(blob["need"]) if "need" in blob else None


def model_k(path: Path = DEFAULT_MODEL) -> int:
    """The decision window (k voting packets) a saved model was validated for."""
    return model_rule(path)[0]


def model_need(path: Path = DEFAULT_MODEL) -> int | None:
    """The quorum a saved model was validated for (None: not stored, 3/4 of its k)."""
    return model_rule(path)[1]


def select(
    covert: list[Path] | None, benign: list[Path] | None, split: Split | None, synthetic: int = 0
) -> tuple[dataset.PacketSet, str]:
    """The packets to evaluate and the split's name: the connection test split of the shared
    captures by default; all packets of given captures unless `split` says otherwise."""
    given = bool(covert or benign)
    if not given:
        covert, benign = dataset.default_dirs()
    ps = dataset.load(list(covert or []), list(benign or []), synthetic_flows=synthetic)
    split = split or ("all" if given else "test")
    if split == "all":
        return ps, "all (external captures scored whole)" if given else "all"
    return ps.subset_flows(dataset.split(ps)[split]), split


def evaluate(
    covert: list[Path] | None = None,
    benign: list[Path] | None = None,
    model_path: Path = DEFAULT_MODEL,
    split: Split | None = None,
    budget: Budget | None = None,
    k: int = DEFAULT_K,
    need: int | None = None,
    masked: bool = True,
    emulate: bool = True,
    synthetic: int = 0,
) -> dict[str, Any]:
    """The figures of the issue for one model on one packet set."""
    ps, split_name = select(covert, benign, split, synthetic)
    model = load_model(model_path)
    net = model.to_int()
    x = ps.x if masked else ps.x_raw
    ref = net.predict(x, ps.side)
    tp = torch_predict(model, x, ps.side)
    same = bool(np.array_equal(ref, tp))
    mapping = map_network(net, budget or Budget())
    if emulate and net.use_bytes:
        verdict, logits = Fabric(mapping).run_batch(x, ps.side)
        same = same and bool(np.array_equal(verdict, ref))
        same = same and bool(np.array_equal(logits, net.forward(x, ps.side)))
    else:
        same = False
    rep = metrics.flow_report(ref, ps, k, need)
    chain = Chain(mapping, k, DEFAULT_SLOTS, DEFAULT_TIMEOUT_US)
    out: dict[str, Any] = {
        **{
            key: rep[key]
            for key in (
                "covert_recall",
                "benign_false_positive_rate",
                "flow_accuracy",
                "f1",
                "packet_accuracy",
                "benign_packet_accuracy",
                "return_flagged_rate",
            )
        },  # fmt: skip
        "bit_exact": same,
        "switches": len(mapping.programs) + 2,
        "model_switches": len(mapping.programs),
        "max_stages_per_switch": mapping.max_stages,
        "header_bits": mapping.header_bits,
        "register_bytes": mapping.register_bytes,
        "flows": rep["flows"],
        "covert_flows": rep["covert_flows"],
        "benign_flows": rep["benign_flows"],
        "return_flows": rep["return_flows"],
        "packets": rep["packets"],
        "k": k,
        "need": default_need(k) if need is None else need,
        "mean_packets_to_decision": rep["mean_packets_to_decision"],
        "per_direction": rep["per_direction"],
        "missed_covert": rep["missed_covert"],
        "false_positive_files": rep["false_positive_files"],
        "flow_table_collisions": ps.collisions,
        "synthetic_benign": ps.synthetic_benign,
        "split": split_name,
        "masked": masked,
        "strict_asic": mapping.strict_asic,
        "entry_exit_switches": chain.resources(),
        "capture_issues": [str(i) for i in ps.issues],
    }
    return out


def vectorised(
    net: Any, mapping: Mapping, ps: dataset.PacketSet, k: int, need: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(verdicts, logits, per-flow decisions) of the vectorised path on `ps`."""
    verdict, logits = Fabric(mapping).run_batch(ps.x, ps.side)
    assert ps.inst is not None
    fv, _ = flow_decisions(verdict, ps.inst, ps.flow, len(ps.flows), k, need)
    return verdict, logits, fv


def _raise_exit(_sig: int, _frame: object) -> None:
    raise SystemExit(143)


def frames(
    n: int,
    covert: list[Path] | None = None,
    benign: list[Path] | None = None,
    model_path: Path = DEFAULT_MODEL,
    k: int = DEFAULT_K,
    need: int | None = None,
    netns: bool = True,
    budget: Budget | None = None,
    synthetic: int = 0,
) -> dict[str, Any]:
    """Replay the first `n` packets of every capture as real frames through the chain (in
    network namespaces when `netns`, else in-process) and compare with the vectorised path:
    channel bytes, side features, verdict and logits per packet, decision per flow."""
    if not (covert or benign):
        covert, benign = dataset.default_dirs()
    ps = dataset.first_packets(
        dataset.load(list(covert or []), list(benign or []), synthetic_flows=synthetic), n
    )
    net = load_model(model_path).to_int()
    mapping = map_network(net, budget or Budget())
    chain = Chain(mapping, k, DEFAULT_SLOTS, DEFAULT_TIMEOUT_US, need=need)
    v_verdict, v_logits, v_flows = vectorised(net, mapping, ps, k, need)
    assert ps.frames is not None and ps.ts is not None
    by_file: dict[str, list[int]] = {}
    for i, fid in enumerate(ps.flow.tolist()):
        by_file.setdefault(ps.flows[fid].file, []).append(i)
    agree = np.zeros(len(ps), dtype=bool)
    decision = np.zeros(len(ps), dtype=np.int64)
    transport = "in-process"
    if netns:
        from tidal.innet.netns import unavailable

        why = unavailable()
        if why:
            raise TidalError(f"--frames needs network namespaces: {why} (use --in-process)")
        transport = "network namespaces"
    with contextlib.ExitStack() as stack:
        if netns and threading.current_thread() is threading.main_thread():
            # SIGTERM must unwind through the fabric's teardown (processes, namespaces)
            old = signal.signal(signal.SIGTERM, _raise_exit)
            stack.callback(signal.signal, signal.SIGTERM, old)
        nf = stack.enter_context(NamespaceFabric(chain, timeout=30.0)) if netns else None
        for _name, rows in by_file.items():
            fr = [ps.frames[i] for i in rows]
            ts = [int(ps.ts[i]) for i in rows]
            res = nf.replay(fr, ts) if nf is not None else chain.run_frames(fr, ts)
            r = np.asarray(rows)
            decision[r] = res.decision
            agree[r] = (
                (res.verdict == v_verdict[r])
                & (res.logits == v_logits[r]).all(axis=1)
                & (res.x == ps.x[r]).all(axis=1)
                & (res.side == ps.side[r]).all(axis=1)
            )
    f_frames = flows_from_decisions(decision, ps.flow, len(ps.flows))
    return {
        "packets": len(ps),
        "captures": len(by_file),
        "packet_agreement": float(agree.mean()) if len(ps) else 1.0,
        "flow_agreement": float((f_frames == v_flows).mean()) if len(ps.flows) else 1.0,
        "bit_exact": bool(agree.all() and np.array_equal(f_frames, v_flows)),
        "transport": transport,
        "frames_per_capture": n,
        "switches": len(chain.ids()),
        "k": k,
        "need": default_need(k) if need is None else need,
        "synthetic_benign": ps.synthetic_benign,
    }
