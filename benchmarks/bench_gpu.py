"""GPU figures: skdbn on a CUDA device against plain PyTorch loops, and against the default
CPU fit of the same machine. Every ratio compares figures of the same run.

Run on a machine with a CUDA GPU (no Java needed: everything trains with
``backend="local"``): ``python benchmarks/bench_gpu.py``, under ten minutes on one H100.
``--smoke`` runs every part at a tiny size on the CPU device (the script's own check; its
figures mean nothing).

1. **Pretraining, CD-1 784 -> 500**, fp32, batch 100 and 1000, on ``--samples`` generated
   MNIST-like binary rows: a plain PyTorch loop written here (the anchor: textbook CD-1 with
   momentum, the rows on the GPU, one ``randperm`` per epoch), against
   ``DistributedDBN((500,), device="cuda", batch_size=b)``, whole fits (samples/s over the
   fit's wall time) and its training loop alone (``worker_stats_``).
2. **Fine-tuning 784-500-500-10**, batch 100: a plain PyTorch MLP (``nn.Sequential`` of
   linear and sigmoid layers, softmax cross-entropy, SGD with momentum 0.9) against
   ``DistributedDBN((500, 500), pretrain_epochs=0, device="cuda")`` for the same epochs.
3. **A whole fit**: ``DistributedDBN((500, 500), random_state=0)`` at its defaults on 60,000
   x 784 distorted digits (``skdbn.datasets.load_distorted_digits``, 10,000 test images), with
   ``device="cuda"`` against the default CPU fit (local worker processes, one per core), with
   the test accuracy of each.
"""

import argparse
import platform
import statistics
import sys
import time

import numpy as np
import torch
from bench_cores import mnist_like

from skdbn import DistributedDBN
from skdbn.datasets import load_distorted_digits


