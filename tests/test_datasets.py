"""The data sets of examples and benchmarks, built from scikit-learn's bundled data."""

import numpy as np

from skdbn.datasets import load_distorted_digits


def test_distorted_digits_are_mnist_sized_and_reproducible():
    X_train, X_test, y_train, y_test = load_distorted_digits(n_train=300, n_test=100)
    assert X_train.shape == (300, 784) and X_test.shape == (100, 784)
    assert X_train.dtype == np.float64 and X_train.min() >= 0 and X_train.max() <= 1
    assert set(np.unique(y_train)) == set(range(10))
    # Digits are drawn in the middle of the frame: the border stays nearly blank.
    images = X_train.reshape(-1, 28, 28)
    assert images[:, 0, :].mean() < 0.01 and images[:, 10:18, 10:18].mean() > 0.2
    again = load_distorted_digits(n_train=300, n_test=100)
    for a, b in zip((X_train, X_test, y_train, y_test), again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = load_distorted_digits(n_train=300, n_test=100, random_state=1)
    assert not np.array_equal(other[0], X_train)


def test_test_images_come_from_other_originals_than_training_images(monkeypatch):
    from skdbn import datasets

    originals = []
    distorted = datasets._distorted

    def recording(images, labels, n_samples, rng):
        originals.append({image.tobytes() for image in images})
        return distorted(images, labels, n_samples, rng)

    monkeypatch.setattr(datasets, "_distorted", recording)
    datasets.load_distorted_digits(n_train=50, n_test=20)
    train, test = originals
    assert len(train) > 1000 and len(test) > 300
    assert not train & test
