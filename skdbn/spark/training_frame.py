"""A Spark DataFrame prepared for a fit: the only code that prepares a DataFrame for training.

``prepare_training_frame`` checks the label column, leaves invalid rows out
(``handle_invalid``), chooses the workers, and reads the features once: a statistics pass
(count, per-feature moments and extremes, labels) that, when every task runs on this machine,
writes each row into its worker's shard file on the way. From the statistics it learns the
input (visible units, standardisation, classes), then deals the rows to the workers: the
shard files are completed with their labels, or the dealt rows become a DataFrame that the
engine caches. A DataFrame small enough for one worker is read into this process instead. The
result is the same ``TrainingData`` that arrays become (``_inputs``).

With ``early_stopping``, a stratified ``validation_fraction`` of the labelled rows is held out
before the statistics pass: chosen on the executors (``held_out``), and only those rows are
read into this process, where the schedule scores the network on them as it does for arrays.
The training shards never hold them. A DataFrame read into this process is split as arrays
are.
"""

import dataclasses
from dataclasses import dataclass
from functools import partial

import numpy as np
from sklearn.utils.multiclass import check_classification_targets

from .._checkpoint import frame_fingerprint
from .._engines import plan_workers, resolve_backend, trains_in_driver_process
from .._inputs import (
    BERNOULLI_RANGE_MESSAGE,
    TrainingData,
    arrays_data,
    classes_for_fit,
    dtype_setting,
    frame_dtype,
    split_validation,
    standardization,
    visible_units_of_range,
)
from .._rbm import BERNOULLI
from .._scratch import new_scratch_dirs, remove_tree
from .data import (
    _WORKER,
    FEATURES,
    LABEL,
    POSITION,
    ShardLayout,
    combined_summary,
    dealt_rows,
    feature_column,
    label_column,
    matrix_of,
    merged_summary,
    partition_statistics_task,
    statistics_of,
    statistics_schema,
    training_columns,
    valid_features,
)
from .held_out import hold_out
from .shards import (
    ShardPlan,
    count_rows_task,
    publish_shard,
    read_state,
    write_label_shards,
    write_shards_task,
)


@dataclass
class DealtFrame:
    """A DataFrame dealt to its workers: the ``layout`` of their shards, and either the
    dealt rows for the engine to cache (``source``) or, with ``source`` None, complete shard
    files in ``layout.shard_dir``; ``close()`` removes the ``scratch_dirs`` that hold them."""

    layout: ShardLayout
    source: object = None
    scratch_dirs: tuple = ()

    def close(self):
        """Remove the shard files (the engine that mapped them is closed)."""
        self.scratch_dirs = _removed(self.scratch_dirs)


def _removed(directories):
    """Remove ``directories`` and what they hold; ``()``, what is left of them."""
    for directory in directories:
        remove_tree(directory)
    return ()


@dataclass(frozen=True)
class _Input:
    """What the statistics pass teaches a fit about its input."""

    visible_units: str
    mean: np.ndarray | None
    scale: np.ndarray | None
    classes: np.ndarray | None


def prepare_training_frame(df, y, settings, warm, seed=0):
    """The ``TrainingData`` of ``fit(df)``; ``warm`` is the ``WarmStart`` of a warm-start fit
    (else None), ``seed`` draws the validation share of early stopping.

    A DataFrame left on the cluster comes back dealt to its workers (``data.frame``,
    ``data.workers``); use the result as a context manager, so that its shard files are
    removed when the fit ends.
    """
    _check_fit_arguments(y, settings)
    label_col = label_column(df, settings.label_col, "fit")
    dtype = frame_dtype(dtype_setting(settings.dtype, warm))
    if settings.handle_invalid != "error":
        df = df.filter(_valid_training_rows(df, settings.features_col, label_col, dtype))
    # As for arrays, unlabelled data has no validation score: nothing is held out.
    holds_out = settings.early_stopping and label_col is not None
    workers, counts = _choose_workers(df, settings)
    if workers is None:
        return _read_here(df, settings, warm, label_col, dtype, seed if holds_out else None)
    validation = None
    if holds_out:
        df, validation = _held_out(df, settings, label_col, dtype, seed)
        counts = None  # counted with the held-out rows
    dirs = new_scratch_dirs() if workers.placement.shard_files else ()
    try:
        summary, plan = _statistics_pass(df, settings, label_col, dtype, workers, counts,
                                         dirs)
        if plan is None:  # no shard files, or no room for them: the rows are cached
            dirs = _removed(dirs)
        # The input is learned from every row, the held-out ones too, as for arrays.
        whole = summary if validation is None else combined_summary(summary, validation[0])
        learned = _learned_input(whole, settings, warm, label_col)
        layout, source = _dealt(df, settings, label_col, summary, learned, plan,
                                workers.n_workers)
        scored = None if validation is None else (
            validation[1], np.searchsorted(learned.classes, validation[2]))
        return _as_training_data(summary, learned, settings, warm, workers=workers,
                                 frame=DealtFrame(layout, source, dirs), validation=scored)
    except BaseException:
        _removed(dirs)
        raise


