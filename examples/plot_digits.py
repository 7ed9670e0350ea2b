"""
Digits: a deep belief network against scikit-learn's networks
==============================================================

A :class:`~skdbn.DistributedDBN` with its default settings (two hidden layers of 256 units,
20 epochs of contrastive divergence per layer, then up to 100 epochs of backprop) on
scikit-learn's bundled 8x8 digits, against two peers from scikit-learn on the same split: a
:class:`~sklearn.neural_network.MLPClassifier` of the same shape trained from random weights,
and one :class:`~sklearn.neural_network.BernoulliRBM` layer under a logistic regression.

The split is the one the project's accuracy figures use: pixels scaled to [0, 1], 25% held out,
stratified, ``random_state=0``.
"""

# %%
# Fit the network
# ---------------
# 1,347 training rows are too few to be worth splitting between workers, so the fit runs in
# this process, deterministically.
import time

from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import BernoulliRBM, MLPClassifier
from sklearn.pipeline import make_pipeline

from skdbn import DistributedDBN
from skdbn.plotting import FiltersDisplay, TrainingCurvesDisplay

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X / 16.0, y, test_size=0.25, random_state=0, stratify=y)

start = time.perf_counter()
dbn = DistributedDBN(random_state=0).fit(X_train, y_train)
print(f"DistributedDBN{dbn.hidden_layer_sizes}: test accuracy {dbn.score(X_test, y_test):.4f} "
      f"({time.perf_counter() - start:.1f} s, {dbn.n_iter_} fine-tuning epochs)")

# %%
# What training did
# -----------------
# The reconstruction error of each pretrained layer falls epoch after epoch; fine-tuning then
# lowers the classification loss (``pretraining_history_`` and ``loss_curve_``).
TrainingCurvesDisplay.from_estimator(dbn)

# %%
# What the first layer learned
# ----------------------------
# Each image is the weights of one hidden unit over the 8x8 pixels: strokes and blobs that
# the unit responds to.
FiltersDisplay.from_estimator(dbn, n_filters=64)

# %%
# The peers
# ---------
peers = {
    "MLPClassifier((256, 256))": MLPClassifier((256, 256), max_iter=500, random_state=0),
    # The settings of scikit-learn's own RBM example (a large C: the features are
    # probabilities), with 40 epochs.
    "BernoulliRBM(256) + LogisticRegression": make_pipeline(
        BernoulliRBM(n_components=256, learning_rate=0.06, n_iter=40, random_state=0),
        LogisticRegression(C=6000, max_iter=5000),
    ),
}
for name, model in peers.items():
    start = time.perf_counter()
    model.fit(X_train, y_train)
    print(f"{name}: test accuracy {model.score(X_test, y_test):.4f} "
          f"({time.perf_counter() - start:.1f} s)")
