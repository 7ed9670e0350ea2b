"""The Spark data path: ingestion speed, memory, fixed costs and Connect parity.

Run: ``python benchmarks/bench_spark_data.py`` (about 10 minutes on 2 cores; ``--quick`` for a
smoke run). Optionally ``--baseline PATH``: a checkout of an earlier skdbn (e.g. made with
``git worktree add /tmp/skdbn-old <commit>``) whose figures are measured in the same run
for comparison.

Every measurement runs in a fresh Python process of its own, so that the peaks of memory
belong to it alone. Parts (``--parts``, default all):

1. **Large DataFrame fit.** A generated MNIST-like parquet file (``--rows`` x 784, an
   ``array<double>`` column, or ``array<float>`` with ``--dtype float32``, and labels) is
   fitted with ``hidden_layer_sizes=(64,)``, one pretraining and one fine-tuning epoch,
   ``n_workers=2``, on the embedded ``local[2]`` session with Spark's default memory
   settings. Printed: the fit's wall time, the training arithmetic (the slowest task's time in
   ``run_worker``, summed over phases), the data path (the rest), and the peak resident
   memory of every executor Python worker (against its shard's size in the training dtype),
   of the JVM, and of the driver's Python process (sampled from ``/proc`` every 0.1 s). The
   driver's figure is also measured at a quarter of the rows, to show it does not grow with
   them.
2. **Ingestion.** The same kind of data from a numpy array and from the parquet file: rows/s
   from the source to the workers' shards, on a classic session with a local master (shard
   files), on a classic session made to read cached partitions as on a cluster, and on a
   Connect session (shard files when its server shares this machine's files).
3. **Fixed costs.** A DataFrame fit and the same numpy fit of 8,000 x 784 rows (default
   layers (256, 256), 1 + 1 epochs, median of 3), and the fixed cost of a phase on
   ``local[2]`` (two workers, tiny phases, 5 fits of up to 5 phases each; a phase's wall time
   less its slowest task's training): the first phase of a fit (on the standing job, it
   waits for the job's tasks to start), each later phase, and the mean per phase of a fit,
   on classic and Connect sessions.
4. **Connect parity.** The same fits (numpy and DataFrame input, ``sync="average"``, fixed
   seed, 2 workers) on a classic and on a Connect session: whether the models are identical.
5. **Vectors against arrays.** ``DistributedDBN((500, 500), n_workers=2)`` at its defaults on
   the 8,000 x 784 distorted digits of ``benchmark_datasets.digits_28``: from a cached
   DataFrame of ``pyspark.ml`` vectors (doubles) on ``local[2]``, and from the float32 array
   on local worker processes, alternating (median of ``--repeats``), with the test error of
   each, on classic and Connect sessions.
6. **Spark's own floor.** What a barrier ``mapInArrow`` job of two tasks that do nothing
   costs on ``local[2]``, classic and Connect, medians of 8 after 2 to warm up: built as a
   new DataFrame each time (as a fit builds its job), and the same DataFrame run again (its
   plan analysed once), against which a fit's start and end can be read.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
N_FEATURES = 784
ELEMENT = {"float32": "float", "float64": "double"}


# ---------------------------------------------------------------------------- child processes

def run_child(code, source=ROOT, timeout=1200, env=None):
    """Run ``code`` in a fresh interpreter importing skdbn from ``source``; its last line of
    output starting with RESULT is a JSON object, returned (or None if it failed)."""
    environment = {**os.environ, "PYTHONPATH": source, "SPARK_LOCAL_IP": "127.0.0.1",
                   **(env or {})}
    script = textwrap.dedent(PRELUDE) + textwrap.dedent(code)
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=timeout, env=environment, cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired:
        print(f"   (timed out after {timeout} s)")
        return None
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        errors = [line for line in done.stderr.splitlines()
                  if "Error" in line or "Exception" in line]
        print("   (failed: " + (errors[-1][:300] if errors else done.stderr[-300:]) + ")")
        return None
    return json.loads(lines[-1][len("RESULT "):])


# Shared by every child: a /proc sampler of peak memory, and phase timing.
PRELUDE = '''
import json, os, sys, threading, time
import numpy as np

def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if parent == pid:
                found.append(int(entry))
    return found

def _peak_and_name(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().replace(b"\\0", b" ").decode(errors="replace")
    except OSError:
        return None, None
    if "VmHWM" not in fields:  # a process on its way out
        return None, None
    return int(fields["VmHWM"].split()[0]) * 1024, command

class MemorySampler:
    """Peak RSS (VmHWM) of this process, the JVM and the executors' Python workers."""
    def __init__(self):
        self.peaks = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
    def __enter__(self):
        self._thread.start()
        return self
    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
    def _run(self):
        while not self._stop.is_set():
            stack = [(os.getpid(), "driver")]
            while stack:
                pid, kind = stack.pop()
                peak, command = _peak_and_name(pid)
                if peak is None:
                    continue
                self.peaks[pid] = (kind, max(peak, self.peaks.get(pid, (kind, 0))[1]))
                for child in _children(pid):
                    _, child_command = _peak_and_name(child)
                    # The JVM starts pyspark.daemon, which forks one Python worker per task.
                    child_kind = ("jvm" if child_command and "java" in child_command
                                  else "daemon" if kind == "jvm" else
                                  "python" if kind == "daemon" else "other")
                    stack.append((child, child_kind))
            time.sleep(0.1)
    def largest(self, kind):
        return max((peak for k, peak in self.peaks.values() if k == kind), default=0)
    def all_of(self, kind):
        return sorted((peak for k, peak in self.peaks.values() if k == kind), reverse=True)

