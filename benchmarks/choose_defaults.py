"""The measurements behind the defaults: test error and fit time of ``DistributedDBN``
settings against ``MLPClassifier`` at its defaults, on several data sets and seeds.

Each ``--configs`` entry is one setting of ``DistributedDBN`` (``name=value`` pairs joined by
commas, entries by ``;``; an empty entry is the defaults), fitted once per seed of
``--seeds`` on each data set of ``--datasets`` (``benchmark_datasets``); the peer
``MLPClassifier`` with the same hidden layers and nothing else set is fitted on the same data
and seeds in the same run. Rows go to ``--out`` (JSON lines) as they are measured, and a table
of means per data set and setting is printed at the end.

Run, e.g.::

    python benchmarks/choose_defaults.py --datasets digits_28 --hidden 500,500 \\
        --configs ";batch_size=100;batch_size=100,pretrain_epochs=5"

Fits use the estimator's own choice of backend and workers, as a user's would.

``--curves`` also records, for each fine-tuning epoch of our fits, the training loss and the
test error of the network at that epoch (read from the fit's state as it goes; the fit itself
is unchanged), so that stopping rules can be compared afterwards on the same fits
(``--rules``, which reads the rows of ``--out``).
"""

import argparse
import ast
import contextlib
import json
import os
import platform
import statistics
import time
import warnings

import numpy as np
from benchmark_datasets import DATASETS
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from skdbn import DistributedDBN


def parse_configs(text):
    """``[(label, params)]`` of ``"a=1,b=2;c=3"``; an empty entry is the defaults."""
    configs = []
    for entry in text.split(";"):
        entry = entry.strip()
        params = {}
        for pair in filter(None, entry.split(",")):
            name, value = pair.split("=")
            params[name.strip()] = ast.literal_eval(value.strip())
        configs.append((entry or "defaults", params))
    return configs


def measure(model, data, curves=False):
    X_train, X_test, y_train, y_test = data
    recorder = EpochRecorder(X_test, y_test) if curves and isinstance(model, DistributedDBN) \
        else contextlib.nullcontext()
    started = time.perf_counter()
    with warnings.catch_warnings(), recorder:
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X_train, y_train)
    seconds = time.perf_counter() - started
    row = {"error": 1.0 - model.score(X_test, y_test), "seconds": seconds,
           "epochs": int(getattr(model, "n_iter_", 0))}
    if isinstance(recorder, EpochRecorder):
        row.update(loss_curve=[float(v) for v in model.loss_curve_],
                   test_errors=recorder.errors,
                   finetune_seconds=sum(r["seconds_training"] for r in model.worker_stats_
                                        if r["stage"] == "fine-tuning")
                   / max(1, len({r["worker"] for r in model.worker_stats_})))
    return row


