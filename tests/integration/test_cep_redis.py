"""Operators as real processes over a real redis-server: hot update, crashes, two hosts,
the Node.js operator. Each test module starts and stops its own redis-server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tidal.cep import operators, workload
from tidal.cep.client import OperatorClient
from tidal.cep.codec import Codec
from tidal.cep.manager import DeployDefaults, NodeManager
from tidal.cep.nfa import Pattern
from tidal.cep.redis_server import RedisServer
from tidal.cep.registry import VersionSpec
from tidal.cep.store import open_store
from tidal.cep.stream import SaseEngine, Stream, connect
from tidal.core.errors import TidalError

pytestmark = pytest.mark.redis
NODE_TEMPLATE = Path(operators.__file__).parent.parent / "sdk" / "node" / "template.js"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    # every test here is marked redis: conftest fails it with the install command first
    with RedisServer() as rs:
        yield rs.url


def manager(tmp_path: Path, url: str, **kw) -> NodeManager:
    import redis

    redis.Redis.from_url(url).flushdb()
    return NodeManager(tmp_path, url, DeployDefaults(**kw))


def collect(cl: OperatorClient, n: int, timeout: float = 30.0) -> np.ndarray:
    got: list[np.ndarray] = []
    t = time.monotonic()
    while sum(len(b) for b in got) < n:
        assert time.monotonic() - t < timeout, f"only {sum(len(b) for b in got)} of {n}"
        got += cl.poll()  # type: ignore[arg-type]
        time.sleep(0.002)
    return np.concatenate(got)


@pytest.mark.parametrize("mode", ["blob", "faithful"])
def test_hot_update_loses_nothing_keeps_order_and_state(tmp_path, redis_url, mode) -> None:
    m = manager(tmp_path, redis_url, codec="packed", mode=mode, batch=200)
    try:
        src = operators.path("card_count").read_text()
        for _ in range(2):
            m.register("cc", VersionSpec(source=src, env={"TIDAL_CEP_STATE_CARDS": "4096"}))
        a = m.request("cc")
        cl = OperatorClient(
            open_store(a["store"]), a["in"], a["out"], Codec("packed"), mode=mode, batch=200
        )
        arr = workload.transactions(20_000, seed=5, cards=300)
        report: dict = {}
        cl.submit(arr[:5000])
        th = threading.Thread(target=lambda: report.update(m.update("cc", 2)))
        th.start()
        i = 5000
        while i < 15_000 and th.is_alive():  # events keep flowing during the update
            cl.submit(arr[i : i + 100])
            i += 100
            time.sleep(0.002)
        th.join(30)
        cl.submit(arr[i:])
        out = collect(cl, len(arr))
        cl.close()
        assert report["old_exit"] == 0 and report["version"] == 2
        assert len(out) == len(arr) and workload.checksum(out) == workload.checksum(arr)
        for c in np.unique(out["card"]):  # per card: 1..n in order => state carried, order kept
            f = out["flag"][out["card"] == c]
            assert f.tolist() == list(range(1, len(f) + 1))
            assert np.all(np.diff(out["seq"][out["card"] == c]) > 0)
    finally:
        m.close()


def test_empty_state_version_starts_from_nothing(tmp_path, redis_url) -> None:
    m = manager(tmp_path, redis_url, codec="packed")
    try:
        src = operators.path("card_count").read_text()
        m.register("cc", VersionSpec(source=src))
        m.register("cc", VersionSpec(source=src, empty_state=True))
        a = m.request("cc")
        cl = OperatorClient(open_store(a["store"]), a["in"], a["out"], Codec("packed"))
        arr = workload.transactions(100, seed=1, cards=1)
        cl.submit(arr[:50])
        collect(cl, 50)
        m.update("cc", 2)
        cl.submit(arr[50:])
        out = collect(cl, 50)
        cl.close()
        assert out["flag"].tolist() == list(range(1, 51))
    finally:
        m.close()


def test_crashing_operator_redelivers_and_parks_poison(tmp_path, redis_url) -> None:
    m = manager(tmp_path, redis_url, codec="packed", batch=50, max_failures=2)
    try:
        m.register("crashy", VersionSpec(source=operators.path("crashy").read_text()))
        a = m.request("crashy")
        cl = OperatorClient(open_store(a["store"]), a["in"], a["out"], Codec("packed"), batch=50)
        arr = workload.transactions(300, seed=2)
        arr["amount"][123] = -1.0  # the poison event
        cl.submit(arr)
        out = collect(cl, 299)
        time.sleep(0.05)
        cl.close()
        assert sorted(out["seq"].tolist()) == [i for i in range(300) if i != 123]
        assert len(out) == 299  # nothing duplicated by the redeliveries
        parked = m.parked("crashy")
        assert len(parked) == 1 and b"failed 2 times" in parked[0]
        assert m.deployments["crashy"].restarts >= 2
        # the engine keeps running: more events flow after the poison was parked
        cl2 = connect(m, "crashy")
        cl2.submit([{"seq": 1000, "card": 1, "ts": 0.0, "amount": 3.0, "merchant": 1, "flag": 0}])
        assert collect(cl2, 1)["seq"].tolist() == [1000]
        cl2.close()
    finally:
        m.close()


def test_both_host_languages_call_the_same_operator(tmp_path, redis_url) -> None:
    m = manager(tmp_path, redis_url, codec="json", mode="faithful")
    try:
        m.register("fraud_flag", VersionSpec(source=operators.path("fraud_flag").read_text()))
        evs = workload.as_dicts(workload.transactions(1500, seed=1, cards=20, rate=2))
        p = (
            Pattern.begin("s")
            .where(lambda e: e["amount"] < 5)
            .followed_by("l")
            .where(lambda e: e["amount"] > 500 and e["flag"] == 1)
            .within(600)
        )
        flink = (
            Stream(m)
            .serverless("fraud_flag")
            .key_by("card")
            .pattern(p, lambda mm: {"s": mm["s"][0]["seq"], "l": mm["l"][0]["seq"]})
            .build()
            .run(evs)
        )
        sase = (
            SaseEngine(m)
            .compile(
                "SERVERLESS fraud_flag PATTERN SEQ(TXN s, TXN l) WHERE [card] AND s.amount < 5 "
                "AND l.amount > 500 AND l.flag = 1 WITHIN 10 min RETURN s.seq AS s, l.seq AS l"
            )
            .run(evs)
        )
        pairs = sorted((r["s"], r["l"]) for r in flink)
        assert pairs and pairs == sorted((r["s"], r["l"]) for r in sase)
        with pytest.raises(TidalError, match="unknown operator 'nope'"):
            SaseEngine(m).compile("SERVERLESS nope PATTERN SEQ(TXN a)")
        with pytest.raises(TidalError, match="unknown operator 'nope'"):
            Stream(m).serverless("nope").build()
        # ...and the engine keeps running afterwards
        assert len(Stream(m).serverless("fraud_flag").build().run(evs[:10])) == 10
    finally:
        m.close()


@pytest.mark.node
def test_node_operator_with_hot_update(tmp_path, redis_url) -> None:
    m = manager(tmp_path, redis_url, codec="json")
    try:
        src = NODE_TEMPLATE.read_text()
        m.register("nodeop", VersionSpec(language="node", source=src))
        m.register("nodeop", VersionSpec(language="node", source=src))
        cl = connect(m, "nodeop")
        evs = [{"card": i % 3, "amount": 10.0 * i, "seq": i} for i in range(600)]
        cl.submit(evs[:300])
        cl.flush()
        m.update("nodeop", 2)
        cl.submit(evs[300:] + [{"amount": 1.0}])  # the last lacks 'card': parked by the SDK
        got: list[dict] = []
        t = time.monotonic()
        while len(got) < 600 and time.monotonic() - t < 20:
            got += cl.results()
            time.sleep(0.005)
        cl.close()
        assert [e["seq"] for e in got] == list(range(600))
        assert [e["seen"] for e in got if e["card"] == 0] == list(range(1, 201))
        assert got[-1]["flag"] == 1
        t = time.monotonic()
        while not m.parked("nodeop") and time.monotonic() - t < 5:
            time.sleep(0.01)
        assert b"missing field 'card'" in m.parked("nodeop")[0]
    finally:
        m.close()


@pytest.mark.node
def test_node_operator_crash_redelivers_and_parks_poison(tmp_path, redis_url) -> None:
    m = manager(tmp_path, redis_url, codec="json", batch=20, max_failures=2)
    try:
        src = (NODE_TEMPLATE.parent / "crashy.js").read_text()
        m.register("nodecrash", VersionSpec(language="node", source=src))
        cl = connect(m, "nodecrash")
        evs = [{"seq": i, "amount": -1 if i == 37 else 1.0} for i in range(60)]
        cl.submit(evs)
        got: list[dict] = []
        t = time.monotonic()
        while len(got) < 59 and time.monotonic() - t < 60:
            got += cl.results()
            time.sleep(0.01)
        cl.close()
        assert sorted(e["seq"] for e in got) == [i for i in range(60) if i != 37]
        assert len(got) == 59
        parked = m.parked("nodecrash")
        assert len(parked) == 1 and b"failed 2 times" in parked[0] and b"-1" in parked[0]
    finally:
        m.close()


CRASHY_COUNT = """
import os

