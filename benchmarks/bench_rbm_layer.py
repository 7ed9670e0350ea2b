"""Pretraining speed of one RBM layer against scikit-learn's BernoulliRBM, in the same run.

Times CD-1 pretraining of a 784 -> 500 layer, batch 100, float32, on generated binary-ish
samples, through the public API (``DistributedDBN(hidden_layer_sizes=(500,),
backend="local").fit(X)``: one worker in this process, as scikit-learn's peer; which
includes input validation and the per-epoch monitoring figures) and sklearn's
``BernoulliRBM(n_components=500, batch_size=100).fit(X)``. The two alternate over several
repeats and the script prints medians, their ratio, and the share of this machine's float32
matrix-multiply rate (measured in the same run) that our epoch reaches. CD-1 costs about
``10 * V * H`` floating-point operations per sample: three products with the weights for the
positive hidden, negative visible and negative hidden units, and one product of twice the batch
for the weight gradient.

Run: ``python benchmarks/bench_rbm_layer.py`` (about two minutes on 2 cores).
"""

import argparse
import os
import platform
import time

import numpy as np
from sklearn.neural_network import BernoulliRBM
from threadpoolctl import threadpool_info

from skdbn import DistributedDBN


def binaryish_samples(n_samples, n_features, seed=0):
    """MNIST-like binary rows: noisy copies of 20 sparse prototypes, as float32."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((20, n_features)) < 0.19
    noise = rng.random((n_samples, n_features)) < 0.03
    return (prototypes[rng.integers(0, 20, n_samples)] ^ noise).astype(np.float32)


def matmul_gflops(size=2048, repeats=5):
    """Median float32 GEMM rate of this machine, GFLOP/s, with numpy's default threads."""
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    out = np.empty_like(a)
    np.matmul(a, a, out=out)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, a, out=out)
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / np.median(seconds) / 1e9


def fit_seconds(make_model, X):
    """Wall time of ``make_model().fit(X)``."""
    model = make_model()
    start = time.perf_counter()
    model.fit(X)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--visible", type=int, default=784)
    parser.add_argument("--hidden", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per timed fit")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    X = binaryish_samples(args.samples, args.visible)
    ours = lambda: DistributedDBN(  # noqa: E731
        hidden_layer_sizes=(args.hidden,), pretrain_epochs=args.epochs, batch_size=100,
        pretrain_learning_rate=0.05, backend="local", random_state=0)
    peer = lambda: BernoulliRBM(  # noqa: E731
        n_components=args.hidden, batch_size=100, n_iter=args.epochs, random_state=0)

    fit_seconds(ours, X[:1000])  # warm up both code paths and the BLAS threads
    fit_seconds(peer, X[:1000])
    rates = {"skdbn": [], "sklearn": [], "matmul": []}
    for repeat in range(args.repeats):
        order = [("skdbn", ours), ("sklearn", peer)]
        for name, make in order if repeat % 2 == 0 else order[::-1]:
            rates[name].append(args.samples * args.epochs / fit_seconds(make, X))
        rates["matmul"].append(matmul_gflops())

    ours_rate, peer_rate = np.median(rates["skdbn"]), np.median(rates["sklearn"])
    matmul = np.median(rates["matmul"])
    flops_per_sample = 10 * args.visible * args.hidden
    ratios = np.array(rates["skdbn"]) / np.array(rates["sklearn"])
    blas = ", ".join(f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads)"
                     for i in threadpool_info())
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"numpy {np.__version__}, BLAS: {blas}")
    print(f"CD-1 layer {args.visible} -> {args.hidden}, batch 100, float32, "
          f"{args.samples} samples x {args.epochs} epochs, {args.repeats} repeats (medians)")
    print(f"skdbn DistributedDBN  : {ours_rate:10.0f} samples/s  "
          f"(all: {', '.join(f'{r:.0f}' for r in rates['skdbn'])})")
    print(f"sklearn BernoulliRBM  : {peer_rate:10.0f} samples/s  "
          f"(all: {', '.join(f'{r:.0f}' for r in rates['sklearn'])})")
    print(f"speed-up over sklearn : {ours_rate / peer_rate:10.2f}x  "
          f"(per-repeat ratios: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"float32 matmul rate   : {matmul:10.1f} GFLOP/s (2048 x 2048)")
    print(f"skdbn epoch           : {ours_rate * flops_per_sample / 1e9:10.1f} GFLOP/s = "
          f"{ours_rate * flops_per_sample / 1e9 / matmul:.0%} of the matmul rate")


if __name__ == "__main__":
    main()
