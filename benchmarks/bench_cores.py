"""Use of the cores: throughput of the default configuration against one core and against
scikit-learn, a sweep over worker counts, the start-up of a first and a second fit, and
fine-tuning against MLPClassifier. Every ratio compares figures measured in the same run.

Pretraining is CD-1 of one 784 -> 500 layer on generated MNIST-like binary rows, float32,
batch 100 (the batch of the issue's figures). Rates are samples per second over whole fits
(``n_samples * epochs / fit time``), so they include every fixed cost of a fit. The fits that
a ratio compares run in turn, round after round (``interleaved_seconds``), and the ratio is
the median of the rounds' own ratios: this VM's speed drifts by 10-20% within minutes, which
back-to-back blocks of repeats took for a difference between the fits.

- ``one core``: one worker in this process with one BLAS thread (the per-core rate).
- ``plain loop``: a textbook numpy CD-1 loop (momentum, no tricks) on one BLAS thread, the
  issue's own definition of the per-core rate; slower than ``one core``, whose step is tuned.
- ``default``: ``DistributedDBN(hidden_layer_sizes=(500,), batch_size=100)``, nothing else
  set: ``backend="auto"`` picks local worker processes (no SparkSession is active), one per
  core with one BLAS thread each. Each fit gets a new array (a copy made before the clock
  starts: the workers have not seen it, as with a new split).
- ``sklearn``: ``BernoulliRBM(n_components=500, batch_size=100)`` with numpy's default
  threads (all cores).
- ``start-up``: from the call to ``fit`` until the first worker starts training, for the
  first fit of a fresh process (in a subprocess) and for a second fit of the same data.
- ``sweep``: ``backend="local"``, ``n_workers=k`` for each ``k`` of ``--sweep``, against
  ``k`` times the per-core rate. Beside it, ``k`` plain loops run at once in separate
  processes that never talk: the machine's own ceiling for ``k`` busy cores (shared memory
  bandwidth, caches and clock limits show there), against which the sweep can be read.
- ``fine-tuning``: ``DistributedDBN(hidden_layer_sizes=(500,), pretrain_epochs=0)`` against
  ``MLPClassifier(hidden_layer_sizes=(500,), solver="sgd")``, same batch, epochs and
  momentum, on 10 classes.
- ``spark``: on ``local[N]`` (N = the cores), one worker against N; and the default of a
  numpy fit through an embedded Spark session against local processes.

Run: ``python benchmarks/bench_cores.py`` (about five minutes on 2 cores);
``--parts pretrain,sweep --sweep 1,2,4,8,16`` on a larger machine (no Java needed there);
``--parts sweep`` alone takes the sweep's one-worker row as the per-core rate (list 1 first).
The sweep prints each rate as a share of the workers times the per-core rate and times the
plain loop's rate; its last column is the training loops' own rate (``worker_stats_``),
without the fixed costs of a fit.
"""

import argparse
import json
import multiprocessing
import os
import platform
import queue
import subprocess
import sys
import time
import warnings

import numpy as np
from sklearn.neural_network import BernoulliRBM, MLPClassifier
from threadpoolctl import threadpool_limits

from skdbn import DistributedDBN
from skdbn._machine import usable_cpus

HERE = os.path.dirname(os.path.abspath(__file__))


