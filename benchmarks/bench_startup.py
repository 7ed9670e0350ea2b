"""Where the time before a fit's first minibatch goes, for an array the workers have not seen.

Each fit gets a fresh array (new content: another seed of the generated MNIST-like rows, as
a new train/test split or a grid-search fold gives), in a process whose worker pool is warm,
which is how a notebook or a grid search fits. The fit is the default one of
``bench_cores.py`` (784 -> 500, batch 100, ``backend="auto"``: local processes, one per
core), stopped after its first pretraining phase. Stages, medians over ``--repeats`` fits:

- ``validate``: from the call to ``fit`` until the data is prepared (``validate_data``, the
  range check of Bernoulli units, the input mean, the engine's own set-up);
- ``share``: naming the data (the engine's start) and writing it to shared memory, which
  the first phase does while its workers start;
- ``dispatch``: from the phase's start until the first worker has its peers' addresses
  (sending the phase to the processes, the rendezvous, which waits for the write: the two
  overlap, so ``share`` and ``dispatch`` add up to more than they cost together);
- ``map``: that worker's read of its shard from the shared file;
- ``first minibatch``: from the call to ``fit`` until the first worker trains.

Also printed: the same for a second fit of the same array (nothing written), the first fit of
a fresh process (its pool starts), and the time one memory-speed pass over the array takes
here (``X.copy()``), the yardstick of the issue.

Run: ``python benchmarks/bench_startup.py`` (about a minute).
"""

import argparse
import platform
import statistics
import time

import numpy as np
from bench_cores import HERE, mnist_like, result_of_fresh_process

from skdbn import DistributedDBN


class StageClock:
    """Stamps of one fit's stages, taken by wrapping the array preparation and the local
    process engine (the workers stamp their own steps in their results)."""

    def __init__(self):
        import skdbn._dbn as estimator
        from skdbn._processes import ProcessEngine
        from skdbn._shared import SharedShards

        self.stamps = {}
        prepare, start, run_phase, write = (estimator.prepare_arrays, ProcessEngine.start,
                                            ProcessEngine.run_phase, SharedShards.write)
        clock = self

        def timed_prepare(*args, **kwargs):
            data = prepare(*args, **kwargs)
            clock.stamps.setdefault("prepared", time.time())
            return data

        def timed_start(engine, *args):
            clock.stamps.setdefault("share", time.time())
            start(engine, *args)
            clock.stamps.setdefault("shared", time.time())

        def timed_write(shards):
            began = time.time()
            write(shards)
            clock.stamps.setdefault("write", time.time() - began)

        def timed_run_phase(engine, *args, **kwargs):
            clock.stamps.setdefault("phase", time.time())
            state, results = run_phase(engine, *args, **kwargs)
            clock.stamps.setdefault("results", results)
            return state, results

        estimator.prepare_arrays = timed_prepare
        ProcessEngine.start = timed_start
        ProcessEngine.run_phase = timed_run_phase
        SharedShards.write = timed_write

    def fit(self, X):
        self.stamps = {"call": time.time()}
        DistributedDBN(hidden_layer_sizes=(500,), batch_size=100, pretrain_epochs=1,
                       random_state=0).fit(X)
        return self.stages()

    def stages(self):
        s = self.stamps
        first = min(s["results"], key=lambda r: r.seconds["started"])
        began = first.seconds["started"]
        read = first.seconds.get("read", 0.0)
        return {
            "validate": s["share"] - s["call"],
            "share": s["shared"] - s["share"] + s.get("write", 0.0),
            "dispatch": began - read - s["phase"],
            "map": read,
            "first minibatch": began - s["call"],
        }


def memory_pass(X, repeats=7):
    """Seconds of one copy of ``X`` (a read and a write of its bytes), median."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        X.copy()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def first_fit_of_a_process(n_samples):
    """The stages of the first fit of a fresh Python process (its worker pool starts)."""
    code = f"""
import json, sys
sys.path.insert(0, {HERE!r})
from bench_startup import StageClock
from bench_cores import mnist_like
clock = StageClock()
print("RESULT", json.dumps(clock.fit(mnist_like({n_samples}, seed=99)[0])))
"""
    return result_of_fresh_process(code)


def print_row(label, stages):
    """One row of the table: ``label``, then the seconds of each stage."""
    print(f"{label:32}" + "".join(f"{stages[k]:>10.3f}" for k in STAGES), flush=True)


STAGES = ("validate", "share", "dispatch", "map", "first minibatch")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}"
          f", numpy {np.__version__}; {args.samples} x 784 float32, seconds")
    print(f"{'':32}" + "".join(f"{k:>10}" for k in ("validate", "share", "dispatch", "map",
                                                      "first mb")))
    print_row("first fit of a process", first_fit_of_a_process(args.samples))
    clock = StageClock()
    clock.fit(mnist_like(args.samples, seed=1000)[0])  # starts the pool
    fresh, again = [], []
    for seed in range(args.repeats):
        X = mnist_like(args.samples, seed=seed)[0]
        fresh.append(clock.fit(X))
        again.append(clock.fit(X))
    median = {k: statistics.median(f[k] for f in fresh) for k in STAGES}
    print_row("fresh array, warm pool (median)", median)
    print_row("same array again (median)", {k: statistics.median(f[k] for f in again)
                                             for k in STAGES})
    print(f"one memory-speed pass over the array (X.copy()): {memory_pass(X):.3f} s; "
          f"first minibatch of a fresh array: {median['first minibatch']:.3f} s "
          f"(target 0.1 s)")


if __name__ == "__main__":
    main()