def timed_phases():
    """Wrap SparkEngine.run_phase: wall time and slowest task's training time per phase."""
    import skdbn
    if os.path.exists(os.path.join(os.path.dirname(skdbn.__file__), "_spark.py")):
        from skdbn._spark import SparkEngine  # a baseline from before skdbn.spark
    else:
        from skdbn.spark.stages import SparkEngine
    phases = []
    original = SparkEngine.run_phase
    def run_phase(self, phase, state, below, *monitor):  # monitor: skdbn after issue 12
        started = time.perf_counter()
        out = original(self, phase, state, below, *monitor)
        seconds = [r.seconds for r in out[1] if getattr(r, "seconds", None)]
        phases.append({"wall": time.perf_counter() - started,
                       "train": max((s.get("train", 0.0) for s in seconds), default=None),
                       "read": max((s.get("read", 0.0) for s in seconds), default=None)})
        return out
    SparkEngine.run_phase = run_phase
    return phases
'''


# ---------------------------------------------------------------------------- part 1

WRITE_PARQUET = '''
import pyarrow as pa, pyarrow.parquet as pq
rows, path = {rows}, {path!r}
rng = np.random.default_rng(0)
writer = None
for start in range(0, rows, 20000):
    n = min(20000, rows - start)
    # MNIST-like: most pixels 0, the rest spread over (0, 1], labels from 10 classes.
    X = rng.random((n, {n_features}), dtype=np.float32).astype({dtype!r})
    X[X < 0.8] = 0.0
    y = rng.integers(0, 10, n).astype(np.int32)
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * {n_features})
    table = pa.table({{"features": pa.ListArray.from_arrays(offsets, pa.array(X.ravel())),
                       "label": pa.array(y)}})
    writer = writer or pq.ParquetWriter(path, table.schema)
    writer.write_table(table)
writer.close()
print("RESULT", json.dumps({{"bytes": os.path.getsize(path)}}))
'''

LARGE_FIT = '''
from skdbn import DistributedDBN, loopback_session
spark = loopback_session("local[2]", app_name="bench-data", config={config})
df = spark.read.parquet({path!r}){limit}
phases = timed_phases()
with MemorySampler() as memory:
    time.sleep(0.3)
    before = memory.largest("driver")
    started = time.perf_counter()
    model = DistributedDBN(hidden_layer_sizes=(64,), pretrain_epochs=1, max_iter=1,
                           n_workers=2, random_state=0).fit(df)
    wall = time.perf_counter() - started
    time.sleep(0.3)
spark.stop()
print("RESULT", json.dumps({{
    "wall": wall, "phases": phases, "rows": {rows},
    "workers": memory.all_of("python"), "jvm": memory.largest("jvm"),
    "driver_before": before, "driver_peak": memory.largest("driver")}}))
