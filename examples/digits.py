"""Train a deep belief network on scikit-learn's bundled digits and print its test accuracy.

Run with ``python examples/digits.py``. The split is the one the project's accuracy figures
use: pixels scaled to [0, 1], ``train_test_split(test_size=0.25, random_state=0,
stratify=y)``. For comparison the script also fits two scikit-learn peers on the same split.
"""

import time

from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import BernoulliRBM, MLPClassifier
from sklearn.pipeline import make_pipeline

from skdbn import DistributedDBN


def load_split():
    """Digits scaled to [0, 1] and split 75/25, stratified."""
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


def timed_score(model, X_train, X_test, y_train, y_test):
    """Fit ``model`` and return (test accuracy, seconds)."""
    start = time.perf_counter()
    model.fit(X_train, y_train)
    return model.score(X_test, y_test), time.perf_counter() - start


def main():
    X_train, X_test, y_train, y_test = load_split()
    dbn = DistributedDBN(random_state=0)
    accuracy, seconds = timed_score(dbn, X_train, X_test, y_train, y_test)
    print(f"DistributedDBN{dbn.hidden_layer_sizes}: test accuracy {accuracy:.4f} "
          f"({seconds:.1f} s, {dbn.n_iter_} fine-tuning epochs)")
    for layer, history in enumerate(dbn.pretraining_history_):
        print(f"  layer {layer} pretraining: reconstruction error "
              f"{history['reconstruction_error'][0]:.4f} -> "
              f"{history['reconstruction_error'][-1]:.4f}")

    peers = {
        "MLPClassifier((256, 256))": MLPClassifier((256, 256), max_iter=500, random_state=0),
        "BernoulliRBM(256) + LogisticRegression": make_pipeline(
            BernoulliRBM(n_components=256, learning_rate=0.05, n_iter=20, random_state=0),
            LogisticRegression(max_iter=2000),
        ),
    }
    for name, model in peers.items():
        accuracy, seconds = timed_score(model, X_train, X_test, y_train, y_test)
        print(f"{name}: test accuracy {accuracy:.4f} ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
