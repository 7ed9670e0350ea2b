"""Small data, per epoch: skdbn's fine-tuning and pretraining against scikit-learn's
``MLPClassifier`` and ``BernoulliRBM`` on the same data, at the same minibatch, in one run.

On the 1,347 training digits of the bundled 8x8 set (``benchmark_datasets.digits_8``, the
split the defaults were chosen on), every fit runs a fixed number of epochs (no stopping rule
for either side), at its defaults otherwise, where a user's small fit runs: skdbn in this
process (one worker, the default below 10,000 rows), scikit-learn as it always does.

- **Fine-tuning**: ``DistributedDBN((256, 256), pretrain_epochs=0, max_iter=E)`` against
  ``MLPClassifier((256, 256), solver="sgd", max_iter=E)`` (SGD with Nesterov momentum, as
  ours uses momentum), at batch 21 (what ``batch_size="auto"`` gives 1,347 rows: 1,347 // 80,
  clipped to [10, 100]) and at batch 200 (``MLPClassifier``'s own default).
- **Pretraining**: ``DistributedDBN((256,)).fit(X)`` with ``pretrain_epochs=E`` against
  ``BernoulliRBM(256, n_iter=E)``, at the same batches.

Each pair alternates over ``--repeats`` repeats; the script prints the median milliseconds per
epoch (a whole fit's wall time, validation included, over its epochs) and their ratio.

Run: ``python benchmarks/bench_small_epochs.py`` (about two minutes on 2 cores).
"""

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import BernoulliRBM, MLPClassifier

from skdbn import DistributedDBN

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_datasets import digits_8


def seconds_of(make, *data):
    """Wall time of ``make().fit(*data)``."""
    model = make()
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(*data)
    return time.perf_counter() - started


def compare(name, ours, theirs, data, epochs, repeats):
    """Alternate the two fits; print median ms per epoch and the ratio."""
    seconds_of(ours, *data)  # warm up imports and thread pools
    seconds_of(theirs, *data)
    mine, peer = [], []
    for _ in range(repeats):
        mine.append(seconds_of(ours, *data))
        peer.append(seconds_of(theirs, *data))
    ours_ms = 1000 * statistics.median(mine) / epochs
    theirs_ms = 1000 * statistics.median(peer) / epochs
    print(f"  {name:38s} skdbn {ours_ms:7.1f} ms/epoch   scikit-learn {theirs_ms:7.1f} ms/epoch"
          f"   ratio {theirs_ms / ours_ms:.2f}x (above 1: skdbn faster)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    X_train, _, y_train, _ = digits_8()
    E = args.epochs
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{len(X_train)} x {X_train.shape[1]} digits, {E} epochs per fit, "
          f"median of {args.repeats}")
    for batch in (21, 200):
        compare(f"fine-tuning (256, 256), batch {batch}",
                lambda b=batch: DistributedDBN((256, 256), pretrain_epochs=0, max_iter=E,
                                               tol=0.0, n_iter_no_change=E + 1, batch_size=b,
                                               random_state=0),
                lambda b=batch: MLPClassifier((256, 256), solver="sgd", max_iter=E, tol=0.0,
                                              n_iter_no_change=E + 1, batch_size=b,
                                              random_state=0),
                (X_train, y_train), E, args.repeats)
        compare(f"pretraining 64 -> 256 (CD-1), batch {batch}",
                lambda b=batch: DistributedDBN((256,), pretrain_epochs=E, batch_size=b,
                                               random_state=0),
                lambda b=batch: BernoulliRBM(256, n_iter=E, batch_size=b, random_state=0),
                (X_train,), E, args.repeats)


if __name__ == "__main__":
    main()