def _read_here(df, settings, warm, label_col, dtype, seed):
    """The ``TrainingData`` of a DataFrame read into this process; with a ``seed``, a
    validation share split off as arrays split it."""
    summary, X, labels = read_dataframe(df, settings.features_col, label_col, dtype)
    learned = _learned_input(summary, settings, warm, label_col)
    if seed is None:
        codes = None if labels is None else np.searchsorted(learned.classes, labels)
        return _as_training_data(summary, learned, settings, warm, X=X, codes=codes)
    X, labels, validation = split_validation(X, labels, learned.classes, seed, settings)
    return arrays_data(X, labels, learned.classes, learned.visible_units, learned.mean,
                       learned.scale, validation=validation,
                       checkpoint_key=_checkpoint_key(summary, learned, settings, warm))


def _held_out(df, settings, label_col, dtype, seed):
    """``(training, (summary, X_val, labels_val))``: the rows of ``df`` left to train on,
    and the validation share held out on the executors, read into this process."""
    split = hold_out(df, settings.features_col, label_col, dtype,
                     settings.validation_fraction, seed)
    return split.training, read_dataframe(split.validation, settings.features_col,
                                          label_col, dtype)


def _check_fit_arguments(y, settings):
    if y is not None:
        raise ValueError(
            "with a Spark DataFrame the labels are a column of it (label_col="
            f"{settings.label_col!r}); do not pass y"
        )


def _valid_training_rows(df, features_col, label_col, dtype):
    """A boolean Spark column: the row's features are valid in ``dtype`` (a double beyond
    float32's range is not), and its label is not null (nor NaN)."""
    from pyspark.sql import functions, types

    features, _ = feature_column(df, features_col, dtype)
    valid = valid_features(features)
    if label_col is None:
        return valid
    label = df[label_col]
    valid = valid & label.isNotNull()
    if isinstance(df.schema[label_col].dataType, (types.FloatType, types.DoubleType)):
        valid = valid & ~functions.isnan(label)
    return valid


def _choose_workers(df, settings):
    """``(workers, counts)``: the ``WorkerPlan`` of a fit on the cluster, or None when the
    DataFrame is to be read into this process; the rows of each partition when they were
    counted (choosing the number of workers needs the row count, a cheap JVM-only job)."""
    backend = resolve_backend(settings.backend, dataframe_input=True, device=settings.device)
    counts = None
    if backend != "local" and settings.n_workers is None:
        counts = partition_rows(df)
    n_samples = 0 if counts is None else sum(counts.values())
    if trains_in_driver_process(backend, settings.n_workers, n_samples, settings.device):
        return None, counts
    return plan_workers(settings, n_samples, df), counts


def _statistics_pass(df, settings, label_col, dtype, workers, counts, dirs):
    """``(summary, plan)``: the ``FrameSummary`` of ``df`` from one pass over its features
    in ``dtype``,
    which, where the tasks share this machine's files, also writes the features into the
    workers' shard files of ``plan`` in ``dirs`` (None where they do not, or where there was
    no room: the engine caches the rows)."""
    features_col = settings.features_col
    if not workers.placement.shard_files:
        return summarize_dataframe(df, features_col, label_col, dtype), None
    counts = partition_rows(df) if counts is None else counts
    plan = ShardPlan(*dirs, counts, workers.n_workers, np.dtype(dtype).name)
    summary, features_dir = summarize_and_write(df, features_col, label_col, plan)
    if features_dir is None:  # no room: the tasks will read cached partitions
        return summary, None
    return summary, dataclasses.replace(plan, features_dir=features_dir)


