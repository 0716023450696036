"""schemathesis against the OpenAPI document Tidal serves (`GET /v2/openapi.json`), on a real
`tidal serve --model-repository`: positive and negative (schema-invalid) requests for every
operation, checked for 0 server errors, 0 hangs (30 s per request) and 0 accepted
schema-invalid requests. Two thirds of the cases name a served model (else nearly every
infer/metadata call would be a 404 for a random name). The committed docs/openapi.json must
be the document served."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from oip_server import Served, serve_repository

from tidal.dataplane.openapi import document

schemathesis = pytest.importorskip(
    "schemathesis",
    reason="schemathesis is a dev dependency: `make install` (uv pip install -e '.[dev]')",
)
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import CheckContext, not_a_server_error  # noqa: E402
from schemathesis.core.transport import Response  # noqa: E402
from schemathesis.specs.openapi.checks import negative_data_rejection  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODELS = ["clf", "pair", "text"]
VERSIONS = {"clf": "2", "pair": "1", "text": "1"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_repository(tmp_path_factory.mktemp("oip-schema")) as s:
        yield s


# The document is static (tidal.dataplane.openapi.document()); the test below checks that it
# is the one served, byte for byte the committed one.
schema = schemathesis.openapi.from_dict(document())
schema.config.generation.update(
    modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
)
SEEN: dict[str, int] = {"positive": 0, "negative": 0, "2xx": 0, "4xx": 0}


def _admission_refusal(response: Response) -> bool:
    """A 503 that admission decided: the documented answer to a deadline the lane cannot meet
    (the fuzzer sends x-tidal-slo-ms values down to 1e-75 ms), with its cause and Retry-After.
    Any other 5xx stays a server error."""
    if response.status_code != 503 or "retry-after" not in {k.lower() for k in response.headers}:
        return False
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("cause") == "refused" and bool(body.get("error"))


def no_server_error_but_refusals(
    ctx: CheckContext, response: Response, case: object
) -> bool | None:
    """not_a_server_error, except admission's documented 503 refusal."""
    if _admission_refusal(response):
        return None
    return not_a_server_error(ctx, response, case)  # type: ignore[arg-type]


def test_committed_openapi_is_the_served_one(served: Served) -> None:
    served_doc = httpx.get(served.http + "/v2/openapi.json", timeout=30).json()
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert served_doc == json.loads(json.dumps(document()))
    assert committed == served_doc, (
        "docs/openapi.json is stale: python -m tidal.dataplane.openapi > docs/openapi.json"
    )


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_openapi_fuzz(case: object, served: Served) -> None:
    params = case.path_parameters  # type: ignore[attr-defined]
    if params and "model_name" in params:
        h = zlib.crc32(repr(sorted(params.items())).encode()) % 3
        if h < 2:
            model = MODELS[h]
            params["model_name"] = model
            if "model_version" in params and h == 0:
                params["model_version"] = VERSIONS[model]
    r = case.call_and_validate(  # type: ignore[attr-defined]
        base_url=served.http,
        checks=[no_server_error_but_refusals, negative_data_rejection],
        timeout=30,
    )
    mode = case.meta.generation.mode if case.meta else None  # type: ignore[attr-defined]
    SEEN["negative" if str(mode).lower().endswith("negative") else "positive"] += 1
    SEEN[f"{r.status_code // 100}xx"] = SEEN.get(f"{r.status_code // 100}xx", 0) + 1


def test_fuzz_covered_both_modes_and_real_answers() -> None:
    """Runs after the fuzz test (file order): it must have sent schema-invalid requests and
    had some requests served (not all 404s)."""
    assert SEEN["negative"] >= 50 and SEEN["positive"] >= 50, SEEN
    assert SEEN["2xx"] >= 20 and SEEN["4xx"] >= 20, SEEN
