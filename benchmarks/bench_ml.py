"""The pyspark.ml stage against Spark MLlib's MultilayerPerceptronClassifier, and against
the plain estimator, on one DataFrame in the same run.

Data: sklearn's digits, each image also shifted by one pixel in the four directions (five
copies, 8,985 rows of 64 pixels scaled to [0, 1]), split 75/25 with a fixed seed, in a
DataFrame of one vector column. Every model has the same hidden layers.

- ``DBNClassifier`` in a ``pyspark.ml.Pipeline`` and ``DistributedDBN`` with the same
  settings, alternating, on the same cached DataFrame of assembled vectors: the stage may
  cost at most 10% more time, with the same accuracy. Then the whole pipeline from the raw
  columns (``VectorAssembler`` in front), as a user runs it.
- ``MultilayerPerceptronClassifier`` with ``maxIter=--mlp-iters``, then again with as many
  iterations as fit in the DBN stage's time (from the first fit's time per iteration): the
  accuracy each reaches at equal wall time.

Run: ``python benchmarks/bench_ml.py`` (a few minutes on 2 cores).
"""

import argparse
import platform
import time

import numpy as np
from sklearn.datasets import load_digits

from skdbn import DistributedDBN, loopback_session
from skdbn.spark import DBNClassifier


def shifted_digits():
    X, y = load_digits(return_X_y=True)
    images = X.reshape(-1, 8, 8) / 16.0
    copies, labels = [images], [y]
    for axis, step in ((1, 1), (1, -1), (2, 1), (2, -1)):
        shifted = np.roll(images, step, axis=axis)
        edge = 0 if step == 1 else -1
        if axis == 1:
            shifted[:, edge, :] = 0
        else:
            shifted[:, :, edge] = 0
        copies.append(shifted)
        labels.append(y)
    return np.concatenate(copies).reshape(-1, 64), np.concatenate(labels)


def timed(fit):
    began = time.perf_counter()
    model = fit()
    return model, time.perf_counter() - began


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", default="256,256")
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--max-iter", type=int, default=50)
    parser.add_argument("--mlp-iters", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    hidden = [int(h) for h in args.hidden.split(",")]

    from pyspark.ml import Pipeline
    from pyspark.ml.classification import MultilayerPerceptronClassifier
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.feature import VectorAssembler

    spark = loopback_session(f"local[{args.workers}]", app_name="bench-ml")
    try:
        X, y = shifted_digits()
        columns = [f"p{i}" for i in range(X.shape[1])]
        rows = [(*map(float, x), float(label)) for x, label in zip(X, y, strict=True)]
        frame = spark.createDataFrame(rows, ", ".join(f"{c} double" for c in columns)
                                      + ", label double")
        train, test = frame.randomSplit([0.75, 0.25], seed=0)
        assembler = VectorAssembler(inputCols=columns, outputCol="features")
        train_assembled = assembler.transform(train).select("features", "label").cache()
        test_assembled = assembler.transform(test).select("features", "label").cache()
        n_train = train_assembled.count()
        test_assembled.count()
        accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate
        params = dict(hiddenLayerSizes=hidden, pretrainEpochs=args.pretrain_epochs,
                      maxIter=args.max_iter, nIterNoChange=args.max_iter + 1,
                      numWorkers=args.workers, seed=0)

        def fit_stage():
            return Pipeline(stages=[DBNClassifier(**params)]).fit(train_assembled)

        def fit_plain():
            return DistributedDBN(
                hidden_layer_sizes=tuple(hidden), pretrain_epochs=args.pretrain_epochs,
                max_iter=args.max_iter, n_iter_no_change=args.max_iter + 1,
                n_workers=args.workers, random_state=0).fit(train_assembled)

        DistributedDBN(hidden_layer_sizes=(8,), pretrain_epochs=1, max_iter=1,
                       n_workers=args.workers).fit(train_assembled)  # start Python workers
        stage_runs, plain_runs = [], []
        for _ in range(args.repeats):  # alternating, on the same cached DataFrame
            stage_runs.append(timed(fit_stage))
            plain_runs.append(timed(fit_plain))
        stage_s = float(np.median([s for _, s in stage_runs]))
        plain_s = float(np.median([s for _, s in plain_runs]))
        stage, plain = stage_runs[0][0], plain_runs[0][0]
        stage_accuracy = accuracy(stage.transform(test_assembled))
        plain_accuracy = plain.score(test_assembled)
        # The whole pipeline from the raw columns, as a user runs it (assembler included).
        full, full_s = timed(lambda: Pipeline(stages=[assembler, DBNClassifier(**params)])
                             .fit(train))
        full_accuracy = accuracy(full.transform(test))
        layers = [X.shape[1], *hidden, 10]
        mlp, mlp_s = timed(lambda: MultilayerPerceptronClassifier(
            layers=layers, maxIter=args.mlp_iters, seed=0).fit(train_assembled))
        mlp_accuracy = accuracy(mlp.transform(test_assembled))
        equal_iters = max(1, int(args.mlp_iters * stage_s / mlp_s))
        mlp_equal, mlp_equal_s = timed(lambda: MultilayerPerceptronClassifier(
            layers=layers, maxIter=equal_iters, seed=0).fit(train_assembled))
        mlp_equal_accuracy = accuracy(mlp_equal.transform(test_assembled))
    finally:
        spark.stop()

    print(f"machine: {platform.machine()}, Python {platform.python_version()}; "
          f"local[{args.workers}], {n_train} training rows, hidden layers {hidden}")
    print("| model | fit time | test accuracy |")
    print("|---|---|---|")
    print(f"| DBNClassifier in a Pipeline ({args.pretrain_epochs} + {args.max_iter} epochs), "
          f"median of {args.repeats} | {stage_s:.1f} s | {stage_accuracy:.4f} |")
    print(f"| DistributedDBN on the same DataFrame, median of {args.repeats} | "
          f"{plain_s:.1f} s | {plain_accuracy:.4f} |")
    print(f"| VectorAssembler + DBNClassifier from the raw columns | {full_s:.1f} s | "
          f"{full_accuracy:.4f} |")
    print(f"| MultilayerPerceptronClassifier, maxIter={args.mlp_iters} | {mlp_s:.1f} s | "
          f"{mlp_accuracy:.4f} |")
    print(f"| MultilayerPerceptronClassifier, maxIter={equal_iters} (the stage's time) | "
          f"{mlp_equal_s:.1f} s | {mlp_equal_accuracy:.4f} |")
    print(f"stage time / plain estimator time: {stage_s / plain_s:.2f}x (target <= 1.10x)")


if __name__ == "__main__":
    main()