'''


def large_fit(args, path, source=ROOT, rows=None, config=None):
    rows = rows or args.rows
    limit = "" if rows == args.rows else f".limit({rows})"
    return run_child(LARGE_FIT.format(path=path, rows=rows, limit=limit,
                                      config=repr(config or {})), source=source)


def report_large_fit(name, result, rows, itemsize, train_seconds=None):
    mb = 1 << 20
    if result is None:
        print(f"   {name}: no result")
        return None
    train = sum(p["train"] for p in result["phases"] if p["train"] is not None)
    if train_seconds is not None:  # the baseline does not time its tasks: use ours
        train = train_seconds
    data = result["wall"] - train
    shard = rows / 2 * N_FEATURES * itemsize
    print(f"   {name}: fit {result['wall']:.1f} s = training arithmetic {train:.1f} s "
          f"+ data path {data:.1f} s")
    workers = result["workers"][:2]
    print("      peak RSS: executor Python workers "
          + ", ".join(f"{w / mb:.0f} MB ({w / shard:.2f}x the {shard / mb:.0f} MB "
                      "shard in the training dtype)" for w in workers)
          + f"; JVM {result['jvm'] / mb:.0f} MB; driver Python {result['driver_before'] / mb:.0f}"
          f" -> {result['driver_peak'] / mb:.0f} MB")
    return data, train


def part_large(args, path):
    import numpy as np

    itemsize = np.dtype(args.dtype).itemsize
    print(f"\n1. Large DataFrame fit: {args.rows:,} x {N_FEATURES} parquet "
          f"(array<{ELEMENT[args.dtype]}>), (64,), 1 + 1 epochs, 2 workers, embedded local[2], "
          "default memory")
    result = large_fit(args, path)
    figures = report_large_fit("this tree", result, args.rows, itemsize)
    if figures is not None:
        reading = [p["read"] for p in result["phases"]]
        print(f"      tasks' reading of their shard per phase: "
              f"{', '.join(f'{r:.2f} s' for r in reading)}")
    quarter = large_fit(args, path, rows=args.rows // 4)
    if quarter is not None:
        mb = 1 << 20
        print(f"   driver Python peak at {args.rows // 4:,} rows: "
              f"{quarter['driver_peak'] / mb:.0f} MB (at {args.rows:,}: "
              f"{result['driver_peak'] / mb:.0f} MB)" if result else "")
    if args.baseline and figures is not None:
        rows = args.baseline_rows
        print(f"   baseline at {rows:,} rows, spark.driver.memory={args.baseline_memory} "
              "(the memory it needs):")
        base = large_fit(args, path, source=args.baseline, rows=rows,
                         config={"spark.driver.memory": args.baseline_memory})
        if rows == args.rows:
            ours, ours_figures = result, figures
        else:
            ours = large_fit(args, path, rows=rows)
            ours_figures = report_large_fit("this tree", ours, rows, itemsize)
        if base is not None and ours_figures is not None:
            base_data, _ = report_large_fit("baseline", base, rows, itemsize,
                                            train_seconds=ours_figures[1])
            print(f"   data path: baseline {base_data:.1f} s / this tree {ours_figures[0]:.1f} s"
                  f" = {base_data / ours_figures[0]:.1f}x faster")


# ---------------------------------------------------------------------------- part 2

INGEST = '''
from skdbn import DistributedDBN, loopback_session
from skdbn._engines import plan_workers
from skdbn._inputs import arrays_data
from skdbn._params import Settings
from skdbn._schedule import make_engine
from skdbn.spark import placement
from skdbn.spark.training_frame import prepare_training_frame
spark = loopback_session("local[2]", app_name="bench-ingest", connect={connect})
if {force_cache}:  # read cached partitions, as on a cluster, instead of local shard files
    placement.tasks_share_files = lambda spark: False
settings = Settings.of(DistributedDBN(backend="spark", n_workers=2))
rng = np.random.default_rng(0)
X = rng.random(({rows}, {n_features}), dtype=np.float32).astype({dtype!r})
codes = rng.integers(0, 10, {rows})
times = {{}}
for repeat in range(2):  # the first also starts the Python workers
    engine = make_engine(plan_workers(settings, {rows}), settings)
    data = arrays_data(X, codes, np.arange(10), "bernoulli", None, None)
    started = time.perf_counter()
    engine.start(data, 0)
    times.setdefault("numpy", []).append(time.perf_counter() - started)
    path = "shard files" if engine._layout.shard_dir else "cached partitions"
    engine.close()
