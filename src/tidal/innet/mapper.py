"""Partition the integer network across switches under a per-switch resource budget.

Contract: `map_network(net, budget)` returns a `Mapping` whose every program respects the
budget (stages, header bits, register bytes, ops per action, tables per stage), or raises
`TidalError` naming the layer that does not fit and by how much. Layers are packed greedily
onto a switch; a layer too big for one switch is split across R parallel switches either by
output (channel / neuron: each replica emits its slice of activations) or by input x output
(replica (i, j) emits partial sums of output slice j over input slice i; the downstream switch
sums them in its window registers and finishes the layer). R grows until every replica fits.

Resource model (documented in docs/innet.md): stage 0 parses and accumulates the window in
registers; each further stage holds at most `tables_per_stage` tables, each action at most
`ops_per_action` element operations; a table writes one accumulator lane, so products are
spread over lanes and summed by an adder tree. In strict-ASIC mode, weight x activation is a
lookup (a table keyed on the activation whose entries hold the products); otherwise a `mac`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

from tidal.core.errors import TidalError
from tidal.innet.intref import IntNet
from tidal.innet.program import (
    HOST,
    STREAM_BYTES,
    STREAM_IAT,
    STREAM_VERDICT,
    Accept,
    Emit,
    Mapping,
    SwitchProgram,
    Table,
)

if TYPE_CHECKING:
    from tidal.innet.binary import BinRef

HEADER_FIXED_BITS = 112  # version, stream, index, replica, fragment, nfrag, width, offset, count


class Budget(BaseModel):
    """Per-switch resources (defaults: a Tofino-like ASIC)."""

    stages: int = Field(default=12, ge=2, le=64, description="match-action stages per switch")
    header_bits: int = Field(
        default=2048, ge=HEADER_FIXED_BITS + 8, description="custom header size"
    )
    register_bytes: int = Field(default=65536, ge=16, description="register memory per switch")
    ops_per_action: int = Field(default=32, ge=1, le=4096, description="element ops per action")
    tables_per_stage: int = Field(default=16, ge=1, le=256, description="tables per stage")
    strict_asic: bool = Field(default=True, description="no variable x variable multiplication")
    slots: int = Field(
        default=64, ge=1, le=65536, description="samples in flight per switch window"
    )
    max_parallel: int = Field(default=16, ge=1, le=256, description="largest split of one layer")


@dataclass
class LayerSpec:
    """One linear layer of the integer network with its post-processing."""

    name: str
    w: np.ndarray  # (n_out, n_in)
    lo: int
    hi: int
    bias: np.ndarray
    shift: int | None  # None: final logits (bias + verdict)
    pool: bool
    embed: np.ndarray | None = None  # (F, 256, n_out) tables keyed on the side features
    sign: bool = False  # binarized: output bit = (acc + bias >= 0) instead of requantizing

    @property
    def n_in(self) -> int:
        return int(self.w.shape[1])

    @property
    def n_out(self) -> int:
        return int(self.w.shape[0])

    @property
    def n_post(self) -> int:
        return self.n_out // 2 if self.pool else self.n_out


def layer_specs(net: IntNet) -> list[LayerSpec]:
    """The four layers as dense integer matrices over flat (channel-major) vectors."""
    c1, k = net.w1.shape
    l1 = 68 - k + 1
    w1 = np.zeros((c1 * l1, 68), dtype=np.int64)
    for c in range(c1):
        for p in range(l1):
            w1[c * l1 + p, p : p + k] = net.w1[c]
    c2 = net.w2.shape[0]
    lp = l1 // 2
    l2 = (lp - k) // 2 + 1
    w2 = np.zeros((c2 * l2, c1 * lp), dtype=np.int64)
    for o in range(c2):
        for p in range(l2):
            for c in range(c1):
                w2[o * l2 + p, c * lp + 2 * p : c * lp + 2 * p + k] = net.w2[o, c]
    specs = [
        LayerSpec("conv1", w1, 0, 255, np.repeat(net.b1, l1), net.s1, True),
        LayerSpec("conv2", w2, 0, 127, np.repeat(net.b2, l2), net.s2, False),
        LayerSpec("fc1", net.w3, 0, 127, net.b3, net.s3, False, embed=net.tables),
        LayerSpec("fc2", net.w4, 0, 127, net.b4, None, False),
    ]
    if not net.use_bytes:
        raise TidalError("the timing-only ablation has no byte layers to map; map 'both'")
    return specs


@dataclass
class Part:
    """The share of one layer a switch computes."""

    layer: LayerSpec
    in_idx: np.ndarray  # inputs (layer coordinates) this part multiplies
    out_idx: np.ndarray  # outputs (pre-pool layer coordinates) this part produces
    partial: bool  # emit raw partial sums (input split) instead of finished activations
    with_embed: bool


class _Builder:
    """Builds the staged tables of one switch."""

    def __init__(self, budget: Budget) -> None:
        self.b = budget
        self.stages: list[list[Table]] = []
        self.fields: dict[str, int] = {}
        self.n = 0

    def _name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n}"

    def phase(self, tables: list[Table]) -> None:
        """Independent tables: packed into consecutive stages of at most T tables."""
        t = self.b.tables_per_stage
        for i in range(0, len(tables), t):
            self.stages.append(tables[i : i + t])

    def chunks(self, n: int) -> list[range]:
        g = self.b.ops_per_action
        return [range(i, min(n, i + g)) for i in range(0, n, g)]

    def elementwise(
        self,
        kind: str,
        dst: str,
        src: str,
        n: int,
        src_idx: list[int],
        dst_off: int = 0,
        **kw: object,
    ) -> None:
        tables = []
        for ch in self.chunks(n):
            extra: dict[str, object] = {}
            for key, val in kw.items():
                extra[key] = [val[i] for i in ch] if isinstance(val, list) else val
            tables.append(
                Table(
                    name=self._name(kind),
                    kind=kind,
                    dst=dst,
                    dst_idx=[dst_off + i for i in ch],
                    src=src,
                    src_idx=[src_idx[i] for i in ch],
                    **extra,  # type: ignore[arg-type]
                )
            )
        self.phase(tables)

    def post(self, layer: LayerSpec, src: str, out_idx: np.ndarray, local: bool) -> str:
        """Requantize (+ pool) or finish the logits; returns the output field."""
        n = len(out_idx)
        src_idx = list(range(n)) if local else [int(i) for i in out_idx]
        bias = [int(layer.bias[i]) for i in out_idx]
        if layer.shift is None:
            # verdict = [decision, logit 0, logit 1]
            self.fields["verdict"] = n + 1
            self.elementwise("bias", "verdict", src, n, src_idx, dst_off=1, bias=bias)
            self.phase([Table(self._name("verdict"), "verdict", "verdict", [0], "verdict", [1, 2])])
            return "verdict"
        a = f"a_{layer.name}"
        self.fields[a] = n
        if layer.sign:
            self.elementwise("sign", a, src, n, src_idx, bias=bias)
        else:
            self.elementwise("requant", a, src, n, src_idx, bias=bias, shift=layer.shift)
        if not layer.pool:
            return a
        p = f"p_{layer.name}"
        self.fields[p] = n // 2
        tables = []
        for ch in self.chunks(n // 2):
            tables.append(
                Table(
                    self._name("max"),
                    "max",
                    p,
                    list(ch),
                    a,
                    [2 * i for i in ch],
                    [2 * i + 1 for i in ch],
                )
            )
        self.phase(tables)
        return p

    def mac(self, part: Part, src: str, embed_key: int) -> str:
        """Products into lanes, then an adder tree; returns the field holding the sums."""
        layer, b = part.layer, self.b
        outs = part.out_idx
        n_out = len(outs)
        specs: list[tuple[int, np.ndarray, np.ndarray | None]] = []  # (key, local outs, rows)
        for i in part.in_idx:
            col = layer.w[outs, i]
            nz = np.flatnonzero(col)
            if nz.size:
                specs.append((int(i), nz, None))
        if part.with_embed and layer.embed is not None:
            for f in range(layer.embed.shape[0]):
                emb = layer.embed[f][:, outs]
                nz = np.flatnonzero(np.any(emb != 0, axis=0))
                if nz.size:
                    specs.append((embed_key + f, nz, emb))
        tables: list[tuple[int, Table]] = []
        for key, nz, rows in specs:
            for ch in self.chunks(len(nz)):
                loc = nz[list(ch)]
                if rows is not None:
                    t = Table("", "lut", "", loc.tolist(), "in", key=key, lo=0)
                    t.entries = rows[:, loc]
                elif b.strict_asic:
                    vals = np.arange(layer.lo, layer.hi + 1, dtype=np.int64)
                    prods = vals[:, None] * layer.w[outs[loc], key][None, :]
                    t = Table("", "lut", "", loc.tolist(), src, key=key, lo=layer.lo)
                    t.entries = prods
                else:
                    t = Table("", "mac", "", loc.tolist(), src, key=key)
                    t.weights = layer.w[outs[loc], key].tolist()
                tables.append((len(tables), t))
        # Stage j // T holds tables j..; within a stage a table takes the first lane none of
        # whose elements it writes is already written there (sparse convolutions need few).
        t_per = b.tables_per_stage
        lane_of: list[int] = []
        for s0 in range(0, len(tables), t_per):
            used: list[set[int]] = []
            for _j, t in tables[s0 : s0 + t_per]:
                dst = set(t.dst_idx)
                k = next((k for k, u in enumerate(used) if not (u & dst)), len(used))
                if k == len(used):
                    used.append(set())
                used[k] |= dst
                lane_of.append(k)
        n_lanes = max(lane_of, default=0) + 1
        lanes = [f"acc_{layer.name}_{k}" for k in range(n_lanes)]
        touched: list[set[int]] = [set() for _ in range(n_lanes)]
        for lane in lanes:
            self.fields[lane] = n_out
        mac_tables = []
        for (_j, t), k in zip(tables, lane_of, strict=True):
            t.name = self._name("lut" if t.kind == "lut" else "mac")
            t.dst = lanes[k]
            touched[k].update(t.dst_idx)
            mac_tables.append(t)
        self.phase(mac_tables)
        width = n_lanes
        while width > 1:
            half = (width + 1) // 2
            level = []
            for k in range(width - half):
                src_lane, dst_lane = k + half, k
                elems = sorted(touched[src_lane])
                for ch in self.chunks(len(elems)):
                    idx = [elems[i] for i in ch]
                    level.append(
                        Table(self._name("add"), "add", lanes[dst_lane], idx, lanes[src_lane], idx)
                    )
                touched[dst_lane].update(touched[src_lane])
            self.phase(level)
            width = half
        return lanes[0]


def _check_hazards(stages: list[list[Table]]) -> None:
    for s, tables in enumerate(stages):
        written: set[tuple[str, int]] = set()
        for t in tables:
            w = {(t.dst, i) for i in t.dst_idx}
            if w & written:
                raise AssertionError(f"stage {s + 1}: two tables write {sorted(w & written)[0]}")
            written |= w
        for t in tables:
            reads = {(t.src, i) for i in t.src_idx + t.src2_idx}
            if t.key >= 0:
                reads.add((t.src, t.key))
            if t.dst != t.src:
                hazard = reads & written
                if hazard:
                    raise AssertionError(f"stage {s + 1}: {t.name} reads {sorted(hazard)[0]}")


@dataclass
class _Upstream:
    """How the next switch receives the previous group's output."""

    accepts: list[Accept]
    size: int
    pending: LayerSpec | None  # layer whose post-op the consumer must run (input split)
    producers: list[int]