import numpy as np

from tidal.cep.operators.card_count import CardCount


class CrashyCount(CardCount):
    def process(self, batch):
        if isinstance(batch, np.ndarray) and np.any(batch["amount"] == -1.0):
            os._exit(3)
        return super().process(batch)


OPERATOR = CrashyCount
"""


@pytest.mark.parametrize("checkpoint_every", [0, 3])
def test_keyed_state_survives_crashes_with_checkpoints(tmp_path, redis_url, checkpoint_every):
    m = manager(
        tmp_path,
        redis_url,
        codec="packed",
        batch=20,
        max_failures=2,
        checkpoint_every=checkpoint_every,
    )
    try:
        m.register("cc", VersionSpec(source=CRASHY_COUNT))
        cl = connect(m, "cc")
        arr = workload.transactions(400, seed=3, cards=5)
        arr["amount"][250] = -1.0  # poison: two crashes, then parked
        cl.submit(arr)
        out = collect(cl, 399)
        cl.close()
        assert sorted(out["seq"].tolist()) == [i for i in range(400) if i != 250]
        consecutive = all(
            out["flag"][out["card"] == c].tolist()
            == list(range(1, int((out["card"] == c).sum()) + 1))
            for c in np.unique(out["card"])
        )
        # with checkpoints the restarted operator continues every card's count exactly;
        # without, it restarts from zero after each crash
        assert consecutive == (checkpoint_every > 0)
        assert m.deployments["cc"].restarts >= 2
    finally:
        m.close()