def synchronized_seconds(device, function):
    """Wall seconds of ``function()``, with the device's queue drained on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    began = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - began


def plain_cd1(X, epochs, batch_size, device, learning_rate=0.1, momentum=0.9, n_hidden=500):
    """The anchor: a textbook CD-1 loop in PyTorch on ``device``, rows already there."""
    n_samples, n_visible = X.shape
    generator = torch.Generator(device=device).manual_seed(0)
    W = 0.01 * torch.randn(n_visible, n_hidden, device=device, generator=generator)
    b, c = torch.zeros(n_visible, device=device), torch.zeros(n_hidden, device=device)
    dW, db, dc = torch.zeros_like(W), torch.zeros_like(b), torch.zeros_like(c)
    for _ in range(epochs):
        order = torch.randperm(n_samples, device=device, generator=generator)
        for start in range(0, n_samples, batch_size):
            v0 = X[order[start:start + batch_size]]
            h0 = torch.sigmoid(v0 @ W + c)
            sample = (torch.rand(h0.shape, device=device, generator=generator) < h0).float()
            v1 = torch.sigmoid(sample @ W.T + b)
            h1 = torch.sigmoid(v1 @ W + c)
            step = learning_rate / len(v0)
            dW.mul_(momentum).add_(v0.T @ h0 - v1.T @ h1, alpha=step)
            db.mul_(momentum).add_((v0 - v1).sum(0), alpha=step)
            dc.mul_(momentum).add_((h0 - h1).sum(0), alpha=step)
            W += dW
            b += db
            c += dc
    return W


def plain_mlp(X, y, epochs, batch_size, device, sizes=(500, 500)):
    """The anchor of fine-tuning: an ``nn.Sequential`` MLP trained with SGD and momentum."""
    torch.manual_seed(0)
    layers, width = [], X.shape[1]
    for size in sizes:
        layers += [torch.nn.Linear(width, size), torch.nn.Sigmoid()]
        width = size
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, int(y.max()) + 1)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_of = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        order = torch.randperm(len(X), device=device)
        for start in range(0, len(X), batch_size):
            rows = order[start:start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_of(model(X[rows]), y[rows]).backward()
            optimizer.step()
    return model


def fit_rates(model, *data):
    """``(samples/s of the whole fit, samples/s of its training loops alone, model)``."""
    began = time.perf_counter()
    model.fit(*data)
    seconds = time.perf_counter() - began
    stats = model.worker_stats_
    samples = sum(row["samples"] for row in stats)
    return samples / seconds, samples / sum(row["seconds_training"] for row in stats), model


def pretraining_part(args, device, skdbn_device):
    X, _ = mnist_like(args.samples)
    X_on = torch.from_numpy(X).to(device)
    epochs = args.epochs
    print(f"\n1. pretraining CD-1 784 -> 500, fp32, {args.samples} rows, {epochs} epochs "
          f"(median of {args.repeats}), samples/s")
    print(f"   {'batch':>6} {'plain loop':>12} {'skdbn fit':>12} {'its loop':>12} "
          f"{'fit / plain':>12}")
    for batch_size in (100, 1000):
        plain_cd1(X_on[:batch_size * 4], 1, batch_size, device)  # warm up the kernels
        plain = statistics.median(
            args.samples * epochs / synchronized_seconds(
                device, lambda b=batch_size: plain_cd1(X_on, epochs, b, device))
            for _ in range(args.repeats))
        ours = [fit_rates(DistributedDBN(hidden_layer_sizes=(500,), batch_size=batch_size,
                                         pretrain_epochs=epochs, device=skdbn_device,
                                         random_state=0), X)
                for _ in range(args.repeats)]
        fit, loop = statistics.median(r[0] for r in ours), statistics.median(r[1] for r in ours)
        print(f"   {batch_size:>6} {plain:>12,.0f} {fit:>12,.0f} {loop:>12,.0f} "
              f"{fit / plain:>11.2f}x")
    print("   targets: batch 1000 at least 0.9x the plain loop; batch 100 at least 1.5x")


def finetuning_part(args, device, skdbn_device):
    X, y = mnist_like(args.samples)
    X_on, y_on = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
    epochs = args.epochs
    plain_mlp(X_on[:400], y_on[:400], 1, 100, device)  # warm up
    plain = statistics.median(
        args.samples * epochs / synchronized_seconds(
            device, lambda: plain_mlp(X_on, y_on, epochs, 100, device))
        for _ in range(args.repeats))
    ours = [fit_rates(DistributedDBN(hidden_layer_sizes=(500, 500), pretrain_epochs=0,
                                     batch_size=100, max_iter=epochs, n_iter_no_change=epochs + 1,
                                     device=skdbn_device, random_state=0), X, y)
            for _ in range(args.repeats)]
    fit, loop = statistics.median(r[0] for r in ours), statistics.median(r[1] for r in ours)
    print(f"\n2. fine-tuning 784-500-500-10, batch 100, {args.samples} rows, {epochs} epochs "
          f"(median of {args.repeats}), samples/s")
    print(f"   plain PyTorch MLP {plain:,.0f}; skdbn fit {fit:,.0f} ({fit / plain:.2f}x), its "
          f"loop {loop:,.0f} ({loop / plain:.2f}x); target: at least the plain loop")


def whole_fit_part(args, skdbn_device):
    X_train, X_test, y_train, y_test = load_distorted_digits(args.fit_rows, args.fit_rows // 6,
                                                             random_state=0)
    X_train, X_test = X_train.astype(np.float32), X_test.astype(np.float32)
    print(f"\n3. DistributedDBN((500, 500)) at its defaults, {len(X_train)} x 784 distorted "
          f"digits, {len(X_test)} test images")
    results = {}
    for name, device in (("CPU default", "cpu"), ("GPU", skdbn_device)):
        model = DistributedDBN(hidden_layer_sizes=(500, 500), random_state=0, device=device)
        began = time.perf_counter()
        model.fit(X_train, y_train)
        seconds = time.perf_counter() - began
        results[name] = seconds
        print(f"   {name:12} {seconds:8.1f} s  test accuracy {model.score(X_test, y_test):.4f}"
              f"  ({model.n_workers_} worker(s), {model.n_iter_} fine-tuning epochs, "
              f"{model.worker_stats_[0]['device']})")
    print(f"   GPU against the CPU default: {results['CPU default'] / results['GPU']:.1f}x "
          "faster (target: at least 10x, accuracy within 0.3 points)")


def _cuda_on_the_cpu():
    """For ``--smoke``: skdbn's device path on the CPU device, as the tests run it."""
    import skdbn._devices as devices

    torch.cuda.is_available = lambda: True
    devices.torch_device = lambda name: torch.device("cpu")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="1,2,3")
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--fit-rows", type=int, default=60_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.samples, args.epochs, args.fit_rows, args.repeats = 2_000, 1, 2_400, 1
        _cuda_on_the_cpu()
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        sys.exit("no CUDA device: run on a GPU machine, or with --smoke for the script's check")
    else:
        device = torch.device("cuda", 0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke run)"
    print(f"machine: {name}; {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}")
    parts = set(args.parts.split(","))
    if "1" in parts:
        pretraining_part(args, device, "cuda")
    if "2" in parts:
        finetuning_part(args, device, "cuda")
    if "3" in parts:
        whole_fit_part(args, "cuda")


if __name__ == "__main__":
    main()
