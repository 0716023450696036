"""Modulation counters in the flow table, the size-alphabet / channel-removal augmentation,
and nested selection inside the training groups."""

from __future__ import annotations

from typing import Any

import numpy as np

from tidal.innet import augment, dataset, logo
from tidal.innet.flowstate import FlowTable, flow_code
from tidal.innet.train import TrainConfig

KEY = (6, b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", 4000, 9999)


def _run(lens: list[int], gaps: list[int]) -> list[tuple[int, ...]]:
    t, ts, out = FlowTable(slots=16), 0, []
    for n, g in zip(lens, gaps, strict=True):
        ts += g
        out.append(t.update(KEY, ts, n).side)
    return out


def test_modulation_counters_see_a_size_alphabet_and_a_gap_alphabet() -> None:
    n = 12
    size = _run([1000 + i % 2 for i in range(n)], [300_000] * n)  # size channel, regular gaps
    const = _run([5] * n, [24_000] * n)  # polling: nothing modulated
    timing = _run([12] * n, [40_000 if i % 2 else 80_000 for i in range(n)])  # gap channel
    assert size[-1][5:] == (flow_code(n, 2), flow_code(n, n - 1), flow_code(n, 0))
    assert const[-1][5:] == (flow_code(n, 1), flow_code(n, 0), flow_code(n, 0))
    assert timing[-1][5:] == (flow_code(n, 1), flow_code(n, 0), flow_code(n, n - 2))
    assert size[0][5:] == (0, 0, 0)  # a first packet has no flow history


def test_pure_acks_carry_no_length_symbol() -> None:
    # request/ACK interleaving and a handshake of empty segments are not length modulation:
    # the counters see the data packets' lengths only (flowstate module docstring)
    n = 12
    acked = _run([0, 0] + [5, 0] * 5, [24_000] * n)
    assert acked[-1][5:7] == (flow_code(n, 1), flow_code(n, 0))  # one length, no change
    two = _run([0, 7, 0, 5, 0, 5, 0, 7, 0, 7, 0, 5], [24_000] * n)
    assert two[-1][5:7] == (flow_code(n, 2), flow_code(n, 3))  # 7 5 5 7 7 5: 3 changes
    assert acked[1][5:7] == (flow_code(2, 0), flow_code(2, 0))  # no data packet yet


def _covert_set(n: int = 400) -> dataset.PacketSet:
    rng = np.random.default_rng(0)
    flows = [
        dataset.FlowInfo("nefias/t/TCC_A_40_80.pcap", KEY, 1, False, "c1"),
        dataset.FlowInfo("benign-zeek/http/a.pcap", KEY, 0, False, "b1"),
    ]
    flow = np.repeat([0, 1], n // 2)
    x = np.zeros((n, 68), np.uint8)
    x[:, 12:14] = (0x08, 0x00)
    x[:, 23] = 6
    paylen = np.where(flow == 0, 12, rng.integers(1, 1400, n))
    x[:, 16], x[:, 17] = paylen >> 8, paylen & 0xFF
    ts = np.cumsum(rng.choice([40_000, 80_000], n))
    return dataset.PacketSet(
        x=x, x_raw=x.copy(), side=np.zeros((n, 8), np.uint8), y=np.where(flow == 0, 1, 0),
        flow=flow, flows=flows, inst=flow.copy(), ts=ts, paylen=paylen,
    )  # fmt: skip


def test_size_alphabet_rewrites_lengths_in_side_features_and_bytes_alike() -> None:
    ps = _covert_set()
    cfg = TrainConfig(size_channel=1.0, max_symbols=3)
    side, x, y = augment.redraw(ps, cfg, np.random.default_rng(1))
    cov = ps.flow == 0
    new_len = x[cov, 16].astype(np.int64) << 8 | x[cov, 17]
    assert 2 <= len(np.unique(new_len)) <= 3 and not np.all(new_len == 12)
    assert np.array_equal(x[~cov], ps.x[~cov])  # benign flows keep their lengths
    assert np.array_equal(y, ps.y)  # a re-encoded channel is still covert
    assert (side[cov][-1, 5] & 15) == len(np.unique(new_len))  # nlen counts the alphabet


def test_channel_removal_is_labeled_benign_with_constant_length_and_regular_gaps() -> None:
    ps = _covert_set()
    side, x, y = augment.redraw(ps, TrainConfig(neutral=1.0), np.random.default_rng(2))
    cov = ps.flow == 0
    assert not y[cov].any()
    assert len(np.unique(x[cov, 16:18], axis=0)) == 1
    assert (side[cov][-1, 6] & 15) == 0  # no length change counted
    # the modulation is gone from the gaps: fewer changed gaps than the 40/80 ms channel
    assert ps.inst is not None and ps.ts is not None and ps.paylen is not None
    before = augment.side_features(ps.inst, ps.ts, ps.paylen)
    assert (side[cov][20:, 7] & 15).max() < (before[cov][20:, 7] & 15).max()


def test_channel_removal_preamble_varies_only_the_first_packets() -> None:
    ps = _covert_set()
    cfg = TrainConfig(neutral=1.0, preamble=4)
    firsts = set()
    for seed in range(8):
        _side, x, y = augment.redraw(ps, cfg, np.random.default_rng(seed))
        cov = np.flatnonzero(ps.flow == 0)
        lens = (x[cov, 16].astype(np.int64) << 8) | x[cov, 17]
        assert not y[cov].any()
        assert len(np.unique(lens[5:])) == 1  # the steady state: one length after packet 5
        firsts.add(len(np.unique(lens[:5])))
    assert max(firsts) > 1  # a preamble of other lengths, on some draws
    without = augment.redraw(ps, TrainConfig(neutral=1.0), np.random.default_rng(0))[1]
    assert len(np.unique(without[ps.flow == 0, 16:18], axis=0)) == 1


def test_nested_selection_sees_only_the_training_groups() -> None:
    flows = []
    for i, name in enumerate(["SCC_A_40", "SCC_B_40", "TCC_A_40_80", "TCC_B_40_80"]):
        flows.append(dataset.FlowInfo(f"nefias/t/{name}.pcap", KEY, 1, False, f"c{i}"))
    for j, fam in enumerate(["http", "ssh", "dns", "tls"]):
        flows.append(dataset.FlowInfo(f"benign-zeek/{fam}/f.pcap", KEY, 0, False, f"b{j}"))
    n = len(flows) * 40
    flow = np.repeat(np.arange(len(flows)), 40)
    y = np.array([flows[f].label for f in flow])
    ps = dataset.PacketSet(
        x=np.zeros((n, 68), np.uint8), x_raw=np.zeros((n, 68), np.uint8),
        side=np.zeros((n, 8), np.uint8), y=y, flow=flow, flows=flows,
    )  # fmt: skip
    seen: list[set[str]] = []

    def fit(tr: dataset.PacketSet, cand: str, inner: bool) -> Any:
        seen.append({f.connection for f in tr.flows})
        # "oracle" flags exactly the covert packets; "all" flags everything
        return lambda te: (te.y > 0).astype(np.int64) if cand == "oracle" else np.ones(len(te))

    for i, fold in enumerate(logo.folds(ps)):
        seen.clear()
        res = logo.run_nested(ps, fit, ("all", "oracle"), ((16, None), (8, None)), 3, only=[i])
        rep = res["folds"][0]
        assert rep["selected"]["candidate"] == "oracle"
        assert rep["selected"]["inner_folds"] <= 3
        assert rep["covert_recall"] == 1.0 and rep["benign_false_positive_rate"] == 0.0
        held = {flows[j].connection for j in logo.fold_split(ps, fold)[1]}
        assert len(seen) == 2 * rep["selected"]["inner_folds"] + 1
        assert all(not (held & conns) for conns in seen)  # never fitted on its test side
    plain = logo.run(ps, lambda tr: fit(tr, "oracle", False), lambda m, te: m(te), 8)
    assert plain["mean"]["covert_recall"] == 1.0
    assert plain["mean"]["benign_false_positive_rate"] == 0.0
    assert len(plain["folds"]) == len(logo.folds(ps))


def test_poller_copy_is_benign_with_a_strict_two_length_alternation() -> None:
    ps = _covert_set()
    side, x, y = augment.redraw(ps, TrainConfig(alternate=1.0), np.random.default_rng(3))
    cov = ps.flow == 0
    assert not y[cov].any() and np.array_equal(y[~cov], ps.y[~cov])
    lens = (x[cov, 16].astype(np.int64) << 8) | x[cov, 17]
    assert len(np.unique(lens)) == 2
    assert np.all(lens[1:] != lens[:-1])  # every data packet changes the length
    assert np.array_equal(lens[::2], np.full(len(lens[::2]), lens[0]))
    assert (side[cov][-1, 5] & 15) == 2 and (side[cov][-1, 6] & 15) == 15
    assert np.array_equal(x[~cov], ps.x[~cov])  # benign flows untouched


def test_nested_selection_breaks_saturated_ties_by_the_inner_vote_margin() -> None:
    flows = [
        dataset.FlowInfo(f"nefias/t/{name}.pcap", KEY, 1, False, f"c{i}")
        for i, name in enumerate(["SCC_A_40", "SCC_B_40", "TCC_A_40_80"])
    ]
    flows += [
        dataset.FlowInfo(f"benign-zeek/{fam}/f.pcap", KEY, 0, False, f"b{j}")
        for j, fam in enumerate(["http", "ssh", "dns"])
    ]
    n = len(flows) * 40
    flow = np.repeat(np.arange(len(flows)), 40)
    y = np.array([flows[f].label for f in flow])
    ps = dataset.PacketSet(
        x=np.zeros((n, 68), np.uint8), x_raw=np.zeros((n, 68), np.uint8),
        side=np.zeros((n, 8), np.uint8), y=y, flow=flow, flows=flows, inst=flow.copy(),
    )  # fmt: skip

    def fit(tr: dataset.PacketSet, cand: str, inner: bool) -> Any:
        # both flag every covert packet; "noisy" also flags every 8th benign packet, too few
        # to flag a benign flow: equal inner recall and FPR, a smaller margin
        def pred(te: dataset.PacketSet) -> np.ndarray:
            noise = (np.arange(len(te)) % 8 == 0) if cand == "noisy" else np.zeros(len(te), bool)
            return ((te.y > 0) | ((te.y == 0) & noise)).astype(np.int64)

        return pred

    sel = logo.select(ps, fit, ("noisy", "clean"), ((16, None),), 3)
    rows = {r["candidate"]: r for r in sel["table"]}
    assert rows["noisy"]["score"] == rows["clean"]["score"] == 1.0
    assert rows["clean"]["margin"] > rows["noisy"]["margin"]
    assert sel["candidate"] == "clean"


def _vote_set(shares: list[tuple[int, int]]) -> dataset.PacketSet:
    """One 40-packet flow per (label, covert votes of its 32 voting packets); packets 1-2
    (warm-up) and 35-40 never vote covert."""
    names = iter(["SCC_A_40", "SCC_B_40", "TCC_A_40_80", "TCC_B_40_80"])
    fams = iter(["http", "ssh", "dns", "tls"])
    flows = [
        dataset.FlowInfo(f"nefias/t/{next(names)}.pcap", KEY, 1, False, f"c{i}")
        if lab
        else dataset.FlowInfo(f"benign-zeek/{next(fams)}/f.pcap", KEY, 0, False, f"b{i}")
        for i, (lab, _) in enumerate(shares)
    ]
    flow = np.repeat(np.arange(len(flows)), 40)
    y = np.array([flows[f].label for f in flow])
    n = len(flow)
    return dataset.PacketSet(
        x=np.zeros((n, 68), np.uint8), x_raw=np.zeros((n, 68), np.uint8),
        side=np.zeros((n, 8), np.uint8), y=y, flow=flow, flows=flows, inst=flow.copy(),
    )  # fmt: skip


def _votes(shares: list[tuple[int, int]]) -> np.ndarray:
    out = []
    for _, v in shares:
        p = np.zeros(40, np.int64)
        p[2 : 2 + v] = 1  # the first v voting packets vote covert
        out.append(p)
    return np.concatenate(out)


def test_quorum_is_the_centre_of_the_best_inner_quorums() -> None:
    # inner covert flows got 30 and 31 covert votes of 32, benign ones 20 and 4: quorums
    # 21..30 separate them; the centre (lower middle) is 25
    shares = [(1, 30), (1, 31), (0, 20), (0, 4)]
    need, rows = logo.choose_need([(_votes(shares), _vote_set(shares))], 32)
    assert need == 25
    assert rows is not None and [r["need"] for r in rows] == list(range(17, 33))
    best = [r["need"] for r in rows if r["score"] == 1.0]
    assert best == list(range(21, 31))
    # benign flows far below half: the majority floor bounds the interval (17..30 -> 23)
    low = [(1, 30), (1, 31), (0, 3), (0, 4)]
    assert logo.choose_need([(_votes(low), _vote_set(low))], 32)[0] == 23
    # no separating quorum: the best score's quorums still decide (recall 1/2, FPR 0 at
    # 26..32 beats 1 - 1/2 below: FPR counts as much as recall)
    mixed = [(1, 31), (1, 20), (0, 25), (0, 4)]
    need, _ = logo.choose_need([(_votes(mixed), _vote_set(mixed))], 32)
    assert need is not None and 17 <= need <= 32


def test_quorum_needs_inner_predictions() -> None:
    assert logo.choose_need([], 32) == (None, None)


def test_nested_selection_keeps_the_rule_quorum_and_reports_the_nested_one() -> None:
    shares = [(1, 30), (1, 31), (1, 29), (0, 25), (0, 4), (0, 19)]
    ps = _vote_set(shares)
    votes = {f.connection: v for f, (_, v) in zip(ps.flows, shares, strict=True)}

    def fit(tr: dataset.PacketSet, cand: str, inner: bool) -> Any:
        def pred(te: dataset.PacketSet) -> np.ndarray:
            return _votes([(f.label, votes[f.connection]) for f in te.flows])

        return pred

    res = logo.run_nested(ps, fit, ("only",), ((32, None),), 3)
    flagged = 0
    for i, rep in enumerate(res["folds"]):
        sel = rep["selected"]
        assert sel["need"] is None and rep["need"] == 24  # the rule's 3/4 quorum is kept
        assert sel["quorum_table"] is not None and 17 <= sel["nested_quorum"] <= 32
        alt = rep["nested_quorum"]
        assert alt["need"] == sel["nested_quorum"]
        _, te_ids = logo.fold_split(ps, logo.folds(ps)[i])
        te = ps.subset_flows(te_ids)
        again = logo.score(
            _votes([(f.label, votes[f.connection]) for f in te.flows]), te, 32, alt["need"]
        )
        assert alt["benign_false_positive_rate"] == again["benign_false_positive_rate"]
        assert alt["covert_recall"] == again["covert_recall"]
        flagged += round(rep["benign_false_positive_rate"] * rep["benign_flows"])
    assert flagged == 1  # the benign flow with 25 of 32 covert votes, at 24
    assert res["mean"]["covert_recall"] == 1.0
    assert res["mean_nested_quorum"]["folds"] == len(res["folds"])
