"""
Training on a GPU, and on PyTorch tensors
=========================================

Fits the same DBN three ways and prints accuracy and time side by side:

1. the default numpy path on this machine's cores (``device="cpu"``);
2. ``device="cuda"``: PyTorch on the visible GPUs, from numpy arrays; the fitted model is
   numpy, so it pickles and predicts where there is neither torch nor a GPU;
3. PyTorch tensors under scikit-learn's ``array_api_dispatch``: the fit trains in PyTorch on
   the tensors' device (the GPU if there is one, else the CPU) and answers tensors there.

Step 2 is skipped on a machine without a CUDA GPU. scikit-learn accepts
``array_api_dispatch`` only when scipy's Array API mode is on, which must be set before
scipy is imported: run ``SCIPY_ARRAY_API=1 python examples/gpu_digits.py`` (the script says
so and skips step 3 otherwise). Needs ``pip install "skdbn[gpu]"``.

On the 1,347 bundled 8x8 digits the fixed costs dominate; ``benchmarks/bench_gpu.py``
measures a GPU on 60,000 rows. The documentation shows this script without running it
(``tests/test_array_api.py`` runs it).
"""

import os
import time

import numpy as np
import sklearn
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skdbn import DistributedDBN

PARAMS = dict(hidden_layer_sizes=(256, 128), pretrain_epochs=5, max_iter=50, random_state=0)


def timed_fit(X_train, y_train, X_test, y_test, **settings):
    """The fitted model, its test accuracy and the fit's seconds."""
    started = time.perf_counter()
    model = DistributedDBN(**PARAMS, **settings).fit(X_train, y_train)
    seconds = time.perf_counter() - started
    return model, model.score(X_test, y_test), seconds


def main():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        (X / 16.0).astype(np.float32), y, test_size=0.25, random_state=0, stratify=y)

    _, accuracy, seconds = timed_fit(X_train, y_train, X_test, y_test)
    print(f"numpy on the CPU:      accuracy {accuracy:.4f} in {seconds:.1f} s")

    if torch.cuda.is_available():
        model, accuracy, seconds = timed_fit(X_train, y_train, X_test, y_test, device="cuda")
        print(f"device='cuda':         accuracy {accuracy:.4f} in {seconds:.1f} s on "
              f"{model.worker_stats_[0]['device']}; coefs_ are {type(model.coefs_[0]).__name__}")
    else:
        print("device='cuda':         skipped, PyTorch sees no CUDA device")

    if os.environ.get("SCIPY_ARRAY_API") != "1":
        print("tensors:               skipped, run with SCIPY_ARRAY_API=1 for array_api_dispatch")
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tensors = [torch.as_tensor(a, device=device) for a in (X_train, y_train, X_test, y_test)]
    with sklearn.config_context(array_api_dispatch=True):
        model, accuracy, seconds = timed_fit(*tensors)
        predicted = model.predict(tensors[2])
    print(f"tensors on {device + ':':<11} accuracy {accuracy:.4f} in {seconds:.1f} s; "
          f"predictions are a {type(predicted).__name__} on {predicted.device}")


if __name__ == "__main__":
    main()
