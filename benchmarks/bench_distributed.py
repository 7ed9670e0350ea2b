"""Distributed training on Spark: scaling, statistical efficiency and stragglers, in one run.

Three figures, each a median over repeats with same-run ratios (the VM this was written on is
noisy, so only figures measured side by side are compared):

1. Scaling. Pretraining throughput (samples x epochs per wall second of the Spark phase, not
   counting the session start) of one 784 -> 500 CD-1 layer, batch 100, float32, on generated
   binary-ish samples (``fit(X)`` without labels), with 2 workers against 1 worker, both as
   Spark barrier tasks (``backend="spark"``, ``sync="gossip"``) on a ``local[2]`` session.
   Each Spark task has one core (``spark.task.cpus=1``), so the single worker runs single-
   threaded BLAS; the in-process ``backend="local"`` fit (all cores, two-thread CD step) is
   printed beside them for reference. Also the fixed cost of one Spark phase (task launch,
   rendezvous, consensus), from phases that do almost no work, on 1 and 2 workers.
2. Statistical efficiency. Test accuracy on scikit-learn's digits (X / 16, stratified 75/25
   split, ``random_state=0``) of the default-sized DBN ((256, 256), 20 pretraining epochs, 100
   fine-tuning epochs) on 1 worker, and on 2 and 4 workers with ``sync="gossip"`` and with
   ``sync="none"`` (independent workers averaged once per phase), on a ``local[4]`` session;
   the same epochs for all (``n_iter_no_change`` above ``max_iter``, so the training-loss
   stopping rule cannot end one configuration early), repeated over seeds, with the
   difference to 1 worker in points.
3. Stragglers. Two workers, worker 1 slowed down artificially (it sleeps after every
   minibatch, the delay chosen from the measured per-minibatch time so that it is about 3x
   slower): wall time and test accuracy of ``sync="gossip"`` (a global work budget, nobody
   waits) against ``sync="average"`` (every worker does the same minibatches and all wait at
   every exact average). The task is digits with its training images also shifted by one
   pixel in the 8 directions (9x the training set, so a phase's work outweighs its fixed
   Spark cost); the test split is untouched.

Phase times come from wrapping ``skdbn.spark.stages.SparkEngine.run_phase`` in this process.

Run: ``python benchmarks/bench_distributed.py`` (about 15 minutes on 2 cores; more on a busy
machine), or ``--quick`` for a smoke run with smaller sizes, epochs and repeats (about
2-3 minutes). ``--parts 1,3`` runs only some of the figures; see ``--help`` for the sizes.
"""

import argparse
import contextlib
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_info

from skdbn import DistributedDBN, loopback_session
from skdbn.spark.stages import SparkEngine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rbm_layer import binaryish_samples

# Sizes of the full run and of --quick; any of them can be set on the command line.
FULL = dict(samples=20_000, epochs=10, repeats=3, overhead_fits=2, seeds=3,
            digits_pretrain_epochs=20, digits_max_iter=100, straggler_repeats=3,
            straggler_pretrain_epochs=10, straggler_max_iter=20, straggler_shifts=True)
QUICK = dict(samples=4_000, epochs=3, repeats=2, overhead_fits=1, seeds=1,
             digits_pretrain_epochs=5, digits_max_iter=10, straggler_repeats=1,
             straggler_pretrain_epochs=5, straggler_max_iter=10, straggler_shifts=False)

# Phases of almost no work that measure the fixed cost of a Spark phase: one per layer.
OVERHEAD_LAYERS = (8, 8, 8, 8)


# ---------------------------------------------------------------------------- measuring


@dataclass
class PhaseRecord:
    """One Spark phase as run by ``SparkEngine.run_phase``."""

    kind: str  # "PretrainPhase" or "FinetunePhase"
    epochs: int
    n_workers: int
    seconds: float


@dataclass
class Fit:
    """Wall time of one ``fit`` and of the Spark phases it ran."""

    seconds: float
    phases: list

    @property
    def phase_seconds(self):
        """Total wall time of the phases."""
        return sum(p.seconds for p in self.phases)


