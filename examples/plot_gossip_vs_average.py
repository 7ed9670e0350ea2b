"""
Distributed training: gossip against synchronous averaging
===========================================================

Every worker of a distributed fit holds a full copy of the network and trains on its own
shard. With ``sync="gossip"`` (the default) workers push their parameters to one peer at a
time and never wait for each other (push-sum gossip); with ``sync="average"`` all of them stop
every ``sync_every`` minibatches and take the exact average, which is deterministic.

This example trains the same network both ways on two local worker processes (the same code
runs as Spark tasks), then looks at what each worker did: ``worker_stats_`` and
``worker_trace_`` are lists of dicts, one DataFrame away from pandas.
"""

# %%
# Data: the digits and four shifted copies
# ----------------------------------------
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skdbn import DistributedDBN
from skdbn.plotting import WorkerDisplay

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X / 16.0, y, test_size=0.25, random_state=0, stratify=y)
images = X_train.reshape(-1, 8, 8)
shifted = [np.roll(images, shift, axis=axis).reshape(len(images), -1)
           for axis in (1, 2) for shift in (-1, 1)]
X_train, y_train = np.vstack([X_train, *shifted]), np.tile(y_train, 5)
print(f"{len(X_train)} training rows")

# %%
# Two workers, two ways
# ---------------------
models = {}
for sync in ("gossip", "average"):
    model = DistributedDBN(hidden_layer_sizes=(256, 256), pretrain_epochs=10, max_iter=30,
                           backend="local", n_workers=2, sync=sync, random_state=0)
    start = time.perf_counter()
    model.fit(X_train, y_train)
    models[sync] = model
    print(f"sync={sync!r}: test accuracy {model.score(X_test, y_test):.4f}, "
          f"fit {time.perf_counter() - start:.1f} s")

# %%
# What each worker did
# --------------------
# One row per worker and phase: samples trained, parameter states sent and merged, seconds
# spent waiting for peers. Averaging waits at every synchronisation; gossip waits only at the
# end of a phase.
stats = pd.concat({sync: pd.DataFrame(m.worker_stats_) for sync, m in models.items()},
                  names=["sync"])
print(stats.groupby(["sync", "worker"])[
    ["samples", "messages_sent", "messages_merged", "seconds_waiting"]].sum())

# %%
# Drift between the copies
# ------------------------
# The relative distance between a worker's parameters and the states it merged: how far
# apart the copies drift between two exchanges.
figure, axes = plt.subplots(2, 1, figsize=(7, 6), sharey=True, layout="constrained")
for ax, (sync, model) in zip(axes, models.items(), strict=True):
    WorkerDisplay.from_estimator(model, kind="drift", ax=ax)
    ax.set_title(f"sync={sync!r}")
