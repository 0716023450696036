from pathlib import Path

import numpy as np
import torch

from tidal.innet.intref import IntNet, requant
from tidal.innet.qmodel import NetNN, torch_predict


def test_requant_rounds_half_up_and_clamps() -> None:
    acc = np.array([-100, 7, 8, 23, 24, 10**6])
    assert requant(acc, 4).tolist() == [0, 0, 1, 1, 2, 127]


def test_committed_model_is_bit_exact_with_integer_reference(
    model: NetNN, net: IntNet, samples: tuple[np.ndarray, np.ndarray]
) -> None:
    x, iat = samples
    logits_int = net.forward(x, iat)
    m = model.double()
    with torch.no_grad():
        lt = m(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(iat.astype(np.int64)))
    model.float()
    scale = 2.0 ** (4 + model.exponents()["fc2"])
    assert np.array_equal(lt.numpy() * scale, logits_int.astype(np.float64))
    assert np.array_equal(torch_predict(model, x, iat), net.predict(x, iat))


def test_fresh_random_models_are_bit_exact_too() -> None:
    torch.manual_seed(3)
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (64, 68)).astype(np.uint8)
    iat = rng.integers(0, 256, 64).astype(np.uint8)
    for feats in ((True, True), (True, False), (False, True)):
        m = NetNN(use_bytes=feats[0], use_timing=feats[1])
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(5.0)  # large weights exercise clamping and saturation
        assert np.array_equal(torch_predict(m, x, iat), m.to_int().predict(x, iat))


def test_save_and_load_roundtrip(net: IntNet, tmp_path, samples) -> None:
    path = tmp_path / "n.npz"
    net.save(path)
    back = IntNet.load(path)
    x, iat = samples
    assert np.array_equal(back.forward(x, iat), net.forward(x, iat))


def test_committed_integer_weights_match_the_torch_model(net: IntNet, samples) -> None:
    from tidal.innet.evaluate import DEFAULT_MODEL

    x, iat = samples
    committed = IntNet.load(DEFAULT_MODEL.with_suffix(".npz"))
    assert np.array_equal(committed.forward(x, iat), net.forward(x, iat))


def test_saved_model_keeps_its_decision_window_and_quorum(tmp_path: Path) -> None:
    from tidal.innet.evaluate import load_model, model_k, model_need, save_model

    m = NetNN()
    save_model(m, tmp_path / "a.pt", k=32, need=26)
    assert model_k(tmp_path / "a.pt") == 32 and model_need(tmp_path / "a.pt") == 26
    save_model(m, tmp_path / "b.pt", k=16)  # no quorum stored: 3/4 of k
    assert model_k(tmp_path / "b.pt") == 16 and model_need(tmp_path / "b.pt") is None
    assert model_need(tmp_path / "missing.pt") is None
    back = load_model(tmp_path / "a.pt")
    assert all(
        torch.equal(a, b)
        for a, b in zip(back.state_dict().values(), m.state_dict().values(), strict=True)
    )
