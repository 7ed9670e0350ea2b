"""
Features learned without labels, on 28x28 images
================================================

A deep belief network can be trained without labels and used as a feature extractor, like
scikit-learn's :class:`~sklearn.neural_network.BernoulliRBM`. Here it learns 256 features
from 10,000 generated 28x28 binary images (MNIST-sized, no download), and a logistic
regression on those features is compared with one on the raw pixels, with few labels.

The images are strokes: each of ten classes has three prototypes made of random line
segments, and every image is a prototype shifted by up to two pixels with 3% of its pixels
flipped.
"""

# %%
# Generate the images
# -------------------
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

from skdbn import DistributedDBN
from skdbn.plotting import FiltersDisplay


def strokes_image(rng, n_strokes=3, size=28):
    """A binary image of ``n_strokes`` random line segments, two pixels wide."""
    image = np.zeros((size, size), dtype=bool)
    for _ in range(n_strokes):
        (r0, c0), (r1, c1) = rng.integers(5, size - 5, size=(2, 2))
        for t in np.linspace(0, 1, 40):
            r, c = round(r0 + t * (r1 - r0)), round(c0 + t * (c1 - c0))
            image[r:r + 2, c:c + 2] = True
    return image


def mnist_like(n_samples, seed=0, n_classes=10, per_class=3):
    """Shifted, noisy copies of stroke prototypes, flattened to 784 float32 pixels."""
    rng = np.random.default_rng(seed)
    prototypes = [strokes_image(rng) for _ in range(n_classes * per_class)]
    which = rng.integers(0, len(prototypes), n_samples)
    shifts = rng.integers(-2, 3, size=(n_samples, 2))
    images = np.stack([np.roll(prototypes[k], tuple(s), axis=(0, 1))
                       for k, s in zip(which, shifts, strict=True)])
    images ^= rng.random(images.shape) < 0.03
    return images.reshape(n_samples, -1).astype(np.float32), which % n_classes


X, y = mnist_like(12_000)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=2_000, random_state=0)
print(f"{X_train.shape[0]} training images of {X_train.shape[1]} pixels")

# %%
# Learn features without labels
# -----------------------------
# ``fit(X)`` without labels only pretrains the stack; ``transform`` then gives the top
# layer's activations. The data is float32, so training runs in float32.
start = time.perf_counter()
dbn = DistributedDBN(hidden_layer_sizes=(256,), pretrain_epochs=10, batch_size=100,
                     random_state=0).fit(X_train)
print(f"pretrained in {time.perf_counter() - start:.1f} s on {dbn.n_workers_} worker(s)")
FiltersDisplay.from_estimator(dbn, n_filters=64)

# %%
# Few labels: features against raw pixels
# ---------------------------------------
# With only 100 labelled images, a logistic regression on the features learned from all the
# unlabelled ones, against one on the pixels.
labelled = slice(0, 100)
on_features = LogisticRegression(max_iter=2000).fit(dbn.transform(X_train[labelled]),
                                                    y_train[labelled])
on_pixels = LogisticRegression(max_iter=2000).fit(X_train[labelled], y_train[labelled])
print(f"logistic regression on DBN features: test accuracy "
      f"{on_features.score(dbn.transform(X_test), y_test):.4f}")
print(f"logistic regression on raw pixels:   test accuracy "
      f"{on_pixels.score(X_test, y_test):.4f}")

# %%
# All the labels, in one pipeline
# -------------------------------
# In a pipeline that is given labels, the DBN is pretrained and then fine-tuned with them,
# and the regression is fitted on the top layer of the fine-tuned network.
pipeline = make_pipeline(
    DistributedDBN(hidden_layer_sizes=(256,), pretrain_epochs=10, batch_size=100,
                   random_state=0),
    LogisticRegression(max_iter=2000),
)
print(f"pipeline on all {len(X_train)} labels: test accuracy "
      f"{pipeline.fit(X_train, y_train).score(X_test, y_test):.4f}")
