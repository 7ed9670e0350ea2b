"""The validation share of early stopping on a Spark DataFrame, chosen on the executors.

Every labelled row gets a key, a 64-bit hash of the fit's seed, its label and its features
(``xxhash64``, computed in the JVM). Class ``c`` holds out the ``k_c`` rows of smallest key,
where the ``k_c`` are ``validation_fraction`` of the rows shared out among the classes in
proportion to their sizes (``validation_counts``). Two small jobs find them: one counts the
rows of each class (a group-by on the label), one finds each class's ``k_c``-th smallest key
(a window ranked by key, which Spark cuts to the first ``k_c`` rows of each class in every
task before the shuffle, so only labels and keys cross it, at most ``k_c`` of a class per
partition, and each class's are ranked in one task). A row is held out when its key is at most its
class's threshold: a plain Spark expression, so the training rows never leave the executors,
and the same rows are chosen on every read, whatever the partitioning. The same seed gives the
same split.

Identical rows (same features and label) share a key, so they fall on the same side: a class
holds out exactly ``k_c`` rows unless such duplicates meet at its threshold, when it holds
them all out.
"""

from dataclasses import dataclass

import numpy as np

from .data import LABEL, feature_column

_KEY = "_skdbn_key"
_RANK = "_skdbn_rank"


@dataclass(frozen=True)
class HeldOut:
    """A DataFrame split for early stopping.

    Attributes
    ----------
    training : pyspark.sql.DataFrame
        The rows left to train on (every row that is not held out, those with a null or NaN
        label too, so that the statistics pass reports them as for any fit).
    validation : pyspark.sql.DataFrame
        The rows held out, in the source DataFrame's columns.
    counts : dict
        Rows held out of each class, by label.
    """

    training: object
    validation: object
    counts: dict


def hold_out(df, features_col, label_col, dtype, fraction, seed):
    """Split ``df`` into the rows to train on and a stratified ``fraction`` held out.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        Labelled rows (invalid ones already left out where ``handle_invalid`` says so).
    features_col : str or list of str
        As for :func:`~skdbn.spark.data.feature_column`.
    label_col : str
        Column of class labels.
    dtype : {float32, float64}
        The dtype the fit reads the features in (the keys hash them in it).
    fraction : float
        Share of the labelled rows held out, in (0, 1).
    seed : int
        Seed of the keys and of the rounding of the classes' shares.

    Returns
    -------
    held_out : HeldOut
    """
    from pyspark.sql import functions

    labels, sizes = _class_sizes(df, label_col)
    wanted = validation_counts(labels, sizes, fraction, seed)
    features, _ = feature_column(df, features_col, dtype)
    label = functions.col(label_col)
    key = functions.xxhash64(functions.lit(int(seed)), label, features)
    kind = df.schema[label_col].dataType
    thresholds, counts = _thresholds(df, label, key, labels, wanted, kind)
    if thresholds:
        threshold = functions.element_at(_literal_map(thresholds.items(), kind), label)
        # A label with no threshold (null, NaN, or a class that holds out nothing) trains.
        chosen = functions.coalesce(key <= threshold, functions.lit(False))
    else:
        chosen = functions.lit(False)
    return HeldOut(df.filter(~chosen), df.filter(chosen), counts)


def validation_counts(labels, sizes, fraction, seed):
    """Rows each class holds out: ``ceil(fraction * n)`` rows in all, shared out as
    ``train_test_split(stratify=y)`` does (each class its proportional share rounded down,
    the rows left over to the classes with the largest remainders, ties drawn with
    ``seed``); checked as it checks them.

    Parameters
    ----------
    labels : sequence
        The classes (for the messages).
    sizes : ndarray of int
        Rows of each class.
    fraction : float
        Share held out.
    seed : int
        Breaks ties between equal remainders.

    Returns
    -------
    counts : ndarray of int
        Rows held out of each class.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    n = int(sizes.sum())
    too_few = [label for label, size in zip(labels, sizes, strict=True) if size < 2]
    if too_few:
        raise ValueError(
            f"early_stopping holds out a share of every class, but classes {too_few} have "
            "only 1 row; every class needs at least 2 (or set early_stopping=False)")
    n_held = int(np.ceil(fraction * n))
    if n_held < 2:
        raise ValueError(
            f"early_stopping needs at least 2 validation samples; validation_fraction="
            f"{fraction} of {n} samples gives {n_held}")
    for part, rows in (("validation", n_held), ("training", n - n_held)):
        if rows < len(sizes):
            raise ValueError(
                f"validation_fraction={fraction} leaves {rows} {part} rows of {n}, fewer than "
                f"the {len(sizes)} classes; a stratified split needs one of each")
    share = sizes * (n_held / n)
    counts = np.floor(share).astype(np.int64)
    remainder = share - counts
    # Largest remainders first; among equal ones, a seeded draw decides.
    order = np.lexsort((np.random.default_rng([int(seed), 4]).random(len(sizes)), -remainder))
    counts[order[:n_held - int(counts.sum())]] += 1
    return counts


def _class_sizes(df, label_col):
    """``(labels, sizes)``: each class and its rows (nulls and NaN are no class: the
    statistics pass refuses them)."""
    from pyspark.sql import functions, types

    label = functions.col(label_col)
    known = label.isNotNull()
    if isinstance(df.schema[label_col].dataType, (types.FloatType, types.DoubleType)):
        known = known & ~functions.isnan(label)
    table = (df.filter(known).groupBy(label.alias(LABEL)).count().toArrow()
             .sort_by(LABEL).to_pydict())
    return table[LABEL], np.asarray(table["count"], dtype=np.int64)


def _thresholds(df, label, key, labels, wanted, kind):
    """``(thresholds, counts)``: by label, the largest key a class holds out and the rows
    it holds out (classes that hold out none are in neither)."""
    from pyspark.sql import Window, functions

    holding = [(c, int(k)) for c, k in zip(labels, wanted, strict=True) if k > 0]
    if not holding:
        return {}, {}
    limits = _literal_map(holding, kind)
    rank = functions.rank().over(Window.partitionBy(LABEL).orderBy(_KEY))
    rows = (df.select(label.alias(LABEL), key.alias(_KEY))
            .withColumn(_RANK, rank)
            # A literal bound lets Spark keep only each class's first rows in every task.
            .filter(functions.col(_RANK) <= max(k for _, k in holding))
            .filter(functions.col(_RANK) <= functions.element_at(limits, functions.col(LABEL)))
            .groupBy(LABEL)
            .agg(functions.max(_KEY).alias("threshold"), functions.count("*").alias("rows"))
            .toArrow().to_pylist())
    return ({row[LABEL]: row["threshold"] for row in rows},
            {row[LABEL]: row["rows"] for row in rows})


def _literal_map(pairs, kind):
    """A map column of ``(label, value)`` pairs, its keys of the label column's type
    ``kind`` (so that a lookup by the column finds them)."""
    from pyspark.sql import functions

    return functions.create_map(*[item for label, value in pairs
                                  for item in (functions.lit(label).cast(kind),
                                               functions.lit(value).cast("long"))])