df = spark.read.parquet({path!r}).limit({rows}).cache()
df.count()
for repeat in range(2):
    started = time.perf_counter()
    with prepare_training_frame(df, None, settings, None) as data:
        engine = make_engine(data.workers, settings)
        engine.start(data, 0)
        times.setdefault("dataframe", []).append(time.perf_counter() - started)
        engine.close()
spark.stop()
print("RESULT", json.dumps({{"times": times, "path": path}}))
'''


def part_ingest(args, path):
    rows = args.ingest_rows
    print(f"\n2. Ingestion into the workers' shards, {rows:,} x {N_FEATURES} {args.dtype}, "
          "2 workers (second of two runs; DataFrame: statistics pass included)")
    for connect, force_cache in ((False, False), (False, True), (True, False)):
        result = run_child(INGEST.format(rows=rows, n_features=N_FEATURES, path=path,
                                         connect=connect, force_cache=force_cache,
                                         dtype=args.dtype), timeout=600)
        if result is None:
            continue
        kind = "Connect" if connect else "classic"
        for source, seconds in result["times"].items():
            print(f"   {kind:8s} {result['path']:17s} {source:9s}: "
                  f"{rows / seconds[-1]:,.0f} rows/s ({seconds[-1]:.2f} s; first run "
                  f"{seconds[0]:.2f} s)")


# ---------------------------------------------------------------------------- part 3

FIXED = '''
import pyarrow as pa
from skdbn import DistributedDBN, loopback_session
spark = loopback_session("local[2]", app_name="bench-fixed", **({connect_kwargs}))
rng = np.random.default_rng(0)
X = rng.random((8000, 784))
X[X < 0.8] = 0.0
y = rng.integers(0, 10, 8000)
offsets = pa.array(np.arange(8001, dtype=np.int32) * 784)
frame = spark.createDataFrame(pa.table({{
    "features": pa.ListArray.from_arrays(offsets, pa.array(X.ravel())),
    "label": pa.array(y)}})).cache()
frame.count()
params = dict(pretrain_epochs=1, max_iter=1, random_state=0)
out = {{"numpy": [], "dataframe": [], "phase": []}}
DistributedDBN(**params).fit(frame)  # starts the Python workers
for repeat in range(3):
    started = time.perf_counter()
    DistributedDBN(**params).fit(X, y)
    out["numpy"].append(time.perf_counter() - started)
    started = time.perf_counter()
    DistributedDBN(**params).fit(frame)
    out["dataframe"].append(time.perf_counter() - started)
small = X[:200]
phases = timed_phases()
out["fits"] = []
for repeat in range(5):
    before = len(phases)
    # Two layers and up to three fine-tuning phases of ten epochs: five phases of almost no
    # work, so that a phase's wall time is its fixed cost.
    DistributedDBN(hidden_layer_sizes=(8, 8), pretrain_epochs=1, max_iter=30, tol=0.0,
                   n_workers=2, random_state=repeat).fit(small, y[:200])
    # A phase's fixed cost: its wall time less its slowest task's training.
    out["fits"].append([p["wall"] - (p["train"] or 0.0) for p in phases[before:]])
