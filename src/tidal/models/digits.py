"""The real-data family: three classifiers trained here on scikit-learn's digits (8x8 images).

Input: float32 (64,) pixel values scaled to [0, 1] (sklearn's 0..16 divided by 16); output: 10
logits. Weights and the measured held-out accuracy are package data (`weights/digits.npz`,
`weights/digits_metrics.json`), reproduced by ``python -m tidal.models.digits`` (seeded;
split: 25% held out, stratified, random_state=0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tidal.core.errors import TidalError
from tidal.models.digits_data import DIGITS_VARIANTS, load_split

WEIGHTS_DIR = Path(__file__).with_name("weights")
WEIGHTS_FILE = WEIGHTS_DIR / "digits.npz"
METRICS_FILE = WEIGHTS_DIR / "digits_metrics.json"


class DigitsLinear(nn.Module):
    """Multinomial logistic regression."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class DigitsMLP(nn.Module):
    """Two hidden layers of 128 ReLU units."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions (32, 64 channels) on the 8x8 image, then a dense layer."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU())
        self.out = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.head(self.features(x.reshape(-1, 1, 8, 8))))


_ARCH: dict[str, type[nn.Module]] = {
    "digits-linear": DigitsLinear,
    "digits-mlp": DigitsMLP,
    "digits-cnn": DigitsCNN,
}


def build_digits(name: str) -> nn.Module:
    """The trained model `name` (weights from package data), in eval mode."""
    if not WEIGHTS_FILE.is_file():
        raise TidalError(
            f"digits weights missing at {WEIGHTS_FILE}; run `python -m tidal.models.digits`"
        )
    model = _ARCH[name]()
    with np.load(WEIGHTS_FILE) as z:
        prefix = name + "/"
        state = {k[len(prefix) :]: torch.from_numpy(z[k]) for k in z.files if k.startswith(prefix)}
    model.load_state_dict(state)
    return model.eval()


def _train_one(name: str, xtr: np.ndarray, ytr: np.ndarray, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    model = _ARCH[name]()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of `x` classified as `y`."""
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def train_all(epochs: int = 60) -> dict[str, dict[str, float]]:
    """Train the three variants, save weights + metrics as package data, return the metrics."""
    torch.set_num_threads(1)
    xtr, xte, ytr, yte = load_split()
    arrays: dict[str, np.ndarray] = {}
    metrics: dict[str, dict[str, float]] = {}
    for name in DIGITS_VARIANTS:
        model = _train_one(name, xtr, ytr, epochs)
        for k, v in model.state_dict().items():
            arrays[f"{name}/{k}"] = v.detach().numpy()
        metrics[name] = {
            "train_accuracy": accuracy(model, xtr, ytr),
            "test_accuracy": accuracy(model, xte, yte),
            "test_samples": float(len(yte)),
            "epochs": float(epochs),
        }
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(WEIGHTS_FILE, **arrays)  # type: ignore[arg-type]
    METRICS_FILE.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


if __name__ == "__main__":
    print(json.dumps(train_all(), indent=2))