class EpochRecorder:
    """Records the test error after each fine-tuning epoch, where the schedule puts the
    epoch's loss to its stopping rule."""

    def __init__(self, X_test, y_test):
        self.X_test, self.y_test = X_test, y_test
        self.errors = []

    def __enter__(self):
        from skdbn import _schedule
        from skdbn._flat import FlatParams
        from skdbn._network import forward, network_layout

        original = self._original = _schedule._Schedule._should_stop
        recorder = self

        def should_stop(schedule, state, sizes):
            params = FlatParams(network_layout(list(sizes)), state.network.dtype,
                                state.network)
            X = recorder.X_test.astype(state.network.dtype)
            if schedule.data.mean is not None:
                X = (X - schedule.data.mean) / schedule.data.scale
            codes = np.searchsorted(schedule.data.classes, recorder.y_test)
            predicted = forward(X, params, len(sizes) - 2)[-1].argmax(axis=1)
            recorder.errors.append(float(np.mean(predicted != codes)))
            return original(schedule, state, sizes)

        _schedule._Schedule._should_stop = should_stop
        return self

    def __exit__(self, *exc_info):
        from skdbn import _schedule

        _schedule._Schedule._should_stop = self._original


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="digits_28")
    parser.add_argument("--hidden", default="500,500")
    parser.add_argument("--configs", default="")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--no-peer", action="store_true", help="skip MLPClassifier")
    parser.add_argument("--float32", action="store_true",
                        help="give every model the data as float32")
    parser.add_argument("--out", default="choose_defaults.jsonl")
    parser.add_argument("--curves", action="store_true",
                        help="record each fine-tuning epoch's loss and test error")
    parser.add_argument("--rules", default=None,
                        help="compare stopping rules tol:n_iter_no_change:max_iter (e.g. "
                             "1e-4:10:50,1e-3:5:100) on the curves in --out, and stop")
    args = parser.parse_args()
    if args.rules:
        compare_rules(args.out, args.rules)
        return
    hidden = tuple(int(h) for h in args.hidden.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    configs = parse_configs(args.configs)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}", flush=True)
    rows = []
    with open(args.out, "a") as out:
        for name in args.datasets.split(","):
            data = DATASETS[name]()
            if args.float32:
                data = [part.astype("float32") if i < 2 else part
                        for i, part in enumerate(data)]
            runs = [(label, lambda s, p=params: DistributedDBN(hidden, random_state=s, **p))
                    for label, params in configs]
            if not args.no_peer:
                runs.append(("MLPClassifier", lambda s: MLPClassifier(hidden, random_state=s)))
            for seed in seeds:
                for label, make in runs:  # settings interleaved, seed by seed
                    row = {"dataset": name, "hidden": list(hidden), "config": label,
                           "seed": seed, **measure(make(seed), data, args.curves)}
                    rows.append(row)
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    print(f"{name:10} {label:55} seed {seed}: error {row['error']:.4f} "
                          f"in {row['seconds']:6.1f} s ({row['epochs']} epochs)", flush=True)
    print_summary(rows)


def stopping_epoch(losses, tol, n_iter_no_change):
    """The number of epochs the loss rule (as ``MLPClassifier``'s and ours) trains."""
    best, count = np.inf, 0
    for epoch, loss in enumerate(losses, 1):
        count = 0 if loss < best - tol else count + 1
        best = min(best, loss)
        if count >= n_iter_no_change:
            return epoch
    return len(losses)


def compare_rules(path, rules):
    """Per data set, setting and rule: mean epochs, test error at the stop, and seconds
    (the fit's own, less the fine-tuning epochs it would not have run)."""
    with open(path) as lines:
        rows = [json.loads(line) for line in lines]
    rows = [r for r in rows if r.get("loss_curve")]
    print(f"{'data set':10} {'setting':50} {'rule':>10} {'epochs':>6} {'error':>7} "
          f"{'seconds':>8}")
    for dataset, config in dict.fromkeys((r["dataset"], r["config"]) for r in rows):
        same = [r for r in rows if r["dataset"] == dataset and r["config"] == config]
        for rule in rules.split(","):
            tol, patience, max_iter = rule.split(":")
            epochs, errors, seconds = [], [], []
            for r in same:
                curve = r["loss_curve"][:int(max_iter)]
                stop = stopping_epoch(curve, float(tol), int(patience))
                per_epoch = r["finetune_seconds"] / len(r["loss_curve"])
                epochs.append(stop)
                errors.append(r["test_errors"][stop - 1])
                seconds.append(r["seconds"] - per_epoch * (len(r["loss_curve"]) - stop))
            print(f"{dataset:10} {config:50} {rule:>10} {statistics.mean(epochs):6.1f} "
                  f"{statistics.mean(errors):7.4f} {statistics.mean(seconds):8.1f}")


def print_summary(rows):
    print(f"\n{'data set':10} {'setting':55} {'error':>7} {'seconds':>8} {'epochs':>6}")
    seen = []
    for row in rows:
        if (row["dataset"], row["config"]) not in seen:
            seen.append((row["dataset"], row["config"]))
    for dataset, config in seen:
        same = [r for r in rows if r["dataset"] == dataset and r["config"] == config]
        print(f"{dataset:10} {config:55} {statistics.mean(r['error'] for r in same):7.4f} "
              f"{statistics.mean(r['seconds'] for r in same):8.1f} "
              f"{statistics.mean(r['epochs'] for r in same):6.1f}")


if __name__ == "__main__":
    main()
