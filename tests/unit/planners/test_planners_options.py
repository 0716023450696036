"""Planner options as data: every planner's pydantic `Options` model matches its constructor,
`create` validates through it, errors name the option and the valid ones, and docs/planners.md
lists every option as generated from the models."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from tidal.core.errors import TidalError
from tidal.planners import available, create
from tidal.planners.base import options_model
from tidal.planners.options_doc import options_markdown

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", available())
def test_options_model_matches_the_constructor(name: str) -> None:
    model = options_model(name)
    factory = type(create(name))
    params = {
        k: p.default
        for k, p in inspect.signature(factory.__init__).parameters.items()
        if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD
    }
    for key, default in params.items():
        assert key in model.model_fields, f"{name}: constructor parameter {key!r} not in Options"
        assert model.model_fields[key].default == default, (name, key)
    for key, f in model.model_fields.items():
        assert f.description, f"{name}.{key} has no description"
        create(name, **{key: model().model_dump()[key]})  # each default is accepted


def test_bad_options_name_the_option_and_the_valid_ones() -> None:
    with pytest.raises(
        TidalError, match=r"hpa: invalid option batch: .*\(got 0\); valid options: "
    ):
        create("hpa", batch=0)
    with pytest.raises(TidalError, match=r"hpa: invalid option cores: .*greater than 0"):
        create("hpa", cores=-1)
    with pytest.raises(TidalError, match=r"hpa: unknown option 'bogus'; valid options: .*cores"):
        create("hpa", bogus=1)
    with pytest.raises(TidalError, match=r"infadapter: invalid option .*min_cores \(9\) > max"):
        create("infadapter", min_cores=9, max_cores=4)
    with pytest.raises(TidalError, match=r"vpa: invalid option mode"):
        create("vpa", mode="Auto")


def test_docs_list_every_option_from_the_models() -> None:
    doc = (ROOT / "docs" / "planners.md").read_text()
    assert options_markdown() in doc, "regenerate: python -m tidal.planners.options_doc"