out["phase"] = [wall for fit in out["fits"] for wall in fit]
spark.stop()
print("RESULT", json.dumps(out))
'''


def part_fixed(args):
    print("\n3. Fixed costs, local[2] (median of 3)")
    runs = [("this tree, classic", ROOT, False), ("this tree, Connect", ROOT, True)]
    if args.baseline:
        runs[:0] = [("baseline, classic", args.baseline, False),
                    ("baseline, Connect", args.baseline, True)]
    for name, source, connect in runs:
        result = run_child(FIXED.format(connect_kwargs='{"connect": True}' if connect else '{}'),
                           source=source)
        if result is None:
            print(f"   {name}: no result")
            continue
        numpy_fit = statistics.median(result["numpy"])
        frame_fit = statistics.median(result["dataframe"])
        print(f"   {name}: DataFrame fit of 8,000 rows {frame_fit:.2f} s, numpy fit "
              f"{numpy_fit:.2f} s ({frame_fit / numpy_fit:.1f}x); one phase of 2 workers "
              f"{statistics.median(result['phase']):.3f} s (median; this tree: less its "
              "training)")
        fits = result.get("fits")
        if fits:  # this tree's FIXED script: phases grouped by fit
            first = statistics.median(fit[0] for fit in fits)
            later = statistics.median(wall for fit in fits for wall in fit[1:])
            mean = statistics.median(sum(fit) / len(fit) for fit in fits)
            print(f"      fixed cost of the first phase of a fit {first:.3f} s, of each later "
                  f"phase {later:.3f} s, mean per phase {mean:.3f} s over fits of "
                  f"{statistics.median(len(fit) for fit in fits):.0f} phases "
                  f"(medians of {len(fits)} fits)")


# ---------------------------------------------------------------------------- part 4

PARITY = '''
from sklearn.datasets import load_digits
from skdbn import DistributedDBN, loopback_session
spark = loopback_session("local[2]", app_name="bench-parity", connect={connect})
X, y = load_digits(return_X_y=True)
X = X / 16.0
params = dict(hidden_layer_sizes=(32, 16), pretrain_epochs=3, max_iter=12, n_workers=2,
              sync="average", random_state=7)
from_numpy = DistributedDBN(**params).fit(X, y)
frame = spark.createDataFrame([(x.tolist(), int(c)) for x, c in zip(X, y)],
                              "features array<double>, label bigint").repartition(3)
from_frame = DistributedDBN(**params).fit(frame)
np.savez({path!r}, *from_numpy.coefs_, *from_numpy.intercepts_, *from_frame.coefs_,
         *from_frame.intercepts_)
spark.stop()
print("RESULT", json.dumps({{"accuracy": from_numpy.score(X, y)}}))
'''


def part_parity(args):
    print("\n4. Connect parity: sync='average', random_state=7, 2 workers, digits")
    import numpy as np

    arrays = {}
    with tempfile.TemporaryDirectory() as folder:
        for connect in (False, True):
            path = os.path.join(folder, f"{connect}.npz")
            if run_child(PARITY.format(connect=connect, path=path)) is None:
                return
            with np.load(path) as saved:
                arrays[connect] = [saved[k] for k in sorted(saved.files,
                                                            key=lambda k: int(k.split("_")[1]))]
    half = len(arrays[False]) // 2
    for name, part in (("numpy input", slice(0, half)), ("DataFrame input", slice(half, None))):
        same = all(np.array_equal(a, b) for a, b in zip(arrays[False][part],
                                                        arrays[True][part], strict=True))
        print(f"   {name}: classic and Connect models identical: {same}")


# ---------------------------------------------------------------------------- main

def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="1,2,3,4,5,6")
    parser.add_argument("--rows", type=int, default=200_000, help="1: rows of the parquet")
    parser.add_argument("--dtype", choices=sorted(ELEMENT), default="float64",
                        help="1, 2: element type of the parquet's array column (float64)")
    parser.add_argument("--ingest-rows", type=int, default=50_000, help="2: rows ingested")
    parser.add_argument("--baseline", help="path of an earlier skdbn checkout to compare")
    parser.add_argument("--baseline-rows", type=int, default=100_000,
                        help="1: rows the baseline fits")
    parser.add_argument("--baseline-memory", default="4g",
                        help="1: spark.driver.memory the baseline needs")
    parser.add_argument("--repeats", type=int, default=3, help="5: fits of each kind")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.ingest_rows, args.baseline_rows = 20_000, 10_000, 10_000
        args.repeats = 1
    return args


VECTORS = '''
sys.path.insert(0, {here!r})
import pyarrow as pa
from benchmark_datasets import digits_28
from pyspark.ml.functions import array_to_vector
from skdbn import DistributedDBN, loopback_session
spark = loopback_session("local[2]", app_name="bench-vectors", **({connect_kwargs}))
X, X_test, y, y_test = digits_28()
offsets = pa.array(np.arange(len(X) + 1, dtype=np.int32) * X.shape[1])
table = pa.table({{"features": pa.ListArray.from_arrays(offsets, pa.array(X.ravel())),
                   "label": pa.array(y)}})
frame = spark.createDataFrame(table).select(array_to_vector("features").alias("features"),
                                            "label").cache()