@contextlib.contextmanager
def recording_phases():
    """Record every ``SparkEngine.run_phase`` call made inside the block (a list of records)."""
    records = []
    original = SparkEngine.run_phase

    def timed(engine, phase, state, below, monitor=None):
        start = time.perf_counter()
        result = original(engine, phase, state, below, monitor)
        records.append(PhaseRecord(type(phase).__name__, phase.epochs, engine.n_workers,
                                   time.perf_counter() - start))
        return result

    SparkEngine.run_phase = timed
    try:
        yield records
    finally:
        SparkEngine.run_phase = original


def timed_fit(model, X, y=None):
    """Fit ``model`` and return a ``Fit`` with its wall time and its phases."""
    with recording_phases() as records:
        start = time.perf_counter()
        model.fit(X) if y is None else model.fit(X, y)
        seconds = time.perf_counter() - start
    return Fit(seconds, records)


@contextlib.contextmanager
def spark_session(cores):
    """A ``local[cores]`` SparkSession bound to loopback, stopped on exit."""
    spark = loopback_session(f"local[{cores}]", app_name="skdbn-bench-distributed")
    try:
        yield spark
    finally:
        spark.stop()


def phase_overhead(n_workers, sync, n_fits):
    """Wall seconds of Spark phases that do almost no work (64 samples, 1 epoch, 8 units)."""
    X = binaryish_samples(64, 16, seed=1)
    seconds = []
    for _ in range(n_fits):
        model = DistributedDBN(hidden_layer_sizes=OVERHEAD_LAYERS, pretrain_epochs=1,
                               batch_size=100, n_workers=n_workers, sync=sync, random_state=0)
        seconds += [p.seconds for p in timed_fit(model, X).phases]
    return seconds


def warm_up(n_workers):
    """Start the session's Python workers (the first barrier stage of a session is slow)."""
    phase_overhead(n_workers, "gossip", 1)


def listed(values, fmt):
    """``values`` formatted and joined, for the per-repeat figures."""
    return ", ".join(format(v, fmt) for v in values)


def section(title):
    print(f"\n== {title}", flush=True)


# ---------------------------------------------------------------------------- data


def digits_split():
    """Digits scaled to [0, 1], the stratified 75/25 split of the docs and tests."""
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


