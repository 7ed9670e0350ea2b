"""
Digits at 28x28: a deep belief network against scikit-learn's networks
======================================================================

A :class:`~skdbn.DistributedDBN` with its default settings (five epochs of contrastive
divergence per layer, then backprop until the training loss stops improving) against two
peers from scikit-learn on the same data, each at its defaults: a
:class:`~sklearn.neural_network.MLPClassifier` of the same shape trained from random weights,
and one :class:`~sklearn.neural_network.BernoulliRBM` layer under a logistic regression.

The data is an MNIST-like task built from scikit-learn's bundled digits
(:func:`skdbn.datasets.load_distorted_digits`): 8,000 training and 2,000 test images of 28x28
pixels, each a randomly rotated, scaled, sheared and shifted copy of an 8x8 digit, the test
images made from other originals than the training ones. Every model gets the pixels as
float32, as image pipelines give them, and trains in float32.
"""

# %%
# Load the images
# ---------------
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import BernoulliRBM, MLPClassifier
from sklearn.pipeline import make_pipeline

from skdbn import DistributedDBN
from skdbn.datasets import load_distorted_digits
from skdbn.plotting import FiltersDisplay, TrainingCurvesDisplay

X_train, X_test, y_train, y_test = load_distorted_digits()
X_train, X_test = X_train.astype(np.float32), X_test.astype(np.float32)

# %%
# Fit the network
# ---------------
# 8,000 rows are few enough for one worker in this process, which trains deterministically
# (two workers would be faster per epoch but, measured, less accurate at this size).
start = time.perf_counter()
dbn = DistributedDBN(hidden_layer_sizes=(500, 500), random_state=0).fit(X_train, y_train)
dbn_seconds = time.perf_counter() - start
print(f"DistributedDBN((500, 500)): test accuracy {dbn.score(X_test, y_test):.4f} "
      f"({dbn_seconds:.1f} s, {dbn.n_iter_} fine-tuning epochs)")

# %%
# What training did
# -----------------
# The reconstruction error of each pretrained layer falls epoch after epoch; fine-tuning then
# lowers the classification loss until it improves by less than ``tol`` for
# ``n_iter_no_change`` epochs (``pretraining_history_`` and ``loss_curve_``).
TrainingCurvesDisplay.from_estimator(dbn)

# %%
# What the first layer learned
# ----------------------------
# Each image is the weights of one hidden unit over the 28x28 pixels: strokes and blobs that
# the unit responds to.
FiltersDisplay.from_estimator(dbn, n_filters=64)

# %%
# The peers
# ---------
# Both at their defaults, with the same hidden layers as the network.
peers = {
    "MLPClassifier((500, 500))": MLPClassifier((500, 500), random_state=0),
    "BernoulliRBM(500) + LogisticRegression": make_pipeline(
        BernoulliRBM(n_components=500, random_state=0),
        LogisticRegression(max_iter=1000),
    ),
}
for name, model in peers.items():
    start = time.perf_counter()
    model.fit(X_train, y_train)
    seconds = time.perf_counter() - start
    print(f"{name}: test accuracy {model.score(X_test, y_test):.4f} ({seconds:.1f} s, "
          f"{seconds / dbn_seconds:.2f}x the network's time)")
