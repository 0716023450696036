"""`kept_holds` without Ray: a shrink back to a size held before some growths keeps the
holds that sum to it (no new placement group to wait for); otherwise None (the substrate
swaps all holds for one of the new size)."""

from __future__ import annotations

from types import SimpleNamespace

from tidal.control.ray_substrate import kept_holds


def _pg(cores: float) -> SimpleNamespace:
    return SimpleNamespace(bundle_specs=[{"CPU": cores}])


def test_a_shrink_to_an_earlier_size_keeps_those_holds() -> None:
    a, b, c = _pg(1 / 3), _pg(1 / 3), _pg(0.5)
    assert kept_holds([a, b], 1 / 3) == [a]
    assert kept_holds([a, b, c], 2 / 3) == [a, b]
    assert kept_holds([a, b, c], 0.5) == [c]


def test_no_subset_of_that_size_is_none() -> None:
    assert kept_holds([_pg(2 / 3)], 1 / 3) is None
    assert kept_holds([_pg(1.0), _pg(1.0)], 0.5) is None
    assert kept_holds([], 0.5) is None