def with_shifted_copies(X, y):
    """8 x 8 images (rows of ``X``) and their copies moved by one pixel in 8 directions."""
    padded = np.pad(X.reshape(-1, 8, 8), ((0, 0), (1, 1), (1, 1)))
    copies = [padded[:, 1 + dy:9 + dy, 1 + dx:9 + dx]
              for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return np.concatenate(copies).reshape(-1, 64), np.tile(y, len(copies))


# ---------------------------------------------------------------------------- 1. scaling


def scaling(args):
    section(f"1. scaling: pretraining one 784 -> 500 layer on local[2], sync='gossip' "
            f"({args.samples} samples x {args.epochs} epochs, batch 100, float32, "
            f"{args.repeats} repeats)")
    X = binaryish_samples(args.samples, 784)
    work = args.samples * args.epochs

    def model(n_workers, backend="spark"):
        return DistributedDBN(hidden_layer_sizes=(500,), pretrain_epochs=args.epochs,
                              pretrain_learning_rate=0.05, batch_size=100, backend=backend,
                              n_workers=n_workers, sync="gossip", random_state=0)

    with spark_session(2):
        warm_up(2)
        overhead = {1: [], 2: []}
        rates = {1: [], 2: [], "local": []}
        for repeat in range(args.repeats):
            for n_workers in (1, 2) if repeat % 2 == 0 else (2, 1):
                overhead[n_workers] += phase_overhead(n_workers, "gossip", args.overhead_fits)
                fit = timed_fit(model(n_workers), X)
                rates[n_workers].append(work / fit.phase_seconds)
            fit = timed_fit(model(1, backend="local"), X)
            rates["local"].append(work / fit.seconds)

    ratios = np.array(rates[2]) / np.array(rates[1])
    for name, label in ((1, "1 Spark worker (1 core)"), (2, "2 Spark workers")):
        print(f"{label:28s}: {np.median(rates[name]):9.0f} samples/s  "
              f"(all: {listed(rates[name], '.0f')})")
    print(f"{'2 workers / 1 worker':28s}: {np.median(ratios):9.2f}x          "
          f"(per repeat: {listed(ratios, '.2f')}; target >= 1.7x)")
    print(f"{'reference: local, in-process':28s}: {np.median(rates['local']):9.0f} samples/s  "
          f"(fit time, all cores; all: {listed(rates['local'], '.0f')})")
    for n_workers in (1, 2):
        seconds = overhead[n_workers]
        print(f"Spark phase overhead, {n_workers} worker{'s' if n_workers > 1 else ' '}: "
              f"{np.median(seconds):.2f} s  (median of {len(seconds)} near-empty phases, "
              f"range {min(seconds):.2f}-{max(seconds):.2f} s)")


# ---------------------------------------------------------------------------- 2. accuracy


def statistical_efficiency(args):
    configs = [(1, "gossip"), (2, "gossip"), (4, "gossip"), (2, "none"), (4, "none")]
    section(f"2. statistical efficiency: digits, DistributedDBN defaults (256, 256), "
            f"{args.digits_pretrain_epochs} pretraining + {args.digits_max_iter} fine-tuning "
            f"epochs (no stopping rule), local[4], seeds 0-{args.seeds - 1}")
    X_train, X_test, y_train, y_test = digits_split()
    scores = {config: [] for config in configs}
    seconds = {config: [] for config in configs}
    phases = {config: [] for config in configs}
    with spark_session(4):
        warm_up(4)
        for seed in range(args.seeds):
            for n_workers, sync in configs:
                # The same epochs for all: the training-loss stopping rule is switched off,
                # since the loss of several workers is noisier and can end fine-tuning early.
                model = DistributedDBN(pretrain_epochs=args.digits_pretrain_epochs,
                                       max_iter=args.digits_max_iter,
                                       n_iter_no_change=args.digits_max_iter + 1,
                                       n_workers=n_workers, sync=sync, random_state=seed)
                fit = timed_fit(model, X_train, y_train)
                scores[n_workers, sync].append(model.score(X_test, y_test))
                seconds[n_workers, sync].append(fit.seconds)
                phases[n_workers, sync].append(len(fit.phases))

    single = np.array(scores[1, "gossip"])
    print(f"{'workers':>7s}  {'sync':6s}  {'accuracy':>8s}  {'vs 1 worker':>11s}  "
          f"{'fit s':>6s}  {'phases':>6s}  per seed")
    for n_workers, sync in configs:
        accuracy = np.array(scores[n_workers, sync])
        points = 100 * (accuracy - single)
        delta = "" if n_workers == 1 else f"{np.median(points):+.2f} pts"
        print(f"{n_workers:7d}  {sync if n_workers > 1 else '-':6s}  "
              f"{np.median(accuracy):8.4f}  {delta:>11s}  "
              f"{np.median(seconds[n_workers, sync]):6.1f}  "
              f"{np.median(phases[n_workers, sync]):6.0f}  {listed(accuracy, '.4f')}")
    print("target: gossip within 0.5 points of 1 worker")


# ---------------------------------------------------------------------------- 3. stragglers


def minibatches_per_worker(phase, n_samples, batch_size):
    """Minibatches each worker of ``phase`` does without a straggler."""
    shard = math.ceil(n_samples / phase.n_workers)
    return phase.epochs * math.ceil(shard / batch_size)


def stragglers(args):
    X_train, X_test, y_train, y_test = digits_split()
    if args.straggler_shifts:
        X_train, y_train = with_shifted_copies(X_train, y_train)
    n_samples, batch_size = X_train.shape[0], 32
    section(f"3. stragglers: 2 workers on local[2], worker 1 about {args.slowdown:g}x slower; "
            f"digits ({n_samples} training images), (256, 256), "
            f"{args.straggler_pretrain_epochs} pretraining + {args.straggler_max_iter} "
            f"fine-tuning epochs, repeats: {args.straggler_repeats}")

    def model(sync, seed, delay=None):
        dbn = DistributedDBN(pretrain_epochs=args.straggler_pretrain_epochs,
                             max_iter=args.straggler_max_iter, batch_size=batch_size,
                             n_workers=2, sync=sync, random_state=seed)
        if delay:
            dbn._slow_worker = (1, delay)  # benchmark hook: worker 1 sleeps after a minibatch
        return dbn

    with spark_session(2):
        warm_up(2)
        # Per-minibatch time of a worker while the other one runs too, from an unsynchronised
        # fit without straggler: phase time less the fixed cost of such a phase.
        overhead = np.median(phase_overhead(2, "none", args.overhead_fits))
        calibration = timed_fit(model("none", 0), X_train, y_train)
        minibatches = sum(minibatches_per_worker(p, n_samples, batch_size)
                          for p in calibration.phases)
        per_minibatch = max(calibration.phase_seconds - overhead * len(calibration.phases),
                            1e-6) / minibatches
        delay = (args.slowdown - 1) * per_minibatch
        print(f"per-minibatch time {1e3 * per_minibatch:.3f} ms (2 workers, sync='none', "
              f"{minibatches} minibatches each, {len(calibration.phases)} phases of "
              f"{overhead:.2f} s fixed cost) -> worker 1 sleeps {1e3 * delay:.3f} ms "
              "per minibatch", flush=True)

        times, scores, phases, epochs = ({"gossip": [], "average": []} for _ in range(4))
        for repeat in range(args.straggler_repeats):
            order = ("gossip", "average") if repeat % 2 == 0 else ("average", "gossip")
            for sync in order:
                dbn = model(sync, repeat, delay)
                fit = timed_fit(dbn, X_train, y_train)
                times[sync].append(fit.seconds)
                scores[sync].append(dbn.score(X_test, y_test))
                phases[sync].append(len(fit.phases))
                epochs[sync].append(dbn.n_iter_)

    for sync in ("average", "gossip"):
        print(f"sync={sync!r:9s}: fit {np.median(times[sync]):6.1f} s, accuracy "
              f"{np.median(scores[sync]):.4f}, {np.median(phases[sync]):.0f} phases, "
              f"{np.median(epochs[sync]):.0f} fine-tuning epochs  (times: "
              f"{listed(times[sync], '.1f')}; accuracies: {listed(scores[sync], '.4f')})")
    ratios = np.array(times["average"]) / np.array(times["gossip"])
    points = 100 * (np.array(scores["gossip"]) - np.array(scores["average"]))
    print(f"gossip finishes {np.median(ratios):.2f}x sooner (per repeat: {listed(ratios, '.2f')};"
          f" target >= 1.5x), accuracy {np.median(points):+.2f} points vs average")


# ---------------------------------------------------------------------------- main


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes, epochs and repeats (a smoke run of 2-3 minutes)")
    parser.add_argument("--parts", default="1,2,3", help="figures to measure, e.g. 1,3")
    parser.add_argument("--samples", type=int, help="1: generated samples (20000)")
    parser.add_argument("--epochs", type=int, help="1: pretraining epochs (10)")
    parser.add_argument("--repeats", type=int, help="1: repeats (3)")
    parser.add_argument("--overhead-fits", type=int,
                        help=f"1 (per repeat), 3: fits of {len(OVERHEAD_LAYERS)} near-empty "
                        "phases (2)")
    parser.add_argument("--seeds", type=int, help="2: random states per configuration (3)")
    parser.add_argument("--digits-pretrain-epochs", type=int, help="2: (20)")
    parser.add_argument("--digits-max-iter", type=int, help="2: fine-tuning epochs (100)")
    parser.add_argument("--straggler-repeats", type=int, help="3: repeats (3)")
    parser.add_argument("--straggler-pretrain-epochs", type=int, help="3: (10)")
    parser.add_argument("--straggler-max-iter", type=int, help="3: fine-tuning epochs (20)")
    parser.add_argument("--straggler-shifts", action=argparse.BooleanOptionalAction,
                        help="3: add the shifted copies of the training images (on)")
    parser.add_argument("--slowdown", type=float, default=3.0,
                        help="3: how many times slower the straggler is (3)")
    args = parser.parse_args()
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.parts = {int(part) for part in args.parts.split(",")}
    return args


def main():
    args = parse_args()
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    import pyspark

    blas = ", ".join(f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads)"
                     for i in threadpool_info())
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"numpy {np.__version__}, BLAS: {blas}, pyspark {pyspark.__version__}, "
          f"Python {platform.python_version()}{' (--quick)' if args.quick else ''}",
          flush=True)
    start = time.perf_counter()
    for part, measure in ((1, scaling), (2, statistical_efficiency), (3, stragglers)):
        if part in args.parts:
            measure(args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