def mnist_like(n_samples, n_features=784, n_classes=10, seed=0):
    """Binary rows: noisy copies of sparse class prototypes (float32), and their classes."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((n_classes * 4, n_features)) < 0.19
    which = rng.integers(0, len(prototypes), n_samples)
    noise = rng.random((n_samples, n_features)) < 0.05
    return (prototypes[which] ^ noise).astype(np.float32), which % n_classes


class FirstTraining:
    """Seconds from a fit's start until its first worker began training, recorded by
    wrapping the engines' ``run_phase`` (workers stamp ``seconds["started"]``)."""

    def __init__(self):
        from skdbn._engines import LocalEngine
        from skdbn._processes import ProcessEngine

        self.start = None
        self.first = None
        self._patched = []
        classes = [LocalEngine, ProcessEngine]
        if "pyspark" in sys.modules:
            from skdbn.spark.stages import SparkEngine

            classes.append(SparkEngine)
        for engine_class in classes:
            original = engine_class.run_phase
            engine_class.run_phase = self._wrap(original)
            self._patched.append((engine_class, original))

    def _wrap(self, original):
        def run_phase(engine, *args):
            called = time.time()
            state, results = original(engine, *args)
            if self.first is None:
                stamps = [r.seconds["started"] for r in results if "started" in r.seconds]
                self.first = (min(stamps) if stamps else called) - self.start
            return state, results
        return run_phase

    def fit(self, model, *data):
        self.start, self.first = time.time(), None
        began = time.perf_counter()
        model.fit(*data)
        return time.perf_counter() - began, self.first


def plain_loop_rate(X, epochs=2, seed=0):
    """Samples per second of a textbook numpy CD-1 loop with momentum, float32, one BLAS
    thread: the per-core rate as the issue measured it."""
    began, ended = _plain_loop(X, epochs, seed)
    return len(X) * epochs / (ended - began)


def _plain_loop(X, epochs, seed, batch_size=100, n_hidden=500):
    """Run the plain CD-1 loop; its start and end on the wall clock."""
    rng = np.random.default_rng(seed)
    weights = (0.01 * rng.standard_normal((X.shape[1], n_hidden))).astype(np.float32)
    hidden_bias = np.zeros(n_hidden, np.float32)
    visible_bias = np.zeros(X.shape[1], np.float32)
    velocity = np.zeros_like(weights)

    def sigmoid(x):
        return 1 / (1 + np.exp(-np.maximum(x, -30)))

    began = time.perf_counter()
    with threadpool_limits(1):
        for _ in range(epochs):
            for start in range(0, len(X), batch_size):
                v0 = X[start:start + batch_size]
                h0 = sigmoid(v0 @ weights + hidden_bias)
                sample = (rng.random(h0.shape, dtype=np.float32) < h0).astype(np.float32)
                v1 = sigmoid(sample @ weights.T + visible_bias)
                h1 = sigmoid(v1 @ weights + hidden_bias)
                gradient = (v0.T @ h0 - v1.T @ h1) / len(v0)
                velocity = 0.9 * velocity + 0.1 * gradient
                weights += velocity
                hidden_bias += 0.1 * (h0 - h1).mean(axis=0)
                visible_bias += 0.1 * (v0 - v1).mean(axis=0)
    return began, time.perf_counter()


