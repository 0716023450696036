"""CLI commands of the innet area: train, evaluate, map, p4, bench innet."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

import typer

innet = typer.Typer(help="In-network inference (NetNN): quantized DNN on switches.")


def _budget(stages: int, header_bits: int, register_bytes: int, ops: int, strict: bool) -> Any:
    from pydantic import ValidationError

    from tidal.core.errors import TidalError
    from tidal.innet.mapper import Budget

    try:
        return Budget(
            stages=stages,
            header_bits=header_bits,
            register_bytes=register_bytes,
            ops_per_action=ops,
            strict_asic=strict,
        )
    except ValidationError as e:
        err = e.errors()[0]
        raise TidalError(f"budget {err['loc'][0]}={err.get('input')!r}: {err['msg']}") from e


@innet.command()
def train(
    features: str = typer.Option("channel", help="channel | both | bytes | timing"),
    unmasked: bool = typer.Option(False, help="train on unmasked bytes (shortcut study)"),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="re-draw timing"),
    epochs: int = typer.Option(8),
    max_seconds: float = typer.Option(240.0),
    seed: int = typer.Option(0),
    select: bool = typer.Option(
        True, "--select/--no-select", help="choose augmentation and k by nested validation"
    ),
    out: Path = typer.Option(None, help="model file (default: the package's weights dir)"),
) -> None:
    """Train the QAT model on the training split (whole connections) of the shared captures.
    With --select (channel features, augmented), the size-alphabet augmentation candidate and
    the decision window k are chosen first by leave-one-group-out inside the training split."""
    from tidal.innet import dataset, studies
    from tidal.innet.evaluate import WEIGHTS, save_model
    from tidal.innet.flowstate import DEFAULT_K
    from tidal.innet.train import TrainConfig, train_model

    cov, ben = dataset.default_dirs()
    ps = dataset.load(cov, ben)
    tr = ps.subset_flows(dataset.split(ps)["train"])
    over: dict[str, Any] = {}
    k, need, sel = DEFAULT_K, None, None
    if select and augment and features == "channel" and not unmasked:
        sel = studies.choose(tr)
        over, k, need = studies.CANDIDATES[sel["candidate"]], sel["k"], sel["need"]
    cfg = TrainConfig(
        features=features,  # type: ignore[arg-type]
        masked=not unmasked,
        augment=augment,
        epochs=epochs,
        max_seconds=max_seconds,
        seed=seed,
        **over,
    )
    model = train_model(tr, cfg)
    suffix = "" if not unmasked else "_unmasked"
    path = out or WEIGHTS / f"netnn_{features}{suffix}.pt"
    save_model(model, path, k, need)
    model.to_int().save(path.with_suffix(".npz"))
    chosen = (
        {key: sel[key] for key in ("candidate", "k", "need", "nested_quorum", "inner_folds")}
        if sel
        else None
    )
    typer.echo(json.dumps({
        "model": str(path), "train_flows": len(tr.flows), "packets": len(tr), "k": k,
        "need": need, "selected": chosen, "selection_table": sel["table"] if sel else None,
        "quorum_table": sel["quorum_table"] if sel else None,
    }))  # fmt: skip


_KEYS = [
    "covert_recall", "benign_false_positive_rate", "flow_accuracy", "f1", "packet_accuracy",
    "benign_packet_accuracy", "return_flagged_rate", "bit_exact", "switches",
    "max_stages_per_switch", "header_bits", "register_bytes", "flows", "covert_flows",
    "benign_flows", "return_flows", "packets", "k", "need", "mean_packets_to_decision",
    "per_direction",
    "split", "synthetic_benign",
]  # fmt: skip


@innet.command()
def evaluate(
    covert: list[Path] = typer.Option(None, help="directory of covert captures (repeatable)"),
    benign: list[Path] = typer.Option(None, help="directory of benign captures (repeatable)"),
    model: Path = typer.Option(None, help="model file (default: committed)"),
    split: str = typer.Option(
        "", help="test | train | all (default: test for the shared captures, all for given ones)"
    ),
    unmasked: bool = typer.Option(False, help="evaluate on unmasked bytes"),
    k: int = typer.Option(
        0, min=0, max=255, help="flow decision after k packets (0: the model's validated k)"
    ),
    need: int = typer.Option(
        0,
        min=0,
        max=255,
        help="covert votes of k to flag (0: the model's stored quorum, else 3/4 of k)",
    ),
    frames: int = typer.Option(
        0, min=0, help="replay N packets of every capture as real frames through the chain"
    ),
    in_process: bool = typer.Option(False, help="--frames without network namespaces"),
    logo: bool = typer.Option(False, help="leave-one-group-out: retrain per fold (minutes)"),
    perturb: bool = typer.Option(False, help="fingerprint-perturbation suite on the test split"),
    synthetic: int = typer.Option(0, help="add this many scapy-generated benign flows"),
    stages: int = typer.Option(12),
    header_bits: int = typer.Option(2048),
    register_bytes: int = typer.Option(65536),
    ops_per_action: int = typer.Option(32),
    strict: bool = typer.Option(True, "--strict/--no-strict", help="strict ASIC mode"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Evaluate the committed model on captures: per flow (decision after k packets) and per
    direction, through the switch emulator; or replay real frames (--frames), or run the
    leave-one-group-out (--logo) or fingerprint-perturbation (--perturb) studies."""
    from tidal.core.errors import TidalError
    from tidal.innet import evaluate as ev

    if split not in ("", "test", "train", "all"):
        raise TidalError(f"split must be test, train or all, got {split!r}")
    model_path = model or ev.DEFAULT_MODEL
    saved_k, saved_need = ev.model_rule(model_path)
    if not k and not need:  # the model's validated decision rule (its k and quorum)
        need = saved_need or 0
    k = k or saved_k
    if need > k:
        raise TidalError(f"need must be at most k={k}, got {need}")
    budget = _budget(stages, header_bits, register_bytes, ops_per_action, strict)
    res: dict[str, Any]
    if frames or logo or perturb:
        from tidal.innet import studies

        if frames:
            res = ev.frames(
                frames, covert or None, benign or None, model_path, k, need or None,
                netns=not in_process, budget=budget, synthetic=synthetic,
            )  # fmt: skip
        elif logo:
            res = studies.logo_study(k=k, need=need or None, budget=budget)
        else:
            res = studies.perturbation_study(model_path, k=k, need=need or None)
        typer.echo(json.dumps(res, indent=None if as_json else 1))
        return
    res = ev.evaluate(
        covert=covert or None,
        benign=benign or None,
        model_path=model_path,
        split=split or None,  # type: ignore[arg-type]
        budget=budget,
        k=k,
        need=need or None,
        masked=not unmasked,
        synthetic=synthetic,
    )
    for issue in res["capture_issues"]:
        print(f"warning: {issue}", file=sys.stderr)
    if as_json:
        typer.echo(json.dumps({key: res[key] for key in _KEYS}))
    else:
        for key, v in res.items():
            if key != "capture_issues":
                typer.echo(f"{key}: {v}")


