"""Whether this tree trains the very models an earlier checkout does, bit for bit.

Run: ``python benchmarks/same_models.py --baseline PATH`` (PATH: a checkout of an earlier
skdbn, e.g. made with ``git worktree add /tmp/skdbn-old <commit>``; a few minutes on 2 cores).

Every fit that is deterministic for a fixed ``random_state`` is made by both trees, each in
a fresh Python process importing skdbn from its tree: one worker in this process, local
processes with ``sync="average"``, ``partial_fit`` and a warm start; and on Spark (classic
``local[2]`` and a local Spark Connect server) numpy and DataFrame input (float32, and
float64 with Gaussian units, and a warm start) with one worker and with two workers
averaging.
Each model's arrays (``coefs_``, ``intercepts_``, ``visible_intercepts_``, ``loss_curve_``)
are compared byte for byte; a line per fit says ``identical`` or where the first difference
is. Gossip fits depend on message timing and are not compared.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FITS = '''
import sys
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from skdbn import DistributedDBN

X, y = load_digits(return_X_y=True)
X_train, _, y_train, _ = train_test_split(X / 16.0, y, test_size=0.25, random_state=0,
                                          stratify=y)
X_train = X_train.astype(np.float32)
SMALL = dict(hidden_layer_sizes=(32, 16), pretrain_epochs=3, max_iter=12, random_state=0)
fits = {}

def keep(name, model):
    arrays = [*model.coefs_, *model.intercepts_, *model.visible_intercepts_,
              np.asarray(model.loss_curve_)]
    fits.update({f"{name}|{i}": a for i, a in enumerate(arrays)})

mode = sys.argv[2]
if mode == "local":
    keep("numpy, one worker in this process", DistributedDBN(**SMALL).fit(X_train, y_train))
    keep("numpy float64, one worker in this process", DistributedDBN(**SMALL).fit(
        X_train.astype(np.float64), y_train))
    keep("numpy, one worker, gaussian units, early stopping", DistributedDBN(
        visible_units="gaussian", early_stopping=True, **SMALL).fit(X_train, y_train))
    keep("numpy, 2 local processes, sync=average", DistributedDBN(
        backend="local", n_workers=2, sync="average", **SMALL).fit(X_train, y_train))
    model = DistributedDBN(**SMALL).partial_fit(X_train, y_train, classes=np.arange(10))
    keep("numpy, partial_fit twice", model.partial_fit(X_train, y_train))
    model = DistributedDBN(**SMALL).fit(X_train)
    keep("numpy, warm start after pretraining", model.set_params(warm_start=True).fit(
        X_train, y_train))
else:
    from skdbn import loopback_session
    spark = loopback_session("local[2]", app_name="same-models", connect=mode == "connect")
    rows = [(x.tolist(), int(label)) for x, label in zip(X_train, y_train)]
    frame = spark.createDataFrame(rows, "features array<float>, label int").repartition(3)
    frame = frame.sortWithinPartitions("label").cache()
    frame.count()
    doubles = spark.createDataFrame(
        [(x.tolist(), int(label)) for x, label in zip(X_train.astype(np.float64), y_train)],
        "features array<double>, label int").repartition(2).cache()
    doubles.count()
    for n_workers in (1, 2):
        params = dict(SMALL, backend="spark", n_workers=n_workers, sync="average")
        keep(f"{mode} Spark, numpy input, {n_workers} worker(s)",
             DistributedDBN(**params).fit(X_train, y_train))
        keep(f"{mode} Spark, DataFrame input, {n_workers} worker(s)",
             DistributedDBN(**params).fit(frame))
        keep(f"{mode} Spark, float64 DataFrame, gaussian units, {n_workers} worker(s)",
             DistributedDBN(visible_units="gaussian", **params).fit(doubles))
        model = DistributedDBN(label_col=None, **params).fit(frame)
        keep(f"{mode} Spark, DataFrame warm start after pretraining, {n_workers} worker(s)",
             model.set_params(warm_start=True, label_col="label").fit(frame))
    spark.stop()
np.savez(sys.argv[1], **fits)
'''


def fits_of(source, mode, folder):
    """The fits of ``mode`` made by the skdbn of ``source``, as ``{name|index: array}``."""
    path = os.path.join(folder, f"{abs(hash((source, mode)))}.npz")
    environment = {**os.environ, "PYTHONPATH": source, "SPARK_LOCAL_IP": "127.0.0.1"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(FITS), path, mode],
                          capture_output=True, text=True, timeout=1200, env=environment,
                          cwd=tempfile.gettempdir())
    if done.returncode != 0:
        raise RuntimeError(f"the {mode} fits of {source} failed:\n{done.stderr[-3000:]}")
    with np.load(path) as saved:
        return {name: saved[name] for name in saved.files}


def compare(ours, theirs):
    """A line per fit of either tree: identical, or the first array that differs."""
    fits = sorted({name.split("|")[0] for name in (*ours, *theirs)})
    for fit in fits:
        names = sorted({n for n in (*ours, *theirs) if n.startswith(fit + "|")},
                       key=lambda n: int(n.split("|")[1]))
        differing = [n for n in names if n not in ours or n not in theirs
                     or ours[n].dtype != theirs[n].dtype
                     or ours[n].tobytes() != theirs[n].tobytes()]
        verdict = "identical" if not differing else f"DIFFERS (array {differing[0]})"
        print(f"   {fit}: {verdict}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="an earlier skdbn checkout")
    parser.add_argument("--modes", default="local,classic,connect")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for mode in args.modes.split(","):
            print(f"{mode}:")
            compare(fits_of(ROOT, mode, folder), fits_of(args.baseline, mode, folder))


if __name__ == "__main__":
    main()
