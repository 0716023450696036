"""The PyFlink adapter: a Flink job forwarding events through a Tidal operator.

PyFlink is an optional extra (``pip install 'tidal[flink]'``, ~850 MB); without it this test
is skipped with that reason. The adapter class itself imports without PyFlink.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from tidal.cep.flink import EOS, HAVE_PYFLINK, TidalOperatorFunction


def test_adapter_imports_without_pyflink() -> None:
    f = TidalOperatorFunction("fraud_flag", "http://127.0.0.1:1", "x" * 16)
    assert (
        f.name == "fraud_flag" and (importlib.util.find_spec("pyflink") is not None) == HAVE_PYFLINK
    )


def test_flink_job_through_tidal_operator(tmp_path) -> None:  # pragma: no cover
    pytest.importorskip(
        "pyflink",
        reason="PyFlink is an optional extra (~850 MB): uv pip install 'tidal[flink]'",
    )
    import threading

    import uvicorn
    from pyflink.common import Types
    from pyflink.datastream import StreamExecutionEnvironment

    from tidal.cep import operators
    from tidal.cep.api import make_app
    from tidal.cep.manager import DeployDefaults, NodeManager
    from tidal.cep.redis_server import free_port
    from tidal.cep.registry import VersionSpec
    from tidal.cep.sockstore import SocketStoreServer
    from tidal.cep.store import MemoryStore

    srv = SocketStoreServer(MemoryStore("flink"), str(tmp_path / "s.sock"))
    m = NodeManager(tmp_path, srv.url, DeployDefaults(codec="json"))
    m.register("fraud_flag", VersionSpec(source=operators.path("fraud_flag").read_text()))
    port, token = free_port(), "k" * 24
    server = uvicorn.Server(uvicorn.Config(make_app(m, token), port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    try:
        env = StreamExecutionEnvironment.get_execution_environment()
        env.set_parallelism(1)
        env.set_python_executable(sys.executable)  # the UDF worker runs this interpreter
        evs = [json.dumps({"card": i, "amount": 2000.0 if i % 2 else 1.0}) for i in range(50)]
        ds = env.from_collection([*evs, EOS], type_info=Types.STRING())
        fn = TidalOperatorFunction("fraud_flag", f"http://127.0.0.1:{port}", token)
        with ds.process(fn, Types.STRING()).execute_and_collect() as it:
            out = [json.loads(x) for x in it]
        assert [o["card"] for o in out] == list(range(50))
        assert [o["flag"] for o in out] == [i % 2 for i in range(50)]
    finally:
        server.should_exit = True
        m.close()
        srv.close()
