"""Peak memory of the executors' Python workers in a DataFrame fit (issue 22, item 5).

Run: ``python benchmarks/bench_worker_memory.py`` (about 5 minutes on 2 cores; ``--rows``
and ``--partitions`` to change the data, ``--repeats`` fits of each). Optionally
``--baseline PATH``: a checkout of an earlier skdbn (``git worktree add /tmp/skdbn-old
<commit>``) measured in the same run, alternating with this tree.

A generated MNIST-like data set (``--rows`` x 784 values in [0, 1], most of them 0, labels of
10 classes; no download) is written as parquet with an ``array<float>`` column, once per
partition count, as that many files that Spark reads as one partition each. Each fit is
``DistributedDBN(pretrain_epochs=1, max_iter=1, random_state=0)`` (the defaults otherwise:
two layers of 256 units, float32, one worker per task slot) on the embedded ``local[2]``
session with Spark's default memory, in a fresh Python process. The epochs are cut from 5
and 200 to 1 and 1 to keep the run short: a worker's peak comes from its data and the
layers' whole-shard passes, not from the number of epochs.

Printed for each partition count: the fit's wall time, and the peak resident memory
(``VmHWM``, sampled from ``/proc`` every 0.1 s, of every process the JVM's
``pyspark.daemon`` forks) of each executor Python worker against its float32 shard
(rows / workers x 784 x 4 bytes).
"""

import argparse
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_spark_data import ROOT, run_child  # noqa: E402

N_FEATURES = 784

WRITE = '''
import pyarrow as pa, pyarrow.parquet as pq
rows, files, path = {rows}, {files}, {path!r}
os.makedirs(path, exist_ok=True)
rng = np.random.default_rng(0)
per_file = -(-rows // files)
for index, start in enumerate(range(0, rows, per_file)):
    n = min(per_file, rows - start)
    X = rng.random((n, {n_features}), dtype=np.float32)
    X[X < 0.8] = 0.0
    y = rng.integers(0, 10, n).astype(np.int32)
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * {n_features})
    table = pa.table({{"features": pa.ListArray.from_arrays(offsets, pa.array(X.ravel())),
                       "label": pa.array(y)}})
    pq.write_table(table, os.path.join(path, f"part-{{index:04d}}.parquet"))
sizes = [os.path.getsize(os.path.join(path, name)) for name in os.listdir(path)]
print("RESULT", json.dumps({{"largest": max(sizes), "bytes": sum(sizes)}}))
'''

FIT = '''
from skdbn import DistributedDBN, loopback_session
# One partition per file: no file is split, and no two files share a partition.
spark = loopback_session("local[2]", app_name="bench-worker-memory", config={{
    "spark.sql.files.maxPartitionBytes": str({largest} + 1)}})
df = spark.read.parquet({path!r})
partitions = df.rdd.getNumPartitions()
with MemorySampler() as memory:
    time.sleep(0.3)
    started = time.perf_counter()
    model = DistributedDBN(pretrain_epochs=1, max_iter=1, random_state=0).fit(df)
    wall = time.perf_counter() - started
    time.sleep(0.3)
spark.stop()
print("RESULT", json.dumps({{
    "wall": wall, "partitions": partitions, "workers": memory.all_of("python"),
    "n_workers": len(model.worker_stats_["rows"]) if hasattr(model, "worker_stats_")
                 and "rows" in model.worker_stats_ else 2,
    "coef": float(sum(abs(c).sum() for c in model.coefs_))}}))
'''


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--baseline", default=None)
    args = parser.parse_args()
    mb = 1 << 20
    sources = [("this tree", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
    print(f"{args.rows:,} x {N_FEATURES} array<float> parquet, DistributedDBN(pretrain_epochs=1,"
          f" max_iter=1, random_state=0) on local[2], {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="skdbn-bench-memory-") as scratch:
        for files in args.partitions:
            path = os.path.join(scratch, f"digits-{files}")
            written = run_child(WRITE.format(rows=args.rows, files=files, path=path,
                                             n_features=N_FEATURES))
            if written is None:
                continue
            print(f"\n{files} files ({written['bytes'] / mb:.0f} MB of parquet)")
            walls = {name: [] for name, _ in sources}
            for _ in range(args.repeats):
                for name, source in sources:
                    result = run_child(FIT.format(path=path, largest=written["largest"]),
                                       source=source)
                    if result is None:
                        print(f"   {name}: no result")
                        continue
                    walls[name].append(result["wall"])
                    shard = args.rows / 2 * N_FEATURES * 4
                    workers = result["workers"][:2]
                    print(f"   {name}: {result['partitions']} partitions, fit "
                          f"{result['wall']:.1f} s, peak RSS of the Python workers "
                          + ", ".join(f"{w / mb:.0f} MB ({w / shard:.2f}x)" for w in workers)
                          + f" of a {shard / mb:.0f} MiB float32 shard (sum |coef| "
                          f"{result['coef']:.6f})")
            for name, seconds in walls.items():
                if len(seconds) > 1:
                    print(f"   {name}: median fit {statistics.median(seconds):.1f} s over "
                          f"{len(seconds)}")


if __name__ == "__main__":
    main()