def independent_loops_rate(n_processes, n_samples, epochs, timeout=600):
    """Samples per second of ``n_processes`` plain loops run at once in separate processes,
    each on ``n_samples / n_processes`` rows and never talking to another: what this machine
    gives to that many busy cores, the ceiling of any data-parallel trainer on it."""
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(n_processes)
    results = context.Queue()
    processes = [context.Process(target=_timed_plain_loop, daemon=True,
                                 args=(n_samples // n_processes, epochs, seed, ready, results))
                 for seed in range(n_processes)]
    for process in processes:
        process.start()
    try:
        runs = _collect(results, processes, timeout)
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=10)
    samples = sum(n for n, _, _ in runs)
    return samples / (max(end for _, _, end in runs) - min(start for _, start, _ in runs))


def _collect(results, processes, timeout):
    """One result from each process; an error as soon as one of them failed or died."""
    runs, deadline = [], time.monotonic() + timeout
    while len(runs) < len(processes):
        try:
            run = results.get(timeout=1.0)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the plain loops took over {timeout} s") from None
            dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a plain-loop process died (exit code {dead[0]})") from None
            continue
        if isinstance(run, str):
            raise RuntimeError(f"a plain-loop process failed: {run}")
        runs.append(run)
    return runs


def _timed_plain_loop(n_samples, epochs, seed, ready, results):
    try:
        X, _ = mnist_like(n_samples, seed=seed)
        ready.wait(timeout=300)  # every process has its data: start together
        began, ended = _plain_loop(X, epochs, seed)
    except BaseException as error:
        results.put(f"{type(error).__name__}: {error}")
        raise
    offset = time.time() - time.perf_counter()  # each process has its own perf_counter
    results.put((n_samples * epochs, began + offset, ended + offset))


def median_rate(fit, n_samples, epochs, repeats):
    return n_samples * epochs / _median([fit() for _ in range(repeats)])


def interleaved_seconds(fits, repeats):
    """``{name: [seconds of each round]}`` of ``fits`` (``{name: fit}``, each returning its
    seconds), run in turn in every round, each round starting one further along: a drift of
    the machine's speed (this VM's neighbours) then touches every fit alike, and a ratio of
    two fits of the same round is a paired measurement."""
    names = list(fits)
    seconds = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            seconds[name].append(fits[name]())
    return seconds


def paired_ratio(seconds, slower, faster):
    """The median over rounds of ``slower``'s seconds over ``faster``'s, of one round each."""
    return _median([a / b for a, b in zip(seconds[slower], seconds[faster], strict=True)])


def _median(values):
    """The middle of ``values`` (the upper one of an even count); tuples by their first item."""
    return sorted(values)[len(values) // 2]


def pretrain_part(args, X, timer):
    epochs, n = args.epochs, len(X)

    chosen = {}

    def ours(**params):
        model = DistributedDBN(hidden_layer_sizes=(500,), batch_size=100,
                               pretrain_epochs=epochs, random_state=0, **params)
        out = timer.fit(model, X.copy())  # a new array each fit, made before the clock
        if not params:
            chosen["workers"] = model.n_workers_
        return out

    ours()  # warm the pool and the shared data for the default

    def one_core_fit():
        with threadpool_limits(1):
            return ours(n_workers=1, backend="local")[0]

    fits = {
        "one core": one_core_fit,
        "default": lambda: ours()[0],
        "sklearn": lambda: _fit_seconds(BernoulliRBM(
            n_components=500, batch_size=100, n_iter=epochs, random_state=0), X),
    }
    cores = usable_cpus()
    if chosen["workers"] == 1 and cores > 1:  # what processes would give instead
        fits["processes"] = lambda: ours(n_workers=cores, backend="local")[0]
    seconds = interleaved_seconds(fits, args.repeats)
    one_core, default, sklearn = (n * epochs / _median(seconds[name])
                                  for name in ("one core", "default", "sklearn"))
    _, warm_start_up = ours()
    cold = _cold_fit(args, n)
    print(f"\npretraining 784 -> 500, batch 100, {n} samples, {epochs} epochs "
          f"(median of {args.repeats})")
    print(f"  one core                    {one_core:9,.0f} samples/s")
    workers = chosen["workers"]
    how = (f"{workers} workers x 1 thread" if workers > 1
           else f"1 worker in this process, {cores} threads")
    print(f"  default ({how}) {default:9,.0f} samples/s  "
          f"{paired_ratio(seconds, 'one core', 'default'):.2f}x one core (target >= "
          f"{0.95 * cores:.1f}x), {paired_ratio(seconds, 'sklearn', 'default'):.2f}x sklearn "
          "(target >= 2x); ratios: medians of the rounds' own")
    print(f"  sklearn BernoulliRBM        {sklearn:9,.0f} samples/s")
    if "processes" in seconds:
        print(f"  {cores} worker processes (not the default here) "
              f"{n * epochs / _median(seconds['processes']):9,.0f} samples/s  "
              f"{paired_ratio(seconds, 'sklearn', 'processes'):.2f}x sklearn")
    print(f"  start-up: first fit of a process {cold['first_training']:.2f} s to its first "
          f"training minibatch ({cold['seconds']:.2f} s in all); a second fit "
          f"{warm_start_up:.2f} s (target <= 0.5 s)")
    return one_core


def _fit_seconds(model, *data):
    began = time.perf_counter()
    model.fit(*data)
    return time.perf_counter() - began


def _cold_fit(args, n):
    code = f"""
import json, sys
sys.path.insert(0, {HERE!r})
from bench_cores import FirstTraining, mnist_like
from skdbn import DistributedDBN
X, _ = mnist_like({n})
timer = FirstTraining()
seconds, first = timer.fit(DistributedDBN(hidden_layer_sizes=(500,), batch_size=100,
                                          pretrain_epochs={args.epochs}, random_state=0), X)
print("RESULT", json.dumps({{"seconds": seconds, "first_training": first}}))
"""
    return result_of_fresh_process(code)


def result_of_fresh_process(code, timeout=600):
    """The JSON object that ``code``, run in a fresh interpreter, prints after ``RESULT``."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(lines[0][len("RESULT "):])


def sweep_part(args, X, one_core, timer):
    plain = _median([plain_loop_rate(X) for _ in range(args.repeats)])
    print(f"\nsweep: backend='local', sync='gossip', {len(X)} samples, {args.epochs} epochs"
          f" (median of {args.repeats}); plain numpy CD-1 loop, 1 thread: {plain:,.0f}"
          " samples/s")
    print("  workers  samples/s  x one core  share of workers x: one core  plain loop"
          "   training only   independent plain loops")
    fixed_costs = []
    for workers in [int(k) for k in args.sweep.split(",")]:
        model = DistributedDBN(hidden_layer_sizes=(500,), batch_size=100, backend="local",
                               n_workers=workers, pretrain_epochs=args.epochs, random_state=0)
        # Each worker has one core: one worker (in this process) gets one BLAS thread too.
        with threadpool_limits(1 if workers == 1 else None):
            if workers > 1:
                timer.fit(model, X)  # warm this worker count's pool
            fits = [timer.fit(model, X) for _ in range(args.repeats)]
            rate = len(X) * args.epochs / _median(fits)[0]
        fixed_costs.append((workers, fits[-1][0], *_fixed_costs(model, *fits[-1])))
        one_core = one_core or rate  # --parts sweep alone: the one-worker row is the rate
        training = _training_rate(model)
        apart = independent_loops_rate(workers, len(X), args.epochs)
        print(f"  {workers:7d}  {rate:9,.0f}  {rate / one_core:10.2f}  "
              f"{rate / (workers * one_core):27.0%}  {rate / (workers * plain):10.0%}"
              f"  {training:14,.0f}   {apart:9,.0f} ({apart / (workers * plain):.0%})")
    print("  where the last fit's time went (seconds): workers, fit, until the first worker"
          " trained, until the last did, training, after the last worker finished")
    for workers, seconds, first, last, training, tail in fixed_costs:
        print(f"  {workers:7d}  {seconds:6.2f}  {first:6.2f}  {last:6.2f}  {training:6.2f}"
              f"  {tail:6.2f}")


def _fixed_costs(model, fit_seconds, first_training):
    """When the workers of the last fit began training, for how long, and how long after the
    last one finished the fit returned, all counted from the call to ``fit``.

    ``worker_stats_``'s ``started`` counts from when the fit began recording its phases,
    after the input was validated; ``first_training`` (``FirstTraining``) counts from the call,
    so the stats are shifted by the difference.
    """
    stats = model.worker_stats_
    shift = first_training - min(row["started"] for row in stats)
    last = max(row["started"] for row in stats) + shift
    end = max(row["started"] + row["seconds_training"] for row in stats) + shift
    return first_training, last, end - first_training, fit_seconds - end


def _training_rate(model):
    """Samples per second of the last fit's training alone: its samples over the time of
    its slowest worker's training loop (``worker_stats_``), without the fit's fixed costs."""
    stats = model.worker_stats_
    return sum(row["samples"] for row in stats) / max(row["seconds_training"] for row in stats)


def finetune_part(args, X, y, timer):
    epochs, n = args.finetune_epochs, len(X)
    common = dict(hidden_layer_sizes=(500,), batch_size=100, max_iter=epochs,
                  learning_rate_init=0.1, momentum=0.9, n_iter_no_change=epochs + 1,
                  random_state=0)

    def ours():
        model = DistributedDBN(pretrain_epochs=0, learning_rate=0.1, tol=0.0,
                               **{k: v for k, v in common.items()
                                  if k not in ("learning_rate_init",)})
        return timer.fit(model, X, y)[0]

    def theirs():
        model = MLPClassifier(solver="sgd", nesterovs_momentum=False, tol=0.0,
                              early_stopping=False, **common)
        with warnings.catch_warnings():  # it stops at max_iter by design here
            warnings.simplefilter("ignore")
            return _fit_seconds(model, X, y)

    ours()
    rate = median_rate(ours, n, epochs, args.repeats)
    sklearn = median_rate(theirs, n, epochs, args.repeats)
    print(f"\nfine-tuning 784 -> 500 -> 10, batch 100, {n} samples, {epochs} epochs")
    print(f"  default (local processes)  {rate:9,.0f} samples/s  {rate / sklearn:.2f}x "
          "MLPClassifier (target >= 1.5x)")
    print(f"  MLPClassifier (sgd)        {sklearn:9,.0f} samples/s")


def spark_part(args, X, timer):
    from skdbn import loopback_session

    cores = usable_cpus()
    began = time.perf_counter()
    connect = args.spark_session == "connect"
    spark = loopback_session(f"local[{cores}]", app_name="bench-cores", connect=connect)
    session_seconds = time.perf_counter() - began
    try:
        def fit(workers, backend="spark"):
            model = DistributedDBN(hidden_layer_sizes=(500,), batch_size=100, backend=backend,
                                   n_workers=workers, pretrain_epochs=args.epochs,
                                   random_state=0)
            return timer.fit(model, X)[0]

        fit(cores)  # start the Python workers
        seconds = interleaved_seconds({"one": lambda: fit(1), "all": lambda: fit(cores),
                                       "local": lambda: fit(None, "local")}, args.repeats)
        one, all_cores, local = (len(X) * args.epochs / _median(seconds[name])
                                 for name in ("one", "all", "local"))
        print(f"\nSpark local[{cores}] ({args.spark_session} session), {len(X)} samples, "
              f"{args.epochs} epochs")
        print(f"  1 worker   {one:9,.0f} samples/s")
        print(f"  {cores} workers  {all_cores:9,.0f} samples/s  "
              f"{paired_ratio(seconds, 'one', 'all'):.2f}x one worker (target >= 1.8x; the "
              "median of the rounds' own ratios)")
        print(f"  local processes, default workers {local:9,.0f} samples/s: "
              f"{paired_ratio(seconds, 'all', 'local'):.2f}x Spark with {cores} workers")
        print(f"  starting the local Spark session took {session_seconds:.1f} s (a JVM), "
              "which an embedded session adds to a process's first Spark fit")
    finally:
        spark.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="pretrain,sweep,finetune,spark")
    parser.add_argument("--spark-session", choices=("classic", "connect"), default="classic",
                        help="the session of the spark part")
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweep", default=None, help="worker counts, e.g. 1,2,4,8,16")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    cores = usable_cpus()
    args.sweep = args.sweep or ",".join(str(k) for k in (1, 2, 4, 8, 16, 32, 64)
                                        if k <= cores)
    print(f"machine: {platform.processor() or platform.machine()}, {cores} usable cores; "
          f"Python {platform.python_version()}, numpy {np.__version__}")
    X, y = mnist_like(args.samples)
    timer = FirstTraining()
    one_core = None
    if "pretrain" in parts:
        one_core = pretrain_part(args, X, timer)
    if "sweep" in parts:
        sweep_part(args, X, one_core, timer)
    if "finetune" in parts:
        finetune_part(args, X, y, timer)
    if "spark" in parts:
        spark_part(args, X, timer)


if __name__ == "__main__":
    main()
