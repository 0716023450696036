"""`tidal reproduce` writes the report: tables, figures, defaults read from code, verdicts,
and keeps the sections of studies not re-run."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from tidal.apps.reproduce import reproduce
from tidal.core.errors import TidalError
from tidal.core.shared import shared_path

pytestmark = pytest.mark.skipif(
    shared_path("traces", "twitter_2021-08_per_second.txt") is None
    or shared_path("traces", "profiles", "sponge_latency_batch_cores.csv") is None,
    reason="../shared traces/profiles absent",
)


def test_reproduce_sponge_short_window_writes_report(tmp_path: Path) -> None:
    out, figs = tmp_path / "results.md", tmp_path / "figures"
    out.write_text("old\n<!-- study: ipa -->\n## IPA kept\n### Verdict\n\nipa line\n<!-- end -->\n")
    reproduce("sponge", out, figs, 20, Console(quiet=True))
    text = out.read_text()
    assert "windows cut to 20 s" in text
    assert "## Headlines: claimed vs measured here" in text
    assert "| study | claimed | measured here | holds? |" in text and "| sponge | fewer" in text
    assert "| sponge |" in text and "| fa2 |" in text and "| vpa |" in text
    assert "`vpa` = `vpa`: interval 60 s, resize recreate" in text  # defaults from the code
    assert "## IPA kept" in text and "**ipa** — ipa line" in text  # other studies kept
    assert (figs / "sponge-profile-sponge.png").stat().st_size > 10_000


def test_unknown_study_is_named() -> None:
    with pytest.raises(TidalError, match="unknown study 'nope'"):
        reproduce("nope", Path("x.md"), Path("f"), 5, Console(quiet=True))