def _load_mapping(
    model: Path | None, stages: int, header_bits: int, register_bytes: int, ops: int, strict: bool
) -> Any:
    from tidal.innet import evaluate as ev
    from tidal.innet.mapper import map_network

    net = ev.load_model(model or ev.DEFAULT_MODEL).to_int()
    return map_network(net, _budget(stages, header_bits, register_bytes, ops, strict))


@innet.command("map")
def map_cmd(
    model: Path = typer.Option(None),
    stages: int = typer.Option(12),
    header_bits: int = typer.Option(2048),
    register_bytes: int = typer.Option(65536),
    ops_per_action: int = typer.Option(32),
    strict: bool = typer.Option(True, "--strict/--no-strict"),
    out: Path = typer.Option(None, help="write per-switch programs (JSON) here"),
) -> None:
    """Map the model onto switches under a budget; print the summary."""
    m = _load_mapping(model, stages, header_bits, register_bytes, ops_per_action, strict)
    if out:
        m.save(out)
    typer.echo(json.dumps(m.summary(), indent=1))


@innet.command()
def p4(
    out: Path = typer.Option(Path("innet-p4"), help="output directory"),
    model: Path = typer.Option(None),
    stages: int = typer.Option(12),
    strict: bool = typer.Option(True, "--strict/--no-strict"),
) -> None:
    """Emit P4_16 (v1model) source for each switch (not compiled here: no P4 compiler)."""
    from tidal.innet.p4 import write_p4

    m = _load_mapping(model, stages, 2048, 65536, 32, strict)
    for path in write_p4(m, out):
        typer.echo(str(path))


def _bench(kind: Literal["ablation", "latency"]) -> None:
    import runpy

    from tidal.core.shared import repo_root

    runpy.run_path(str(repo_root() / "benchmarks" / f"bench_innet_{kind}.py"), run_name="__main__")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add this area's commands to `app` and its benchmarks to `bench`."""
    app.add_typer(innet, name="innet")

    @bench.command("innet-ablation")
    def bench_ablation() -> None:
        """Ablations (bytes / timing / both, masked / unmasked, cross-technique)."""
        _bench("ablation")

    @bench.command("innet-latency")
    def bench_latency() -> None:
        """Per-packet decision latency: modeled switch path vs the CPU path."""
        _bench("latency")
