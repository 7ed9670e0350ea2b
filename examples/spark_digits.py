"""
Digits on Spark from a DataFrame, classic or Connect
====================================================

Trains a DBN on Spark with two gossiping workers, from a Spark DataFrame, and scores it there.

Starts a local Spark session bound to 127.0.0.1 (or uses ``--master``; ``--connect`` starts a
local Spark Connect server and runs everything through a Connect client), puts scikit-learn's
bundled digits into DataFrames with a pyspark.ml vector column, fits ``DistributedDBN`` with
two barrier tasks that synchronise by gossip, adds predictions on the executors, and prints the
test accuracy next to that of one in-process worker with the same settings.

Run: ``python examples/spark_digits.py`` (about 20 seconds on 2 cores; ``--connect`` about 25).
The documentation shows this script without running it.
"""

import argparse
import time

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skdbn import DistributedDBN, loopback_session


def digits_frames(spark):
    """The stratified 75/25 digits split, scaled to [0, 1], as DataFrames and arrays."""
    import pandas as pd
    from pyspark.ml.functions import array_to_vector

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X / 16.0, y, test_size=0.25, random_state=0, stratify=y)

    def frame(X, y):
        # Through Arrow from pandas, then to pyspark.ml vectors in the JVM: no Python rows.
        data = spark.createDataFrame(pd.DataFrame({"features": list(X), "label": y}))
        return data.withColumn("features", array_to_vector("features"))

    return frame(X_train, y_train), frame(X_test, y_test), (X_train, X_test, y_train, y_test)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--master", default="local[2]", help="Spark master (local[2])")
    parser.add_argument("--workers", type=int, default=2, help="barrier tasks (2)")
    parser.add_argument("--connect", action="store_true",
                        help="use a Spark Connect session (needs the connect extra)")
    args = parser.parse_args()

    spark = loopback_session(args.master, app_name="skdbn-spark-digits", connect=args.connect)
    try:
        train, test, (X_train, X_test, y_train, y_test) = digits_frames(spark)
        settings = dict(hidden_layer_sizes=(256, 256), pretrain_epochs=20, max_iter=100,
                        random_state=0)

        start = time.perf_counter()
        dbn = DistributedDBN(n_workers=args.workers, sync="gossip", **settings).fit(train)
        seconds = time.perf_counter() - start
        scored = dbn.predict(test)  # a "prediction" column, computed on the executors
        print(scored.select("label", "prediction").toPandas().head().to_string(index=False))
        kind = "Spark Connect" if args.connect else "Spark"
        print(f"{kind}, {dbn.n_workers_} workers, gossip: test accuracy "
              f"{dbn.score(test):.4f} (fit {seconds:.1f} s, {dbn.n_iter_} fine-tuning epochs)")

        single = DistributedDBN(backend="local", **settings).fit(X_train, y_train)
        print(f"one in-process worker:       test accuracy {single.score(X_test, y_test):.4f}")
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
