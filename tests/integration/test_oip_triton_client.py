"""The real tritonclient (http and grpc) against a real `tidal serve --model-repository DIR`
serving models this test builds (tests/integration/oip_models.py): health, metadata, JSON and
binary tensors, two inputs, BYTES, requested outputs, class_count, versions, the repository
extension, errors and the gRPC deadline."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import oip_models
import pytest
from oip_server import TOKEN, Served, serve_repository

_WHY = "tritonclient[http,grpc] is a dev dependency: `make install` (uv pip install -e '.[dev]')"
httpclient = pytest.importorskip("tritonclient.http", reason=_WHY)
grpcclient = pytest.importorskip("tritonclient.grpc", reason=_WHY)
from tritonclient.utils import InferenceServerException  # noqa: E402

IDS = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.int64)
MASK = np.array([[1, 1, 0, 1], [0, 1, 1, 1]], dtype=np.int64)
X = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_repository(tmp_path_factory.mktemp("oip-triton")) as s:
        yield s


@pytest.fixture(scope="module")
def http(served: Served) -> Iterator[object]:
    c = httpclient.InferenceServerClient(url=served.http.removeprefix("http://"))
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc(served: Served) -> Iterator[object]:
    c = grpcclient.InferenceServerClient(url=served.grpc)
    yield c
    c.close()


def _pair_inputs(mod: object, binary: bool) -> list[object]:
    a = mod.InferInput("input_ids", list(IDS.shape), "INT64")  # type: ignore[attr-defined]
    b = mod.InferInput("attention_mask", list(MASK.shape), "INT64")  # type: ignore[attr-defined]
    if mod is httpclient:
        a.set_data_from_numpy(IDS, binary_data=binary)
        b.set_data_from_numpy(MASK, binary_data=binary)
    else:
        a.set_data_from_numpy(IDS)
        b.set_data_from_numpy(MASK)
    return [a, b]


def test_health_and_metadata(http: object, grpc: object) -> None:
    for c in (http, grpc):
        assert c.is_server_live() and c.is_server_ready()  # type: ignore[attr-defined]
        assert c.is_model_ready("pair") and c.is_model_ready("clf", "2")  # type: ignore[attr-defined]
    meta = http.get_server_metadata()  # type: ignore[attr-defined]
    assert meta["name"] == "tidal" and "binary_tensor_data" in meta["extensions"]
    import tidal

    assert meta["version"] == tidal.__version__
    gmeta = grpc.get_server_metadata(as_json=True)  # type: ignore[attr-defined]
    assert gmeta["version"] == tidal.__version__ and "classification" in gmeta["extensions"]
    m = http.get_model_metadata("pair")  # type: ignore[attr-defined]
    assert [i["name"] for i in m["inputs"]] == ["input_ids", "attention_mask"]
    assert m["inputs"][0] == {"name": "input_ids", "datatype": "INT64", "shape": [-1, 4]}
    assert [o["name"] for o in m["outputs"]] == ["masked", "scores"]
    gm = grpc.get_model_metadata("clf", as_json=True)  # type: ignore[attr-defined]
    assert gm["versions"] == ["1", "2"] and gm["outputs"][0]["name"] == "probs"
    cfg = http.get_model_config("clf")  # type: ignore[attr-defined]
    assert cfg["input"][0] == {"name": "x", "data_type": "TYPE_FP32", "dims": [4]}
    stats = http.get_inference_statistics("clf")  # type: ignore[attr-defined]
    assert stats["model_stats"][0]["name"] == "clf"


@pytest.mark.parametrize("binary", [False, True])
def test_two_inputs_two_outputs_http(http: object, binary: bool) -> None:
    outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("masked", "scores")]
    r = http.infer("pair", _pair_inputs(httpclient, binary), outputs=outs)  # type: ignore[attr-defined]
    assert r.as_numpy("masked").tolist() == (IDS * MASK).tolist()
    assert r.as_numpy("scores").dtype == np.float32
    assert r.as_numpy("scores").tolist() == (IDS * MASK).astype(np.float32).tolist()


def test_two_inputs_grpc_and_requested_output(grpc: object) -> None:
    out = [grpcclient.InferRequestedOutput("scores")]
    r = grpc.infer("pair", _pair_inputs(grpcclient, True), outputs=out)  # type: ignore[attr-defined]
    assert r.as_numpy("scores").tolist() == (IDS * MASK).astype(np.float32).tolist()
    assert r.as_numpy("masked") is None  # only the requested output comes back
    r = grpc.infer("pair", _pair_inputs(grpcclient, True))  # type: ignore[attr-defined]
    assert r.as_numpy("masked").tolist() == (IDS * MASK).tolist()


def test_requested_output_only_and_binary_http(http: object) -> None:
    out = [httpclient.InferRequestedOutput("masked", binary_data=True)]
    r = http.infer("pair", _pair_inputs(httpclient, False), outputs=out)  # type: ignore[attr-defined]
    assert r.as_numpy("masked").tolist() == (IDS * MASK).tolist()
    assert r.as_numpy("scores") is None
    resp = r.get_response()
    assert resp["outputs"][0]["parameters"]["binary_data_size"] == IDS.nbytes


@pytest.mark.parametrize("binary", [False, True])
def test_bytes_tensors(http: object, grpc: object, binary: bool) -> None:
    text = np.array([[b"hello"], ["w\u00f6rld".encode()]], dtype=object)
    inp = httpclient.InferInput("text", [2, 1], "BYTES")
    inp.set_data_from_numpy(text, binary_data=binary)
    out = [httpclient.InferRequestedOutput("echo", binary_data=binary)]
    r = http.infer("text", [inp], outputs=out)  # type: ignore[attr-defined]
    got = [v if isinstance(v, bytes) else v.encode() for v in r.as_numpy("echo").reshape(-1)]
    assert got == [b"hello", "w\u00f6rld".encode()]  # JSON BYTES come back as str
    g = grpcclient.InferInput("text", [2, 1], "BYTES")
    g.set_data_from_numpy(text)
    r = grpc.infer("text", [g])  # type: ignore[attr-defined]
    assert r.as_numpy("echo").reshape(-1).tolist() == [b"hello", "w\u00f6rld".encode()]


def test_class_count(http: object, grpc: object) -> None:
    inp = httpclient.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(X, binary_data=True)
    out = [httpclient.InferRequestedOutput("probs", binary_data=False, class_count=2)]
    r = http.infer("clf", [inp], outputs=out, model_version="1")  # type: ignore[attr-defined]
    top = r.as_numpy("probs")
    # W1 = arange(12).reshape(4, 3): row x=e0 -> [0, 1, 2], x=e3 -> [9, 10, 11]
    assert top.shape == (2, 2)
    assert [v.decode() if isinstance(v, bytes) else v for v in top[0]] == [
        "2.000000:2",
        "1.000000:1",
    ]
    assert (top[1][0].decode() if isinstance(top[1][0], bytes) else top[1][0]) == "11.000000:2"
    g = grpcclient.InferInput("x", [2, 4], "FP32")
    g.set_data_from_numpy(X)
    r = grpc.infer(  # type: ignore[attr-defined]
        "clf", [g], outputs=[grpcclient.InferRequestedOutput("probs", class_count=1)]
    )
    assert r.as_numpy("probs").reshape(-1).tolist() == [b"2.000000:2", b"11.000000:2"]


def test_versions_pinned_and_unknown(http: object, grpc: object) -> None:
    for version, w in ((("1"), oip_models.W[1]), ("2", oip_models.W[2])):
        inp = httpclient.InferInput("x", [2, 4], "FP32")
        inp.set_data_from_numpy(X)
        r = http.infer("clf", [inp], model_version=version)  # type: ignore[attr-defined]
        assert r.as_numpy("probs").tolist() == (X @ w).tolist(), version
        assert r.get_response()["model_version"] == version
        g = grpcclient.InferInput("x", [2, 4], "FP32")
        g.set_data_from_numpy(X)
        r = grpc.infer("clf", [g], model_version=version)  # type: ignore[attr-defined]
        assert r.as_numpy("probs").tolist() == (X @ w).tolist(), version
    inp = httpclient.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(X)
    with pytest.raises(InferenceServerException, match="unknown version 'nope'") as e:
        http.infer("clf", [inp], model_version="nope")  # type: ignore[attr-defined]
    assert e.value.status() == "404"
    assert not http.is_model_ready("clf", "nope")  # type: ignore[attr-defined]
    g = grpcclient.InferInput("x", [2, 4], "FP32")
    g.set_data_from_numpy(X)
    with pytest.raises(InferenceServerException, match="unknown version 'nope'") as e:
        grpc.infer("clf", [g], model_version="nope")  # type: ignore[attr-defined]
    assert e.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="unknown model 'zzz'") as e:
        grpc.get_model_metadata("zzz")  # type: ignore[attr-defined]
    assert e.value.status() == "StatusCode.NOT_FOUND"


def test_bad_inputs_name_the_input(http: object, grpc: object) -> None:
    bad = httpclient.InferInput("x", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException, match="input 'x': shape \\[1, 3\\]") as e:
        http.infer("clf", [bad])  # type: ignore[attr-defined]
    assert e.value.status() == "400"
    wrong = grpcclient.InferInput("y", [1, 4], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with pytest.raises(InferenceServerException, match="unknown input 'y'") as e:
        grpc.infer("clf", [wrong])  # type: ignore[attr-defined]
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    nan = httpclient.InferInput("x", [1, 4], "FP32")
    nan.set_data_from_numpy(np.array([[np.nan, 0, 0, 0]], np.float32), binary_data=True)
    with pytest.raises(InferenceServerException, match="NaN or infinity"):
        http.infer("clf", [nan])  # type: ignore[attr-defined]
    g = grpcclient.InferInput("x", [1, 4], "FP32")
    g.set_data_from_numpy(np.array([[np.inf, 0, 0, 0]], np.float32))
    with pytest.raises(InferenceServerException, match="NaN or infinity"):
        grpc.infer("clf", [g])  # type: ignore[attr-defined]
    out = [httpclient.InferRequestedOutput("nope")]
    ok = httpclient.InferInput("x", [1, 4], "FP32")
    ok.set_data_from_numpy(X[:1])
    with pytest.raises(InferenceServerException, match="unknown output 'nope'"):
        http.infer("clf", [ok], outputs=out)  # type: ignore[attr-defined]


def test_grpc_deadline(grpc: object) -> None:
    g = grpcclient.InferInput("x", [1, 4], "FP32")
    g.set_data_from_numpy(X[:1])
    # deadline = min(gRPC deadline, slo_ms): the SLO the request was given comes back
    r = grpc.infer("clf", [g], client_timeout=20.0, parameters={"slo_ms": 60000})  # type: ignore[attr-defined]
    given = r.get_response(as_json=True)["parameters"]["slo_ms"]["string_param"]
    assert 0 < float(given) < 21000  # the gRPC deadline, not the 60 s SLO
    r = grpc.infer("clf", [g], client_timeout=20.0, parameters={"slo_ms": 900})  # type: ignore[attr-defined]
    assert float(r.get_response(as_json=True)["parameters"]["slo_ms"]["string_param"]) == 900
    # a deadline that cannot be met: DEADLINE_EXCEEDED (the unprofiled estimate is >= 100 ms)
    for timeout in (1e-4, 0.05):
        with pytest.raises(InferenceServerException) as e:
            grpc.infer("clf", [g], client_timeout=timeout, parameters={"slo_ms": 60000})  # type: ignore[attr-defined]
        assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED", e.value
    with pytest.raises(InferenceServerException, match="slo_ms must be in") as e:
        grpc.infer("clf", [g], parameters={"slo_ms": -3})  # type: ignore[attr-defined]
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_repository_index_load_unload(served: Served, http: object, grpc: object) -> None:
    idx = http.get_model_repository_index()  # type: ignore[attr-defined]
    assert {(e["name"], e["version"]) for e in idx} >= {("clf", "1"), ("clf", "2"), ("text", "1")}
    gidx = grpc.get_model_repository_index(as_json=True)  # type: ignore[attr-defined]
    assert {m["name"] for m in gidx["models"]} >= {"clf", "pair", "text"}
    with pytest.raises(InferenceServerException) as e:
        http.unload_model("text")  # type: ignore[attr-defined]  # no token
    assert e.value.status() == "401"
    auth = {"authorization": f"Bearer {TOKEN}"}
    http.unload_model("text", headers=auth)  # type: ignore[attr-defined]
    assert not http.is_model_ready("text")  # type: ignore[attr-defined]
    http.load_model("text", headers=auth)  # type: ignore[attr-defined]
    assert http.is_model_ready("text")  # type: ignore[attr-defined]
    grpc.unload_model("text", headers=auth)  # type: ignore[attr-defined]
    assert not grpc.is_model_ready("text")  # type: ignore[attr-defined]
    grpc.load_model("text", headers=auth)  # type: ignore[attr-defined]
    assert grpc.is_model_ready("text")  # type: ignore[attr-defined]
    with pytest.raises(InferenceServerException) as e:
        grpc.load_model("nope", headers=auth)  # type: ignore[attr-defined]
    assert e.value.status() == "StatusCode.NOT_FOUND"


def test_refusal_same_message_rest_and_grpc_with_retry_info(served: Served) -> None:
    """An SLO the estimate cannot meet: REST 503 + Retry-After, gRPC UNAVAILABLE with the same
    message, a google.rpc.RetryInfo detail and retry-after-ms trailing metadata."""
    import grpc as grpc_mod
    import httpx
    from google.rpc import error_details_pb2, status_pb2

    from tidal.dataplane.grpc_v2 import grpc_predict_v2_pb2 as pb

    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.0] * 4}],
            "parameters": {"slo_ms": 1}}  # fmt: skip
    r = httpx.post(served.http + "/v2/models/clf/infer", json=body, timeout=30)
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
    rest_msg = r.json()["error"]
    req = pb.ModelInferRequest(model_name="clf")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.zeros(4, np.float32).tobytes())
    req.parameters["slo_ms"].int64_param = 1
    with grpc_mod.insecure_channel(served.grpc) as ch:
        call = ch.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc_mod.RpcError) as e:
            call(req, timeout=30)
    err = e.value
    assert err.code() == grpc_mod.StatusCode.UNAVAILABLE

    # same words as REST, up to the figures of this attempt (signed: the remaining budget is
    # negative when the estimated socket wait already used it up)
    def words(m: str) -> str:
        return re.sub(r"-?\d+(\.\d+)?", "N", m)

    assert words(err.details()) == words(rest_msg), (err.details(), rest_msg)
    trailers = dict(err.trailing_metadata())
    assert int(trailers["retry-after-ms"]) >= 1
    st = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert st.details[0].Unpack(info) and info.retry_delay.ToMilliseconds() >= 1