def _learned_input(summary, settings, warm, label_col):
    """The visible units, standardisation and classes of the summarised data (a warm
    start's own where it continues a model)."""
    if warm is not None:
        if summary.n_features != warm.n_features:
            raise ValueError(
                f"X has {summary.n_features} features, but DistributedDBN is expecting "
                f"{warm.n_features} features as input."
            )
        warm.check_layers(settings.hidden_sizes)
    classes = None
    if label_col is not None:
        check_classification_targets(summary.labels)
        classes = classes_for_fit(summary.labels, warm)
    if warm is not None:
        kind, mean, scale = warm.visible_units, warm.mean, warm.scale
    else:
        kind = visible_units_of_range(settings.visible_units, summary.minimum.min(),
                                      summary.maximum.max())
        mean, scale = None, None
        if kind != BERNOULLI:
            mean, scale = standardization(summary.mean, summary.variance, summary.dtype)
    if kind == BERNOULLI and (summary.minimum.min() < 0 or summary.maximum.max() > 1):
        raise ValueError(BERNOULLI_RANGE_MESSAGE)
    return _Input(kind, mean, scale, classes)


def _dealt(df, settings, label_col, summary, learned, plan, n_workers):
    """``(layout, source)``: the rows of ``df`` dealt to ``n_workers`` workers, as shard
    files completed with their labels where ``plan`` wrote the features (``source`` None),
    else as the dealt rows to cache."""
    layout = ShardLayout(
        rows=dealt_rows(summary.n_samples, n_workers), n_features=summary.n_features,
        dtype=np.dtype(summary.dtype).name, labelled=label_col is not None,
        mean=learned.mean, scale=learned.scale,
        shard_dir=None if plan is None else plan.features_dir)
    if plan is None:
        return layout, frame_from_dataframe(df, settings.features_col, label_col,
                                            learned.classes, summary, n_workers)
    if label_col is not None:
        write_label_shards(plan, learned.classes, layout)
    for rank in range(n_workers):
        publish_shard(rank, layout)
    return layout, None


def _as_training_data(summary, learned, settings, warm, **where):
    d = summary.n_features
    input_mean = summary.mean if learned.mean is None else np.zeros(d)
    return TrainingData(summary.n_samples, d, summary.dtype, input_mean.astype(summary.dtype),
                        learned.visible_units, learned.mean, learned.scale, learned.classes,
                        checkpoint_key=_checkpoint_key(summary, learned, settings, warm),
                        **where)


def _checkpoint_key(summary, learned, settings, warm):
    if settings.checkpoint_dir is None or warm is not None:
        return None
    return frame_fingerprint(settings.params(), summary, learned.classes)


# ---------------------------------------------------------------------------- the passes

def partition_rows(df):
    """Rows of each non-empty partition of ``df``, by partition id.

    Each task counts the rows of a one-byte column, so a file source reads no columns for
    it. (``spark_partition_id()`` in a plain projection would not do: Spark may evaluate
    projections of local data on the driver, where every row is in partition 0.)
    """
    from pyspark.sql import functions

    rows = (df.select(functions.lit(True).alias("row"))
            .mapInArrow(count_rows_task, "partition int, n_rows long")
            .toArrow().to_pydict())
    return dict(sorted(zip(rows["partition"], rows["n_rows"], strict=True)))


def summarize_dataframe(df, features_col, label_col, dtype=None):
    """Count, per-feature mean, variance and extremes, and the distinct labels, in one pass.

    Each partition is summarised on its executor from Arrow batches (a Spark job, no data
    comes to the driver but one row per partition), and the driver merges the partitions.
    Nulls, vectors of different lengths, NaN and infinity are refused with a clear error.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
    features_col : str or list of str
        As for :func:`~skdbn.spark.data.feature_column`.
    label_col : str or None
        Column of class labels; None for unlabelled data.
    dtype : {float32, float64} or None, default=None
        The dtype the features are read in (None: the column's own, as
        :func:`~skdbn.spark.data.feature_column` says).

    Returns
    -------
    summary : FrameSummary
    """
    columns, dtype, label_type = training_columns(df, features_col, label_col, dtype)
    task = partial(partition_statistics_task, label_type is not None)
    rows = (df.select(*columns).mapInArrow(task, statistics_schema(label_type))
            .toArrow().to_pylist())
    return merged_summary(rows, features_col, label_col, dtype)


