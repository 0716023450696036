import numpy as np
import torch

from tidal.innet import dataset
from tidal.innet.binary import BinNetNN, xnor_dot


def test_xnor_popcount_equals_signed_dot_product() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((7, 37)) < 0.5
    w = rng.random((5, 37)) < 0.5
    expect = np.where(a, 1, -1) @ np.where(w, 1, -1).T
    assert np.array_equal(xnor_dot(a, w), expect)


def test_binarized_model_reference_is_bit_exact() -> None:
    torch.manual_seed(1)
    m = BinNetNN(c1=4, c2=8, hidden=16).double().eval()
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (50, 68)).astype(np.uint8)
    iat = rng.integers(0, 256, 50).astype(np.uint8)
    with torch.no_grad():
        lt = m(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(iat.astype(np.int64)))
    assert np.array_equal(lt.numpy(), m.to_ref().forward(x, iat).astype(np.float64))


def test_synthetic_flows_are_labeled_synthetic() -> None:
    ps = dataset.load([], [], synthetic_flows=8)  # no captures: all synthetic, both labels
    assert ps.synthetic_benign
    assert all(f.synthetic for f in ps.flows)
    assert {f.label for f in ps.flows} == {0, 1, -1}  # -1: the covert receivers' pure ACKs
    sp = dataset.split(ps)
    assert len(sp["test"]) and len(sp["train"])


def test_binarized_layers_map_to_switches_without_multiplication() -> None:
    from tidal.innet.fabric import Fabric
    from tidal.innet.mapper import map_network

    torch.manual_seed(2)
    m = BinNetNN(c1=4, c2=8, hidden=16)
    with torch.no_grad():
        m.t2.normal_(0, 3)
        m.t3.normal_(0, 5)
    ref = m.to_ref()
    mapping = map_network(ref)
    assert mapping.max_stages <= 12
    kinds = {t.kind for p in mapping.programs for st in p.stages for t in st}
    assert "sign" in kinds and "mac" not in kinds
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (100, 68)).astype(np.uint8)
    iat = rng.integers(0, 256, 100).astype(np.uint8)
    verdict, logits = Fabric(mapping).run_batch(x, iat)
    assert np.array_equal(logits, ref.forward(x, iat))
    assert np.array_equal(verdict, ref.predict(x, iat))
