"""What watching a fit costs: the same fit at ``verbose=0`` and ``verbose=1``.

At ``verbose=1`` every worker sends the driver a snapshot twice a second and at each epoch's
end (one short authenticated connection each), and the driver draws a tqdm bar; at
``verbose=0`` no listener or reporter exists. Pretraining one 784 -> 500 layer on generated
MNIST-like rows, float32, batch 100, ``backend="local"`` with one worker per core; fits
alternate between the two settings, medians of ``--repeats``. The bar is drawn to /dev/null.

Run: ``python benchmarks/bench_progress.py`` (about a minute on 2 cores).
"""

import argparse
import contextlib
import os
import platform

import numpy as np
from bench_cores import _fit_seconds, mnist_like  # beside this script

from skdbn import DistributedDBN
from skdbn._machine import usable_cpus


def fit_seconds(X, workers, epochs, verbose):
    model = DistributedDBN(hidden_layer_sizes=(500,), batch_size=100, backend="local",
                           n_workers=workers, pretrain_epochs=epochs, verbose=verbose,
                           random_state=0)
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink), \
            contextlib.redirect_stdout(sink):
        return _fit_seconds(model, X)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    args = parser.parse_args()
    workers = args.workers or usable_cpus()
    X, _ = mnist_like(args.samples)
    fit_seconds(X, workers, 1, 0)  # warm the pool and the shared data
    times = {0: [], 1: []}
    for _ in range(args.repeats):
        for verbose in (0, 1):
            times[verbose].append(fit_seconds(X, workers, args.epochs, verbose))
    quiet, watched = (float(np.median(times[v])) for v in (0, 1))
    print(f"machine: {platform.machine()}, {usable_cpus()} usable cores; {workers} workers, "
          f"{args.samples} samples x {args.epochs} epochs, median of {args.repeats}")
    print(f"  verbose=0  {quiet:6.2f} s")
    print(f"  verbose=1  {watched:6.2f} s  ({watched / quiet:.3f}x verbose=0)")


if __name__ == "__main__":
    main()
