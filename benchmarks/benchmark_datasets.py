"""Data sets the benchmarks share, all built from scikit-learn's bundled data or generated
(nothing is downloaded).

- ``digits_28``: an MNIST-like task, ``skdbn.datasets.load_distorted_digits``: scikit-learn's
  8x8 digits drawn at 28x28 and distorted at random (8,000 training, 2,000 test images from
  separate originals), float64 in [0, 1].
- ``digits_8``: the bundled 8x8 digits scaled to [0, 1], split 75/25 stratified (the split of
  the project's accuracy figures).
- ``table``: a non-image table, ``make_classification`` with 40 real-valued columns (20
  informative, 10 redundant), 5 classes and 2% flipped labels; Gaussian visible units.
"""

from sklearn.datasets import load_digits, make_classification
from sklearn.model_selection import train_test_split

from skdbn.datasets import load_distorted_digits


def digits_28(n_train=8000, n_test=2000, seed=0):
    """``(X_train, X_test, y_train, y_test)`` of distorted 28x28 digits (float64 in [0, 1]):
    ``skdbn.datasets.load_distorted_digits``."""
    return load_distorted_digits(n_train, n_test, random_state=seed)


def digits_8(seed=0):
    """``(X_train, X_test, y_train, y_test)`` of the bundled digits in [0, 1]."""
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=seed, stratify=y)


def table(n_train=8000, n_test=2000, seed=0):
    """``(X_train, X_test, y_train, y_test)`` of a generated 40-column, 5-class table."""
    X, y = make_classification(n_samples=n_train + n_test, n_features=40, n_informative=20,
                               n_redundant=10, n_classes=5, n_clusters_per_class=2,
                               flip_y=0.02, class_sep=1.0, random_state=seed)
    return train_test_split(X, y, test_size=n_test, random_state=seed, stratify=y)


DATASETS = {"digits_28": digits_28, "digits_8": digits_8, "table": table}