assert type(frame.schema["features"].dataType).__name__ == "VectorUDT"
frame.count()
params = dict(hidden_layer_sizes=(500, 500), n_workers=2, random_state=0)
out = {{"dataframe": [], "array": [], "dataframe_error": [], "array_error": []}}
DistributedDBN(**dict(params, pretrain_epochs=1, max_iter=1)).fit(frame)  # Python workers
for repeat in range({repeats}):
    started = time.perf_counter()
    model = DistributedDBN(**params).fit(frame)
    out["dataframe"].append(time.perf_counter() - started)
    out["dataframe_error"].append(1 - model.score(X_test, y_test))
    out["dtype"] = str(model.dtype_)
    started = time.perf_counter()
    model = DistributedDBN(backend="local", **params).fit(X.astype(np.float32), y)
    out["array"].append(time.perf_counter() - started)
    out["array_error"].append(1 - model.score(X_test, y_test))
spark.stop()
print("RESULT", json.dumps(out))
'''


def part_vectors(args):
    print(f"\n5. Vectors against arrays: (500, 500), 2 workers, 8,000 x 784 digits, "
          f"median of {args.repeats}")
    for name, connect in (("classic", False), ("Connect", True)):
        result = run_child(VECTORS.format(here=HERE, repeats=args.repeats,
                                          connect_kwargs='{"connect": True}' if connect
                                          else '{}'), timeout=3600)
        if result is None:
            print(f"   {name}: no result")
            continue
        frame_fit, array_fit = (statistics.median(result[k]) for k in ("dataframe", "array"))
        print(f"   {name}: DataFrame of vectors {frame_fit:.1f} s (trains in "
              f"{result['dtype']}, test error {statistics.mean(result['dataframe_error']):.4f})"
              f", float32 array on local processes {array_fit:.1f} s (test error "
              f"{statistics.mean(result['array_error']):.4f}): {frame_fit / array_fit:.2f}x",
              flush=True)


# ---------------------------------------------------------------------------- part 6

FLOOR = '''
import statistics
from skdbn import loopback_session
from skdbn.spark.data import struct_schema
spark = loopback_session("local[2]", app_name="bench-floor", connect={connect})

def nothing(batches):
    import pyarrow as pa
    for _ in batches:
        pass
    yield pa.RecordBatch.from_pydict({{"rank": pa.array([0], pa.int32())}})

schema = struct_schema((("rank", "int"),))
frame = spark.range(0, 2, 1, 2)

def seconds(job):
    times = []
    for _ in range(10):
        began = time.perf_counter()
        job().toArrow()
        times.append(time.perf_counter() - began)
    return statistics.median(times[2:])

again = frame.mapInArrow(nothing, schema, barrier=True)
try:
    print("RESULT", json.dumps({{
        "new": seconds(lambda: frame.mapInArrow(nothing, schema, barrier=True)),
        "again": seconds(lambda: again)}}))
finally:
    spark.stop()
'''


def part_floor(args):
    print("\n6. Spark's own floor: a barrier mapInArrow job of two tasks that do nothing, "
          "local[2] (median of 8)")
    for name, connect in (("classic", False), ("Connect", True)):
        result = run_child(FLOOR.format(connect=connect))
        if result is None:
            print(f"   {name}: no result")
            continue
        print(f"   {name}: a new DataFrame each time {result['new']:.3f} s, the same DataFrame "
              f"again {result['again']:.3f} s")


def main():
    args = parse_args()
    parts = {int(p) for p in args.parts.split(",")}
    print(f"machine: {os.cpu_count()} cores; Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "mnist_like.parquet")
        if parts & {1, 2}:
            started = time.perf_counter()
            written = run_child(WRITE_PARQUET.format(rows=args.rows, path=path,
                                                     n_features=N_FEATURES, dtype=args.dtype))
            print(f"parquet: {args.rows:,} rows, array<{ELEMENT[args.dtype]}> column, "
                  f"{written['bytes'] / 2**20:.0f} MB "
                  f"(written in {time.perf_counter() - started:.0f} s)")
        if 1 in parts:
            part_large(args, path)
        if 2 in parts:
            part_ingest(args, path)
        if 3 in parts:
            part_fixed(args)
        if 4 in parts:
            part_parity(args)
        if 5 in parts:
            part_vectors(args)
        if 6 in parts:
            part_floor(args)


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