def read_dataframe(df, features_col, label_col, dtype=None):
    """Read a DataFrame into this process in one pass, for fits small enough to train here
    (arguments as for :func:`summarize_dataframe`).

    Returns
    -------
    summary : FrameSummary
        As :func:`summarize_dataframe` gives it, with the same checks.
    X : ndarray of shape (n_samples, n_features)
        The features in their training dtype, rows in the DataFrame's order.
    labels : ndarray of shape (n_samples,) or None
        The labels as numpy values (None without ``label_col``).
    """
    columns, dtype, label_type = training_columns(df, features_col, label_col, dtype)
    table = df.select(*columns).toArrow()
    statistics = statistics_of(table.to_batches(), label_type is not None)
    if statistics is not None and label_type is not None:
        statistics["labels"] = statistics["labels"].to_pylist()
    summary = merged_summary([{"partition": 0, **statistics}] if statistics else [],
                              features_col, label_col, dtype)
    X = np.empty((summary.n_samples, summary.n_features), dtype=dtype)
    start = 0
    for chunk in table.column(FEATURES).chunks:  # chunk by chunk: 32-bit list offsets
        X[start:start + len(chunk)] = matrix_of(chunk, summary.n_features, dtype)
        start += len(chunk)
    labels = None
    if label_type is not None:
        labels = table.column(LABEL).to_numpy(zero_copy_only=False)
    return summary, X, labels


def summarize_and_write(df, features_col, label_col, plan):
    """Summarise ``df`` as :func:`summarize_dataframe` does and, in the same
    pass, write its features into the shard files of ``plan`` (in ``plan.dtype``).

    Returns
    -------
    summary : FrameSummary
    features_dir : str or None
        The directory of the features files when every row is in them; None when there was
        no room for them (any files are then incomplete and must be dropped).
    """
    columns, dtype, label_type = training_columns(df, features_col, label_col, plan.dtype)
    schema = statistics_schema(label_type, extra="written long")
    task = partial(write_shards_task, label_type is not None, plan)
    rows = df.select(*columns).mapInArrow(task, schema).toArrow().to_pylist()
    summary = merged_summary(rows, features_col, label_col, dtype)
    state = read_state(plan)
    # Other partitions than the count saw: adaptive execution may coalesce a shuffle's
    # output differently when other columns cross it, or the plan is not deterministic. The
    # rows are then not where the plan put them: the cached partitions take over (and refuse
    # a DataFrame that changes between reads).
    if (state is None or summary.partition_rows != plan.partition_rows
            or not all(row["written"] == row["n_rows"] for row in rows)):
        return summary, None
    return summary, state[1]


def frame_from_dataframe(df, features_col, label_col, classes, summary, n_workers):
    """A user's DataFrame as training rows with a worker and a shard position for every row.

    Rows are dealt to workers in turn in the order of the source partitions (so each worker
    gets ``n_samples / n_workers`` rows, give or take one): row ``g`` overall goes to worker
    ``g % n_workers`` at position ``g // n_workers``. Labels become class codes in the JVM,
    and the features the summary's dtype.
    """
    from pyspark.sql import functions

    features, _ = feature_column(df, features_col, summary.dtype)
    columns = [features.alias(FEATURES)]
    if label_col is not None:
        columns.append(label_codes(label_col, classes).alias(LABEL))
    partition = functions.spark_partition_id()
    counts = [summary.partition_rows.get(index, 0)
              for index in range(max(summary.partition_rows, default=0) + 1)]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
    first_row = functions.element_at(functions.array(*map(functions.lit, offsets)),
                                     partition + 1)
    position_in_partition = (functions.monotonically_increasing_id()
                             - functions.shiftleft(partition.cast("long"), 33))
    row = first_row.cast("long") + position_in_partition
    workers = functions.lit(n_workers)
    return df.select(*columns, functions.floor(row / workers).alias(POSITION),
                     functions.pmod(row, workers).cast("int").alias(_WORKER))


def label_codes(label_col, classes):
    """A column of each row's index into ``classes`` (-1 for a label not among them),
    computed in the JVM."""
    from pyspark.sql import functions

    known = functions.array(*[functions.lit(c) for c in np.asarray(classes).tolist()])
    return (functions.array_position(known, functions.col(label_col)) - 1).cast("int")
