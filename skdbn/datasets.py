"""Data sets for examples and benchmarks, built from scikit-learn's bundled data (nothing is
downloaded)."""

import numpy as np
from scipy import ndimage
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def load_distorted_digits(n_train=8000, n_test=2000, random_state=0):
    """An MNIST-like task: scikit-learn's 8x8 digits, drawn at 28x28 and distorted at random.

    Each of the 1,797 bundled digits goes to the training or the test originals first
    (stratified, 80/20), so that no test image is a distortion of a training image. Every
    image is an original drawn at 20x20 in the middle of a 28x28 frame (as MNIST centres its
    digits), rotated by up to 12 degrees, scaled by 0.9 to 1.1, sheared by up to 0.15 and
    shifted by up to 2 pixels.

    Parameters
    ----------
    n_train, n_test : int, default=8000, 2000
        Images made from the training and from the test originals.
    random_state : int, default=0
        Seed of the split of the originals and of the distortions.

    Returns
    -------
    X_train : ndarray of shape (n_train, 784)
        Pixels in [0, 1], float64 (as ``load_digits()`` data divided by 16).
    X_test : ndarray of shape (n_test, 784)
    y_train : ndarray of shape (n_train,)
        Digits 0 to 9.
    y_test : ndarray of shape (n_test,)
    """
    images, labels = load_digits(return_X_y=True)
    images = images.reshape(-1, 8, 8) / 16.0
    train, test = train_test_split(np.arange(len(labels)), test_size=0.2,
                                   random_state=random_state, stratify=labels)
    rng = np.random.default_rng(random_state)
    X_train, y_train = _distorted(images[train], labels[train], n_train, rng)
    X_test, y_test = _distorted(images[test], labels[test], n_test, rng)
    return X_train, X_test, y_train, y_test


def _distorted(originals, labels, n_samples, rng):
    """``n_samples`` random distortions of the 8x8 ``originals``, as 784 pixels each."""
    framed = np.zeros((len(originals), 28, 28))
    framed[:, 4:24, 4:24] = [ndimage.zoom(image, 2.5, order=1) for image in originals]
    which = rng.integers(0, len(originals), n_samples)
    images = np.stack([ndimage.affine_transform(framed[k], *_random_affine(rng), order=1)
                       for k in which])
    return np.clip(images, 0.0, 1.0).reshape(n_samples, 784), labels[which]


def _random_affine(rng, centre=13.5):
    """``(matrix, offset)`` of ``ndimage.affine_transform`` for one random distortion
    about the frame's centre."""
    angle = np.deg2rad(rng.uniform(-12, 12))
    scale = rng.uniform(0.9, 1.1)
    shear = rng.uniform(-0.15, 0.15)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = rotation @ np.array([[1.0, shear], [0.0, 1.0]]) / scale
    shift = rng.uniform(-2, 2, size=2)
    return matrix, np.full(2, centre) - matrix @ (centre + shift)
