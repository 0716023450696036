import numpy as np
import pytest

from tidal.core.errors import TidalError
from tidal.innet.fabric import Fabric
from tidal.innet.intref import IntNet
from tidal.innet.mapper import Budget, map_network
from tidal.innet.program import Mapping


def test_default_strict_mapping_fits_twelve_stages(mapping: Mapping) -> None:
    assert mapping.strict_asic
    assert mapping.max_stages <= 12
    assert len(mapping.programs) >= 3
    for p in mapping.programs:
        assert p.max_ops <= 32
        assert all(len(st) <= 16 for st in p.stages)
        assert p.register_bytes <= 65536 and p.header_bits <= 2048
        kinds = {t.kind for st in p.stages for t in st}
        assert "mac" not in kinds  # strict ASIC: no variable x variable multiply


@pytest.mark.parametrize(
    "budget,strict",
    [
        (Budget(), True),
        (Budget(strict_asic=False), False),
        (Budget(stages=10, header_bits=512, ops_per_action=16), True),
    ],
)
def test_emulator_is_bit_exact_under_any_budget(
    net: IntNet, samples: tuple[np.ndarray, np.ndarray], budget: Budget, strict: bool
) -> None:
    m = map_network(net, budget)
    assert m.max_stages <= budget.stages
    assert all(p.max_ops <= budget.ops_per_action for p in m.programs)
    assert all(p.header_bits <= budget.header_bits for p in m.programs)
    x, iat = samples
    verdict, logits = Fabric(m).run_batch(x, iat)
    assert np.array_equal(logits, net.forward(x, iat))
    assert np.array_equal(verdict, net.predict(x, iat))


def test_budget_too_small_names_layer_and_shortfall(net: IntNet) -> None:
    with pytest.raises(TidalError, match=r"layer conv1 .*over by \d+"):
        map_network(net, Budget(stages=3, max_parallel=2))
    with pytest.raises(TidalError, match=r"header_bits is 120 \(short by 24\)"):
        map_network(net, Budget(header_bits=120))
    with pytest.raises(TidalError, match=r"register_bytes is 64 \(short by"):
        map_network(net, Budget(register_bytes=64))


def test_programs_roundtrip_as_json(mapping: Mapping, tmp_path, samples) -> None:
    mapping.save(tmp_path)
    back = Mapping.load(tmp_path)
    x, iat = samples
    assert np.array_equal(Fabric(back).run_batch(x, iat)[0], Fabric(mapping).run_batch(x, iat)[0])
