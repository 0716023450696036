"""Codec, stores, host client and operator runtime in one process (MemoryStore, threads)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tidal.cep import operators, workload
from tidal.cep.client import OperatorClient
from tidal.cep.codec import TXN_DTYPE, Codec, handover_frame
from tidal.cep.sdk.python.operator import Operator, load_operator
from tidal.cep.sdk.python.runtime import OperatorRuntime, RuntimeConfig, inst_keys, keys
from tidal.cep.sockstore import SocketStore, SocketStoreServer, decode, encode
from tidal.cep.store import MemoryStore
from tidal.core.errors import TidalError


def wait_for(pred, timeout: float = 10.0) -> None:
    t = time.monotonic()
    while not pred():
        assert time.monotonic() - t < timeout, "condition not reached"
        time.sleep(0.002)


@pytest.mark.parametrize("mode", ["faithful", "blob"])
@pytest.mark.parametrize("codec", ["json", "packed"])
def test_codec_round_trip(mode: str, codec: str) -> None:
    c = Codec(codec)  # type: ignore[arg-type]
    arr = workload.transactions(7, seed=1)
    batch = arr if codec == "packed" else c.to_dicts(arr)
    frames = c.encode(batch, mode)  # type: ignore[arg-type]
    assert len(frames) == (7 if mode == "faithful" else 1)
    back = c.decode(frames)
    assert c.to_dicts(back) == c.to_dicts(batch)
    assert sum(c.count(f) for f in frames) == 7


def test_codec_names_missing_field() -> None:
    with pytest.raises(TidalError, match="missing field 'amount'"):
        Codec("packed").validate({"seq": 1, "card": 2, "ts": 0.0, "merchant": 1, "flag": 0})


def test_tagged_encoding_round_trip_and_socket_store(tmp_path) -> None:
    v = [None, True, False, 3, -(2**40), 1.5, b"\x00xy", "h\u00e9", [b"a", [1, "b"]]]
    buf = bytearray()
    encode(v, buf)
    assert decode(bytes(buf))[0] == v
    srv = SocketStoreServer(MemoryStore("t"), str(tmp_path / "s.sock"))
    try:
        st = SocketStore(srv.url)
        st.push("q", [b"1", b"2", b"3"])
        assert st.execute([("lrange", "q", 0, 1), ("ltrim", "q", 2, -1), ("llen", "q")]) == [
            [b"1", b"2"],
            True,
            1,
        ]
        assert st.blpop("q", 1.0) == b"3"
        assert st.blpop("q", 0.05) is None
        with pytest.raises(TidalError, match="unknown store command"):
            st.execute([("flushall", "x")])
        st.close()
    finally:
        srv.close()


def cfg(**kw) -> RuntimeConfig:
    base = dict(
        store="mem://x",
        in_key="in",
        out_key="out",
        operator="op",
        instance="i1",
        batch=10,
        codec="json",
        mode="faithful",
    )
    base.update(kw)
    return RuntimeConfig(**base)  # type: ignore[arg-type]


class Recorder(Operator):
    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def process(self, batch):
        self.sizes.append(len(batch))
        out = []
        for e in batch:
            k = str(e["k"])
            self.state[k] = self.state.get(k, 0) + 1
            out.append({**e, "n": self.state[k]})
        return out


def test_batches_never_exceed_b_and_events_before_deployment_wait() -> None:
    store = MemoryStore()
    cl = OperatorClient(store, "in", "out", Codec("json"), mode="faithful", batch=10)
    cl.submit([{"k": i % 3, "i": i} for i in range(95)])  # before any operator exists
    cl.flush()
    assert store.execute([("llen", "in")]) == [95]
    op = Recorder()
    rt = OperatorRuntime(cfg(), op, store)
    import threading

    th = threading.Thread(target=rt.run, daemon=True)
    th.start()
    got: list[dict] = []

    def drained() -> bool:
        got.extend(cl.results())
        return len(got) >= 95

    wait_for(drained)
    rt.stop.set()
    th.join(5)
    cl.close()
    assert max(op.sizes) == 10 and sum(op.sizes) == 95
    assert [e["i"] for e in got] == list(range(95))


@pytest.mark.parametrize("pop", ["commit", "pop"])
def test_handover_carries_state_at_batch_boundary(pop: str) -> None:
    store = MemoryStore()
    old, new = Recorder(), Recorder()
    rt_old = OperatorRuntime(cfg(instance="old", pop=pop), old, store)
    rt_new = OperatorRuntime(cfg(instance="new", standby=True, pop=pop), new, store)
    import threading

    th_new = threading.Thread(target=rt_new.run, daemon=True)
    th_new.start()
    assert store.blpop(inst_keys("new")["ready"], 5) == b"1"  # readiness signal
    frames = Codec("json").encode([{"k": 1, "i": i} for i in range(25)], "faithful")
    store.push("in", frames[:15] + [handover_frame("new")] + frames[15:])
    th_old = threading.Thread(target=rt_old.run, daemon=True)
    th_old.start()
    th_old.join(5)
    assert rt_old.handed_over and rt_old.processed == 15
    wait_for(lambda: store.execute([("llen", "out")])[0] == 25)
    rt_new.stop.set()
    th_new.join(5)
    outs = Codec("json").decode(store.execute([("lrange", "out", 0, -1)])[0])
    assert [e["n"] for e in outs] == list(range(1, 26))  # state carried, order kept
    assert [e["i"] for e in outs] == list(range(25))


class Boom(Operator):
    def process(self, batch):
        if any(e.get("poison") for e in batch):
            raise RuntimeError("boom")
        return batch


def test_crash_redelivers_then_parks_poison_after_n_failures() -> None:
    store = MemoryStore()
    c = cfg(batch=4, max_failures=2)
    store.push(
        "in",
        Codec("json").encode(
            [{"i": 0}, {"i": 1}, {"i": 2, "poison": 1}, {"i": 3}, {"i": 4}], "blob"
        ),
    )
    for _ in range(6):  # each "process" crashes or finishes; restart it like the supervisor
        rt = OperatorRuntime(c, Boom(), store)
        try:
            rt.run_until_idle = True  # type: ignore[attr-defined]
            _run_some(rt)
        except RuntimeError:
            continue
    outs = Codec("json").decode(store.execute([("lrange", "out", 0, -1)])[0])
    assert [e["i"] for e in outs] == [0, 1, 3, 4]
    parked = store.execute([("lrange", keys("op")["parked"], 0, -1)])[0]
    assert len(parked) == 1 and b"poison" in parked[0] and b"failed 2 times" in parked[0]


def _run_some(rt: OperatorRuntime) -> None:
    calls = {"n": 0}

    def sleep(_s: float) -> None:  # the first empty poll ends this "process"
        calls["n"] += 1
        rt.stop.set()

    rt.sleep = sleep
    rt.run()


def test_operator_parks_events_missing_required_fields() -> None:
    store = MemoryStore()
    op = load_operator(operators.path("fraud_flag"))
    rt = OperatorRuntime(cfg(), op, store)
    store.push("in", Codec("json").encode([{"card": 1, "amount": 2000.0}, {"card": 2}], "blob"))
    _run_some(rt)
    outs = Codec("json").decode(store.execute([("lrange", "out", 0, -1)])[0])
    assert outs == [{"card": 1, "amount": 2000.0, "flag": 1}]
    parked = store.execute([("lrange", keys("op")["parked"], 0, -1)])[0]
    assert b"missing field 'amount'" in parked[0]


def test_example_operators_against_references() -> None:
    arr = workload.transactions(5000, seed=7, cards=30, rate=1.0, fraud_rate=0.05)
    sl = load_operator(operators.path("small_large"))
    got = np.concatenate([sl.process(arr[i : i + 333]) for i in range(0, len(arr), 333)])
    want: list[int] = []
    last: dict[int, float] = {}
    for r in arr:
        c = int(r["card"])
        if r["amount"] > 500 and r["ts"] - last.get(c, -1e18) <= 600:
            want.append(int(r["seq"]))
        if r["amount"] < 5:
            last[c] = float(r["ts"])
    assert got["seq"].tolist() == want and len(want) > 10
    cc = load_operator(operators.path("card_count"))
    out = np.concatenate([cc.process(arr[i : i + 100]) for i in range(0, 1000, 100)])
    seen: dict[int, int] = {}
    for r in out:
        seen[int(r["card"])] = seen.get(int(r["card"]), 0) + 1
        assert r["flag"] == seen[int(r["card"])]


def test_workload_is_seeded() -> None:
    a, b = workload.transactions(1000, seed=3), workload.transactions(1000, seed=3)
    assert a.tobytes() == b.tobytes() and a.dtype == TXN_DTYPE
    assert workload.checksum(a) != workload.checksum(a[:-1])
    assert workload.checksum(a) == workload.checksum(a[::-1].copy())


def test_go_signal_moves_big_state_through_a_file() -> None:
    from tidal.cep.sdk.python.runtime import decode_go, encode_go

    big, small = bytes(range(256)) * 1024, b"{}"
    g = encode_go(big, "inst", [b"J{}"])
    assert len(g) < 1000  # a path, not 256 KB
    assert decode_go(g) == (big, [b"J{}"])
    assert decode_go(encode_go(small, "inst", [])) == (small, [])
    assert decode_go(b'S{"a":1}') == (b'{"a":1}', [])
    assert decode_go(b"E") == (None, [])


@pytest.mark.parametrize("pop", ["commit", "pop"])
def test_new_instance_starts_empty_when_old_died_and_skips_its_stale_barrier(pop: str) -> None:
    store = MemoryStore()
    new = Recorder()
    rt = OperatorRuntime(cfg(instance="new", standby=True, pop=pop), new, store)
    frames = Codec("json").encode([{"k": 1, "i": i} for i in range(6)], "faithful")
    store.push("in", frames[:3] + [handover_frame("new")] + frames[3:])
    store.push(inst_keys("new")["go"], [b"E"])  # what the manager sends when the old died
    _run_some(rt)
    outs = Codec("json").decode(store.execute([("lrange", "out", 0, -1)])[0])
    assert [e["i"] for e in outs] == list(range(6)) and not rt.handed_over
    assert [e["n"] for e in outs] == list(range(1, 7))
