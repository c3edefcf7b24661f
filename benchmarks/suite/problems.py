"""The suite's problems: small classification sets that run offline (docs/defaults.md).

Every problem is a flat feature matrix with a fixed, seeded, stratified split into
train / validation / test (60 / 20 / 20). Tabular sets are standardised with the training
split's statistics (what a user of these sets does); digits keeps pixels / 16 in [0, 1]
(no special encoder); the synthetic 2-D sets are used as generated.

``DEVELOPMENT`` problems are the ones the default recipe was developed on. ``HELD_OUT``
problems were kept aside while the recipe was chosen and looked at only at the end, so that
their numbers say how the defaults do on problems nobody tuned them to.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

#: The split never depends on the training seed: every method and seed sees the same data.
SPLIT_SEED = 0
_VAL_FRACTION = 0.2
_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Problem:
    """One classification problem, split and scaled.

    Attributes:
        name: short identifier used on the command line and in tables.
        x_train, y_train, x_val, y_val, x_test, y_test: float32 features ``(N, d)`` and
            int64 labels ``(N,)``.
        num_classes: ``m``.
        description: how the data were made, for the report.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    description: str

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def is_2d(self) -> bool:
        return self.num_features == 2


def _spiral(n: int, arms: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``arms`` interleaved Archimedean spirals, one class per arm, Gaussian noise."""
    per_arm = n // arms
    xs, ys = [], []
    for arm in range(arms):
        r = np.linspace(0.15, 1.0, per_arm)
        theta = 3.0 * math.pi * r + 2.0 * math.pi * arm / arms
        pts = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
        xs.append(pts + noise * rng.standard_normal(pts.shape))
        ys.append(np.full(per_arm, arm))
    return np.concatenate(xs), np.concatenate(ys)


def _load(name: str) -> tuple[np.ndarray, np.ndarray, str, bool]:
    """Raw ``(x, y, description, standardise)`` of a problem."""
    from sklearn import datasets

    rng = np.random.default_rng(SPLIT_SEED)
    if name == "circles":
        x, y = datasets.make_circles(n_samples=600, noise=0.05, factor=0.5, random_state=SPLIT_SEED)
        return x, y, "make_circles(600, noise=0.05, factor=0.5)", False
    if name == "blobs10":
        x, y = datasets.make_classification(
            n_samples=2000,
            n_features=20,
            n_informative=10,
            n_redundant=4,
            n_classes=10,
            n_clusters_per_class=1,
            class_sep=1.5,
            random_state=SPLIT_SEED,
        )
        return x, y, "make_classification(2000, 20 features, 10 informative, 10 classes)", True
    if name == "iris":
        data = datasets.load_iris()
        return data.data, data.target, "iris (150, 4 features, 3 classes)", True
    if name == "wine":
        data = datasets.load_wine()
        return data.data, data.target, "wine (178, 13 features, 3 classes)", True
    if name == "breast_cancer":
        data = datasets.load_breast_cancer()
        return data.data, data.target, "breast cancer (569, 30 features, 2 classes)", True
    if name == "digits":
        data = datasets.load_digits()
        return data.data / 16.0, data.target, "digits (1797, 64 pixels / 16, 10 classes)", False
    if name == "spiral2":
        x, y = _spiral(600, 2, 0.03, rng)
        return x, y, "two-arm spiral (600, 1.5 turns, noise 0.03)", False
    # held-out problems
    if name == "moons":
        x, y = datasets.make_moons(n_samples=600, noise=0.15, random_state=SPLIT_SEED)
        return x, y, "make_moons(600, noise=0.15)", False
    if name == "spiral3":
        x, y = _spiral(900, 3, 0.03, rng)
        return x, y, "three-arm spiral (900, 1.5 turns, noise 0.03)", False
    if name == "quantiles":
        x, y = datasets.make_gaussian_quantiles(n_samples=900, n_features=4, n_classes=3, random_state=SPLIT_SEED)
        return x, y, "make_gaussian_quantiles(900, 4 features, 3 classes)", True
    if name == "classif5":
        x, y = datasets.make_classification(
            n_samples=1200,
            n_features=12,
            n_informative=6,
            n_redundant=2,
            n_classes=5,
            n_clusters_per_class=2,
            flip_y=0.02,
            random_state=SPLIT_SEED + 1,
        )
        return x, y, "make_classification(1200, 12 features, 5 classes, 2 clusters each)", True
    raise ValueError(f"problem must be one of {list(PROBLEMS)}, got {name!r}")


def load_problem(name: str) -> Problem:
    """Load, split (stratified, seeded) and scale the problem called ``name``."""
    from sklearn.model_selection import train_test_split

    if name not in PROBLEMS:
        raise ValueError(f"problem must be one of {list(PROBLEMS)}, got {name!r}")
    x, y, description, standardise = _load(name)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)
    idx = np.arange(len(y))
    idx_rest, idx_test = train_test_split(idx, test_size=_TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    idx_train, idx_val = train_test_split(
        idx_rest, test_size=_VAL_FRACTION / (1 - _TEST_FRACTION), random_state=SPLIT_SEED, stratify=y[idx_rest]
    )
    if standardise:
        mean, std = x[idx_train].mean(0), x[idx_train].std(0)
        x = (x - mean) / np.where(std > 0, std, 1.0)
        description += ", standardised"

    def part(index: np.ndarray) -> tuple[Tensor, Tensor]:
        return torch.tensor(x[index], dtype=torch.float32), torch.tensor(y[index], dtype=torch.long)

    (xt, yt), (xv, yv), (xs, ys) = part(idx_train), part(idx_val), part(idx_test)
    description += f"; stratified split {len(yt)}/{len(yv)}/{len(ys)} (seed {SPLIT_SEED})"
    return Problem(name, xt, yt, xv, yv, xs, ys, int(y.max()) + 1, description)


DEVELOPMENT: tuple[str, ...] = ("circles", "blobs10", "iris", "wine", "breast_cancer", "digits", "spiral2")
HELD_OUT: tuple[str, ...] = ("moons", "spiral3", "quantiles", "classif5")
PROBLEMS: tuple[str, ...] = DEVELOPMENT + HELD_OUT
LOADERS: dict[str, Callable[[], Problem]] = {name: (lambda n=name: load_problem(n)) for name in PROBLEMS}
