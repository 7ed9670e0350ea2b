"""The default pretraining fit of two skdbn trees, timed in alternating fresh processes.

Run: ``python benchmarks/bench_trees.py --baseline PATH`` (PATH: a checkout of an earlier
skdbn; about five minutes on 2 cores with the default six pairs).

``bench_cores.py`` measures one tree at a time, and on a noisy machine two of its runs can
differ by more than two trees do. Here each pair of runs times both trees back to back, in
turn first, each in a fresh Python process importing skdbn from its tree: a warm fit (it
starts the worker pool and shares the data), then three timed fits of
``DistributedDBN(hidden_layer_sizes=(500,), batch_size=100)`` (784 -> 500, 20,000
generated MNIST-like rows, 10 epochs, ``backend="auto"``: one local process per core) and
two of the same with one worker in this process. Printed: each run's median rate, then the
medians over the pairs and the paired differences.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FITS = r'''
import json, time
import numpy as np
from skdbn import DistributedDBN

rng = np.random.default_rng(0)
prototypes = rng.random((40, 784)) < 0.19
which = rng.integers(0, 40, 20000)
noise = rng.random((20000, 784)) < 0.05
X = (prototypes[which] ^ noise).astype(np.float32)

def rate(**params):
    started = time.perf_counter()
    DistributedDBN(hidden_layer_sizes=(500,), batch_size=100, pretrain_epochs=10,
                   random_state=0, **params).fit(X)
    return 20000 * 10 / (time.perf_counter() - started)

rate()  # starts the worker pool and shares the data
default = sorted(rate() for _ in range(3))[1]
one = max(rate(n_workers=1, backend="local") for _ in range(2))
print("RESULT", json.dumps({"default": default, "one worker": one}))
'''


def run(source):
    """The rates of one fresh process importing skdbn from ``source``."""
    done = subprocess.run([sys.executable, "-c", FITS], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHONPATH": source},
                          cwd=tempfile.gettempdir())
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    if not lines:
        raise RuntimeError(f"the fits of {source} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT"):])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="an earlier skdbn checkout")
    parser.add_argument("--pairs", type=int, default=6)
    args = parser.parse_args()
    trees = {"baseline": args.baseline, "this tree": ROOT}
    rates = {name: [] for name in trees}
    for pair in range(args.pairs):
        order = list(trees) if pair % 2 == 0 else list(trees)[::-1]
        for name in order:
            rates[name].append(run(trees[name]))
            shown = ", ".join(f"{k} {v:,.0f}" for k, v in rates[name][-1].items())
            print(f"pair {pair + 1}, {name}: {shown} samples/s", flush=True)
    for kind in ("default", "one worker"):
        before = [r[kind] for r in rates["baseline"]]
        after = [r[kind] for r in rates["this tree"]]
        differences = sorted(a - b for a, b in zip(after, before, strict=True))
        print(f"{kind}: median {statistics.median(before):,.0f} (baseline) and "
              f"{statistics.median(after):,.0f} (this tree) samples/s; paired differences "
              f"{differences[0]:+,.0f} to {differences[-1]:+,.0f}, median "
              f"{statistics.median(differences):+,.0f}")


if __name__ == "__main__":
    main()
