"""Hyper-parameter search over a Spark-backed DistributedDBN: GridSearchCV with n_jobs=1
against n_jobs=2, and against the same search on local worker processes.

Four candidates x 3 folds of ``DistributedDBN(n_workers=2)`` on the digits (pixels in [0, 1]).
``spark, n_jobs=1`` fits one candidate at a time on this process's ``local[2]`` session (two
barrier tasks each); ``spark, n_jobs=2`` runs two joblib worker processes, each of which starts
a Spark session of its own (skdbn warns: ``ParallelSearchWarning``); ``local`` fits on two
local worker processes. Times are wall-clock seconds of ``search.fit`` (one run each; the
session of the first row is started before timing).

Run: ``python benchmarks/bench_search.py`` (about two minutes on 2 cores).
"""

import time
import warnings

from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV

from skdbn import DistributedDBN, ParallelSearchWarning, loopback_session


def timed_search(n_jobs, backend, X, y):
    dbn = DistributedDBN(hidden_layer_sizes=(64,), max_iter=10, n_workers=2, backend=backend,
                         random_state=0)
    grid = {"pretrain_epochs": [0, 5], "learning_rate": [0.05, 0.1]}
    search = GridSearchCV(dbn, grid, cv=3, n_jobs=n_jobs)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParallelSearchWarning)
        search.fit(X, y)
    return time.perf_counter() - started, search.best_score_


def main():
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    loopback_session("local[2]")
    rows = [("spark", 1), ("spark", 2), ("local", 1)]
    results = {row: timed_search(row[1], row[0], X, y) for row in rows}
    base = results[("spark", 1)][0]
    print("GridSearchCV, 4 candidates x 3 folds, DistributedDBN(n_workers=2) on the digits")
    for (backend, n_jobs), (seconds, score) in results.items():
        print(f"  backend={backend!r:8} n_jobs={n_jobs}  {seconds:6.1f} s  "
              f"({seconds / base:.2f}x n_jobs=1 on Spark)  best score {score:.4f}")


if __name__ == "__main__":
    main()