def _build_switch(
    sw_id: int,
    parts: list[Part],
    up: _Upstream,
    budget: Budget,
    stream: int,
    replica: int,
) -> SwitchProgram:
    b = _Builder(budget)
    accepts = list(up.accepts)
    size = up.size
    embed_key = -1
    n_side = max(
        (p.layer.embed.shape[0] for p in parts if p.with_embed and p.layer.embed is not None),
        default=0,
    )
    if n_side:
        embed_key = size
        accepts.append(Accept(STREAM_IAT, 0, size, n_side, "concat", 1, 1))
        size += n_side
    b.fields["in"] = size
    cur = "in"
    if up.pending is not None:
        lay = up.pending
        cur = b.post(lay, "in", np.arange(lay.n_out), local=False)
    for part in parts:
        acc = b.mac(part, cur, embed_key)
        cur = acc if part.partial else b.post(part.layer, acc, part.out_idx, local=True)
    _check_hazards(b.stages)
    out_len = b.fields[cur]
    last = parts[-1]
    width = 4 if (last.partial or last.layer.shift is None) else 1
    frag = (budget.header_bits - HEADER_FIXED_BITS) // (8 * width)
    if frag < 1:
        raise TidalError(
            f"layer {last.layer.name}: one {8 * width}-bit element needs "
            f"{HEADER_FIXED_BITS + 8 * width} header bits, budget header_bits is "
            f"{budget.header_bits} (short by {HEADER_FIXED_BITS + 8 * width - budget.header_bits})"
        )
    emit = Emit(cur, out_len, stream, replica, width, min(frag, out_len), [])
    per_slot = 4 * size + 8  # the input vector (32-bit cells) + frame counter + sample index
    slots = min(budget.slots, budget.register_bytes // per_slot)
    if slots >= 1:  # a power of two: the slot is `index & (slots - 1)` on the data plane
        slots = 1 << (slots.bit_length() - 1)
    if slots < 1:
        raise TidalError(
            f"layer {parts[0].layer.name}: the window of {size} elements needs {per_slot} "
            f"register bytes per sample, budget register_bytes is {budget.register_bytes} "
            f"(short by {per_slot - budget.register_bytes})"
        )
    in_bits = max(
        [HEADER_FIXED_BITS + 8 * a.width * math.ceil(a.length / a.frags) for a in accepts]
    )
    prog = SwitchProgram(
        switch_id=sw_id,
        name=f"s{sw_id}_" + "+".join(p.layer.name for p in parts) + (f"_r{replica}"),
        layers=[p.layer.name for p in parts],
        accepts=accepts,
        input_size=size,
        slots=slots,
        stages=b.stages,
        emit=emit,
        fields=b.fields,
        header_bits=max(in_bits, HEADER_FIXED_BITS + 8 * width * emit.frag_elems),
        register_bytes=slots * per_slot,
    )
    return prog


def _fits(p: SwitchProgram, budget: Budget) -> bool:
    return p.n_stages <= budget.stages and p.max_ops <= budget.ops_per_action


def _split(n: int, r: int, unit: int) -> list[np.ndarray]:
    units = n // unit
    bounds = [round(i * units / r) * unit for i in range(r + 1)]
    return [np.arange(bounds[i], bounds[i + 1]) for i in range(r) if bounds[i + 1] > bounds[i]]


def binary_layer_specs(ref: BinRef) -> list[LayerSpec]:
    """The binarized network as integer layers over bits (0/1 for -1/+1).

    A {-1,+1} dot product is `2 * sum_i a_i * s_i - sum_i s_i` with a_i in {0,1} and
    s_i = +-1 the weight: each input bit adds +-2 (its XNOR with the weight bit, the popcount
    done by the adder tree) and the constant folds into the bias. No multiplication remains.
    """
    c1, k = ref.w1.shape
    l1 = 68 - k + 1
    w1 = np.zeros((c1 * l1, 68), dtype=np.int64)
    for c in range(c1):
        for p in range(l1):
            w1[c * l1 + p, p : p + k] = ref.w1[c]
    c2 = ref.w2.shape[0]
    lp = l1 // 2
    l2 = (lp - k) // 2 + 1
    s2 = np.where(ref.w2, 1, -1)
    w2 = np.zeros((c2 * l2, c1 * lp), dtype=np.int64)
    for o in range(c2):
        for p in range(l2):
            for c in range(c1):
                w2[o * l2 + p, c * lp + 2 * p : c * lp + 2 * p + k] = s2[o, c]
    s3, s4 = np.where(ref.w3, 1, -1), np.where(ref.w4, 1, -1)
    return [
        LayerSpec("conv1", w1, 0, 255, np.repeat(ref.b1, l1), 0, True, sign=True),
        LayerSpec(
            "conv2", 2 * w2, 0, 1, np.repeat(ref.t2, l2) - w2.sum(axis=1), 0, False, sign=True
        ),
        LayerSpec(
            "fc1", 2 * s3, 0, 1, ref.t3 - s3.sum(axis=1), 0, False, embed=ref.e3[None], sign=True
        ),
        LayerSpec("fc2", 2 * s4, 0, 1, ref.b4 - s4.sum(axis=1), None, False),
    ]


def map_network(net: IntNet | BinRef, budget: Budget | None = None) -> Mapping:
    """Map the integer network onto switches (see module contract)."""
    budget = budget or Budget()
    layers = binary_layer_specs(net) if not isinstance(net, IntNet) else layer_specs(net)
    in_frag = min(68, (budget.header_bits - HEADER_FIXED_BITS) // 8)
    up = _Upstream(
        [Accept(STREAM_BYTES, 0, 0, 68, "concat", 1, math.ceil(68 / in_frag))], 68, None, []
    )
    entry: dict[int, list[int]] = {STREAM_BYTES: [], STREAM_IAT: []}
    programs: list[SwitchProgram] = []
    stream = 2
    i = 0
    while i < len(layers):
        sw_id = len(programs)
        whole = [
            Part(
                layers[i],
                np.arange(layers[i].n_in),
                np.arange(layers[i].n_out),
                False,
                layers[i].embed is not None,
            )
        ]
        prog = _build_switch(sw_id, whole, up, budget, stream, 0)
        if _fits(prog, budget):
            parts = whole
            # Greedily add the following layers to this switch while it still fits.
            while i + 1 < len(layers):
                nxt = layers[i + 1]
                cand = parts + [
                    Part(
                        nxt, np.arange(nxt.n_in), np.arange(nxt.n_out), False, nxt.embed is not None
                    )
                ]
                p2 = _build_switch(sw_id, cand, up, budget, stream, 0)
                if not _fits(p2, budget):
                    break
                parts, prog, i = cand, p2, i + 1
            group = [prog]
            nxt_up = _Upstream([], 0, None, [sw_id])
            nxt_up.accepts = [
                Accept(
                    stream,
                    0,
                    0,
                    prog.emit.length,
                    "concat",
                    prog.emit.width,
                    math.ceil(prog.emit.length / prog.emit.frag_elems),
                )
            ]
            nxt_up.size = prog.emit.length
        else:
            group, nxt_up = _split_layer(layers[i], up, budget, sw_id, stream, prog)
        for p in group:
            for a in p.accepts:
                if a.stream in entry:
                    entry[a.stream].append(p.switch_id)
        for src in up.producers:
            programs[src].emit.next_hops.extend(p.switch_id for p in group)
        programs.extend(group)
        up = nxt_up
        stream += 1
        i += 1
    for src in up.producers:
        programs[src].emit.next_hops.append(HOST)
        programs[src].emit.stream = STREAM_VERDICT
    return Mapping(programs, entry, budget.strict_asic, in_frag)


def _split_layer(
    layer: LayerSpec,
    up: _Upstream,
    budget: Budget,
    sw_id: int,
    stream: int,
    whole: SwitchProgram,
) -> tuple[list[SwitchProgram], _Upstream]:
    final = layer.shift is None
    for r in range(2, budget.max_parallel + 1):
        # By output (channel / neuron): replicas emit disjoint slices of activations.
        if not final:
            unit = 2 if layer.pool else 1
            outs = _split(layer.n_out, r, unit)
            group = [
                _build_switch(
                    sw_id + k,
                    [Part(layer, np.arange(layer.n_in), o, False, layer.embed is not None)],
                    up,
                    budget,
                    stream,
                    k,
                )
                for k, o in enumerate(outs)
            ]
            if all(_fits(p, budget) for p in group):
                accepts, off = [], 0
                for k, p in enumerate(group):
                    accepts.append(
                        Accept(
                            stream,
                            k,
                            off,
                            p.emit.length,
                            "concat",
                            p.emit.width,
                            math.ceil(p.emit.length / p.emit.frag_elems),
                        )
                    )
                    off += p.emit.length
                return group, _Upstream(accepts, off, None, [p.switch_id for p in group])
        # By input (and output): replica (i, j) emits partial sums of output slice j over
        # input slice i; the consumer adds the partials of each slice in its window registers.
        for ri in range(r, 1, -1):
            if r % ri:
                continue
            ro = r // ri
            ins, outs = _split(layer.n_in, ri, 1), _split(layer.n_out, ro, 1)
            if len(ins) != ri or len(outs) != ro:
                continue
            group, accepts = [], []
            for o in outs:
                for i, ix in enumerate(ins):
                    k = len(group)
                    part = Part(layer, ix, o, True, i == 0 and layer.embed is not None)
                    p = _build_switch(sw_id + k, [part], up, budget, stream, k)
                    group.append(p)
                    accepts.append(
                        Accept(
                            stream,
                            k,
                            int(o[0]),
                            len(o),
                            "sum",
                            4,
                            math.ceil(len(o) / p.emit.frag_elems),
                        )
                    )
            if not final and all(_fits(p, budget) for p in group):
                return group, _Upstream(accepts, layer.n_out, layer, [p.switch_id for p in group])
    over = whole.n_stages - budget.stages
    raise TidalError(
        f"layer {layer.name} does not fit: it needs {whole.n_stages} stages on one switch "
        f"(budget stages is {budget.stages}, over by {over}) and no split into up to "
        f"{budget.max_parallel} parallel switches fits"
    )
