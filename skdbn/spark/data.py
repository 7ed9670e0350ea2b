"""DataFrame data in and out: feature columns, statistics of Arrow batches, training
partitions, inference.

The tools that ``training_frame`` (a DataFrame prepared for a fit) and the engine use. Data
crosses between the JVM and Python only as Arrow record batches, and is read into numpy
through the batches' value buffers, never through per-row Python objects. ``read_shard`` and
the functions whose name ends in ``_task`` run on the executors; the others on the driver
(the client, for a Spark Connect session).
"""

import dataclasses
from dataclasses import dataclass
from functools import reduce

import numpy as np

from .._phase import Shard

# Column names inside the training DataFrame.
FEATURES = "features"
LABEL = "label"
POSITION = "_skdbn_position"  # the row's place in its worker's shard
_WORKER = "_skdbn_worker"

# Bytes of X per DataFrame built from numpy input: the driver holds one such chunk beyond X.
# Spark Connect uploads a chunk at least this large as a cached artifact instead of inlining it
# in every query's plan, so on Connect a chunk is never smaller than that threshold.
ARRAY_CHUNK_BYTES = 64 << 20
_CONNECT_CACHE_THRESHOLD = "spark.sql.session.localRelationCacheThreshold"
_SKIP_HINT = "handle_invalid='skip' to leave such rows out"


# ---------------------------------------------------------------------------- feature columns

def feature_column(df, features_col, dtype=None):
    """The features of ``df`` as one ``array<float|double>`` column, converted in the JVM.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
    features_col : str or list of str
        A pyspark.ml vector column (dense or sparse), an array column of numbers, or a list of
        numeric columns.
    dtype : {float32, float64} or None, default=None
        The dtype wanted; None: the column's own (see ``dtype`` below). Conversion happens
        in the JVM, so a float32 column of doubles crosses into Python at half the bytes.

    Returns
    -------
    column : pyspark.sql.Column
        Array of the features, one element per feature.
    dtype : numpy.dtype
        ``dtype`` when given, else float32 for ``array<float>`` or all-float columns and
        float64 otherwise (vectors hold doubles).
    """
    from pyspark.sql import functions, types

    names = [features_col] if isinstance(features_col, str) else list(features_col)
    missing = [name for name in names if name not in df.columns]
    if not names or missing:
        raise ValueError(f"the DataFrame has no column {(missing or [''])[0]!r} "
                         f"(features_col); its columns are {df.columns}")
    if isinstance(features_col, str):
        kind = df.schema[features_col].dataType
        if type(kind).__name__ == "VectorUDT":
            from pyspark.ml.functions import vector_to_array

            dtype = np.dtype(np.float64 if dtype is None else dtype)
            return vector_to_array(functions.col(features_col), dtype.name), dtype
        if isinstance(kind, types.ArrayType) and isinstance(kind.elementType, types.NumericType):
            return _array_of(functions.col(features_col), kind.elementType, dtype)
        raise TypeError(
            f"column {features_col!r} (features_col) is {kind.simpleString()}; it must be a "
            "pyspark.ml vector, an array of numbers, or features_col must list numeric columns"
        )
    kinds = [df.schema[name].dataType for name in names]
    bad = [n for n, k in zip(names, kinds, strict=True) if not isinstance(k, types.NumericType)]
    if bad:
        raise TypeError(f"features_col lists column {bad[0]!r}, which is not numeric")
    if dtype is None:
        single = all(isinstance(k, types.FloatType) for k in kinds)
        dtype = np.float32 if single else np.float64
    dtype = np.dtype(dtype)
    element = types.FloatType() if dtype == np.float32 else types.DoubleType()
    column = functions.array(*[functions.col(name).cast(element) for name in names])
    return column, dtype


def _array_of(column, element_type, dtype):
    from pyspark.sql import types

    if dtype is None:
        dtype = np.float32 if isinstance(element_type, types.FloatType) else np.float64
    dtype = np.dtype(dtype)
    if isinstance(element_type, types.FloatType) and dtype == np.float32:
        return column, dtype
    return column.cast("array<float>" if dtype == np.float32 else "array<double>"), dtype


def matrix_of(array, n_features, dtype):
    """An Arrow list array of feature vectors as an ``(n_rows, n_features)`` numpy array.

    The values buffer is viewed, not copied, when it already has ``dtype``; no Python object
    is made per row.
    """
    if array.null_count:
        raise ValueError(f"the features hold {array.null_count} null rows; drop or fill them")
    values = array.flatten()  # respects the array's offset and slicing
    if len(values) != len(array) * n_features:
        raise ValueError(f"feature vectors must all have {n_features} values")
    if values.null_count:
        raise ValueError("the feature vectors hold null values; drop or fill them")
    matrix = values.to_numpy(zero_copy_only=False).reshape(len(array), n_features)
    return matrix.astype(dtype, copy=False)


def arrow_rows(matrix):
    """A 2-D numpy array as an Arrow binary array of its rows' little-endian bytes.

    Numpy input sent to a cluster travels and is cached this way: one fixed-width binary value
    per row moves between the JVM and Python as a memory copy, where an array column is
    written and read value by value.
    """
    import pyarrow as pa

    matrix = np.ascontiguousarray(matrix, dtype=matrix.dtype.newbyteorder("<"))
    width = matrix.shape[1] * matrix.itemsize
    offsets = (np.arange(matrix.shape[0] + 1, dtype=np.int64) * width).astype(np.int32)
    return pa.Array.from_buffers(pa.binary(), matrix.shape[0],
                                 [None, pa.py_buffer(offsets), pa.py_buffer(matrix)])


def matrix_of_rows(array, n_features, dtype):
    """An Arrow binary array made by :func:`arrow_rows` as an ``(n_rows, n_features)`` view."""
    import pyarrow as pa

    dtype = np.dtype(dtype).newbyteorder("<")
    if len(array) == 0:
        return np.empty((0, n_features), dtype=dtype)
    if array.null_count:
        raise ValueError("the training partition holds null rows")
    offset_type = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    _, offsets, data = array.buffers()
    offsets = np.frombuffer(offsets, offset_type)[array.offset:array.offset + len(array) + 1]
    if np.any(np.diff(offsets) != n_features * dtype.itemsize):
        raise ValueError(f"a training row does not hold {n_features} {dtype.name} values")
    values = np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]]
    return values.view(dtype).reshape(len(array), n_features)


def arrow_matrix(matrix):
    """A 2-D numpy array as an Arrow list array (one list per row), sharing its values."""
    import pyarrow as pa

    matrix = np.ascontiguousarray(matrix)
    n_rows, width = matrix.shape
    offsets = pa.array((np.arange(n_rows + 1, dtype=np.int64) * width).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1)))


# ---------------------------------------------------------------------------- statistics

@dataclass
class FrameSummary:
    """What one pass over a DataFrame learns: sizes, per-feature moments and extremes, labels.

    ``partition_rows`` maps each non-empty source partition to its row count, in partition
    order; the training split uses it to deal rows to workers in turn.
    """

    n_samples: int
    n_features: int
    dtype: np.dtype
    mean: np.ndarray
    variance: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    labels: np.ndarray | None
    partition_rows: dict


def label_column(df, label_col, purpose):
    """``label_col`` when ``df`` has that column (None stays None), else a ValueError that
    says what to do for ``purpose`` ("fit" or "score")."""
    if label_col is None:
        return None
    if label_col not in df.columns:
        advice = ("name the labels' column, or set label_col=None to pretrain without "
                  "labels" if purpose == "fit" else "score needs labels: name their column")
        raise ValueError(
            f"label_col {label_col!r} is not a column of the DataFrame (its columns: "
            f"{', '.join(df.columns)}); {advice}"
        )
    return label_col


def training_columns(df, features_col, label_col, dtype):
    """The features (and labels) as the columns ``FEATURES`` (and ``LABEL``), the features'
    training dtype (``dtype``), and the label column's Spark type name (None without
    labels)."""
    from pyspark.sql import types

    features, dtype = feature_column(df, features_col, dtype)
    columns = [features.alias(FEATURES)]
    label_type = None
    if label_col is not None:
        kind = df.schema[label_col].dataType
        label_type = kind.simpleString()
        if not isinstance(kind, (types.IntegralType, types.FloatType, types.DoubleType,
                                 types.StringType, types.BooleanType)):
            raise TypeError(f"column {label_col!r} (label_col) is {label_type}; class labels "
                            "must be numbers, strings or booleans")
        columns.append(df[label_col].alias(LABEL))
    return columns, dtype, label_type


def statistics_schema(label_type, extra=""):
    """Spark schema of the rows that ``statistics_batch`` makes; ``extra`` columns (e.g.
    ``"written long"``) come right after the partition id."""
    return ("partition int, " + (f"{extra}, " if extra else "")
            + "n_rows long, n_features int, null_rows long, bad_lengths long, "
            "null_values long, null_labels long, mean binary, m2 binary, minimum binary, "
            "maximum binary" + (f", labels array<{label_type}>" if label_type else ""))


def struct_schema(columns):
    """The ``StructType`` of ``(name, kind)`` columns (kinds: int, long, double, binary,
    string); a DDL string would be parsed by the JVM each time a stage is built."""
    from pyspark.sql import types

    kinds = {"int": types.IntegerType, "long": types.LongType, "double": types.DoubleType,
             "binary": types.BinaryType, "string": types.StringType}
    return types.StructType([types.StructField(name, kinds[kind]()) for name, kind in columns])


def dealt_rows(n_samples, n_workers):
    """Rows of each worker's shard when ``n_samples`` rows are dealt to workers in turn."""
    return tuple(n_samples // n_workers + (rank < n_samples % n_workers)
                 for rank in range(n_workers))


def partition_statistics_task(labelled, batches):
    """The statistics of one partition's batches as one row (runs on an executor)."""
    from pyspark import TaskContext

    statistics = statistics_of(batches, labelled)
    if statistics is not None:  # else an empty partition
        yield statistics_batch({"partition": TaskContext.get().partitionId(), **statistics})


def statistics_batch(statistics):
    """A partition's statistics (with its ``partition`` id first) as a one-row Arrow batch.

    mapInArrow matches columns to the schema by position, so the dict's order is the
    schema's; integer figures beyond the schema's are int64 columns.
    """
    import pyarrow as pa

    types = {"partition": pa.int32(), "n_features": pa.int32(), "mean": pa.binary(),
             "m2": pa.binary(), "minimum": pa.binary(), "maximum": pa.binary()}
    columns = {}
    for name, value in statistics.items():
        if name == "labels":
            columns[name] = pa.ListArray.from_arrays(pa.array([0, len(value)], pa.int32()),
                                                     value)
        else:
            columns[name] = pa.array([value], types.get(name, pa.int64()))
    return pa.RecordBatch.from_pydict(columns)


def statistics_of(batches, labelled):
    """Counts, moments and distinct labels of batches of ``FEATURES`` (and ``LABEL``), as a
    dict of plain values (None for no rows at all)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    moments = _Moments()
    counts = {"null_rows": 0, "bad_lengths": 0, "null_values": 0, "null_labels": 0}
    labels = []
    n_features = -1
    for batch in batches:
        column = batch.column(0)
        counts["null_rows"] += column.null_count
        if labelled:
            counts["null_labels"] += batch.column(1).null_count
            labels.append(pc.unique(batch.column(1).drop_null()))
        column = column.drop_null()
        if len(column) == 0:
            continue
        lengths = pc.list_value_length(column).to_numpy()
        n_features = int(lengths[0]) if n_features < 0 else n_features
        bad = int(np.count_nonzero(lengths != n_features))
        values = column.flatten()
        counts["bad_lengths"] += bad
        counts["null_values"] += values.null_count
        if bad or values.null_count:
            continue  # refused on the driver; the figures no longer matter
        moments.add(values.to_numpy(zero_copy_only=False).reshape(len(column), n_features))
    if not labels and moments.n == 0 and not any(counts.values()):
        return None
    statistics = {"n_rows": moments.n, "n_features": n_features, **counts,
                  **moments.as_bytes()}
    if labelled:
        statistics["labels"] = pc.unique(pa.concat_arrays(labels))
    return statistics


class _Moments:
    """Count, mean, sum of squared deviations and extremes, merged batch by batch (Chan et
    al.'s update, which stays accurate where sums of squares cancel)."""

    def __init__(self):
        self.n = 0
        self.mean = self.m2 = self.minimum = self.maximum = None
        self._scratch = None  # reused between batches: fresh temporaries cost page faults

    def add(self, X):
        with np.errstate(over="ignore", invalid="ignore"):  # overflow: refused by the caller
            self._add(X)

    def _add(self, X):
        n = X.shape[0]
        # Sums accumulate in float64 without a float64 copy of a float32 batch. Deviations are
        # taken from the batch mean (rounded to X's dtype), and the small remaining offset is
        # corrected exactly, so a large common offset does not cancel the variance away.
        mean = X.sum(axis=0, dtype=np.float64) / n
        if self._scratch is None or self._scratch.shape[0] < n or self._scratch.dtype != X.dtype:
            self._scratch = np.empty_like(X)
        centered = np.subtract(X, mean.astype(X.dtype), out=self._scratch[:n])
        residual = centered.sum(axis=0, dtype=np.float64) / n
        m2 = np.einsum("ij,ij->j", centered, centered, dtype=np.float64) - n * residual**2
        self.merge(n, mean, np.maximum(m2, 0.0), X.min(axis=0).astype(np.float64),
                   X.max(axis=0).astype(np.float64))

    def merge(self, n, mean, m2, minimum, maximum):
        with np.errstate(over="ignore", invalid="ignore"):  # overflow: refused by the caller
            self._merge(n, mean, m2, minimum, maximum)

    def _merge(self, n, mean, m2, minimum, maximum):
        if self.mean is None:
            self.n = n
            self.mean, self.m2, self.minimum, self.maximum = mean, m2, minimum, maximum
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.n * n / total)
        self.minimum = np.minimum(self.minimum, minimum)
        self.maximum = np.maximum(self.maximum, maximum)
        self.n = total

    def as_bytes(self):
        names = ("mean", "m2", "minimum", "maximum")
        if self.mean is None:
            return {name: b"" for name in names}
        return {name: np.asarray(getattr(self, name), "<f8").tobytes() for name in names}


def merged_summary(rows, features_col, label_col, dtype):
    rows = sorted(rows, key=lambda row: row["partition"])
    widths = {row["n_features"] for row in rows if row["n_features"] >= 0}
    _check_rows(rows, widths, features_col, label_col)
    n_features = widths.pop()
    parts = [(row["n_rows"], *(np.frombuffer(row[name], "<f8")
                               for name in ("mean", "m2", "minimum", "maximum")))
             for row in rows if row["mean"]]
    if not all(np.isfinite(low).all() and np.isfinite(high).all()
               for *_, low, high in parts):
        beyond = ""
        if np.dtype(dtype) == np.float32:
            beyond = (" (or doubles beyond float32's range, about 3.4e38, which become "
                      "infinity in float32, the dtype this fit trains in: set dtype='float64' "
                      "for such values)")
        raise ValueError(f"column {features_col!r} (features_col) holds NaN or infinity"
                         f"{beyond}; drop or fix those rows, or set {_SKIP_HINT}")
    moments = _Moments()
    for part in parts:
        moments.merge(*part)
    labels = None
    if label_col is not None:
        labels = np.unique(np.concatenate([np.asarray(row["labels"]) for row in rows
                                           if len(row["labels"])]))
    return FrameSummary(
        n_samples=moments.n, n_features=n_features, dtype=dtype, mean=moments.mean,
        variance=moments.m2 / moments.n, minimum=moments.minimum, maximum=moments.maximum,
        labels=labels, partition_rows={row["partition"]: row["n_rows"] for row in rows},
    )


def combined_summary(summary, other):
    """The figures of two disjoint sets of rows, ``summary`` and ``other``, together (sizes,
    moments, extremes, labels); the partitions are ``summary``'s, the ones that train.

    ``other`` must have ``summary``'s features (a vector width of another set of rows is
    refused as one pass over both would refuse it).
    """
    if other.n_features != summary.n_features:
        raise ValueError("feature vectors of different lengths; every row needs the same "
                         "number of features")
    moments = _Moments()
    for part in (summary, other):
        moments.merge(part.n_samples, part.mean, part.variance * part.n_samples,
                      part.minimum, part.maximum)
    labels = summary.labels
    if labels is not None:
        labels = np.union1d(labels, other.labels)
    return dataclasses.replace(summary, n_samples=moments.n, mean=moments.mean,
                               variance=moments.m2 / moments.n, minimum=moments.minimum,
                               maximum=moments.maximum, labels=labels)


def _check_rows(rows, widths, features_col, label_col):
    def total(name):
        return sum(row[name] for row in rows)

    if total("null_rows"):
        raise ValueError(f"column {features_col!r} (features_col) has {total('null_rows')} "
                         f"null rows; drop or fill them, or set {_SKIP_HINT}")
    if total("null_values"):
        raise ValueError(f"column {features_col!r} (features_col) holds null values; "
                         f"drop or fill them, or set {_SKIP_HINT}")
    if total("bad_lengths") or len(widths) > 1:
        raise ValueError(f"feature vectors of different lengths in column {features_col!r}; "
                         "every row needs the same number of features")
    if total("n_rows") == 0:
        raise ValueError("Found array with 0 sample(s) while a minimum of 1 is required.")
    if widths == {0}:
        raise ValueError("0 feature(s) (shape=(n, 0)) while a minimum of 1 is required.")
    if total("null_labels"):
        raise ValueError(f"column {label_col!r} (label_col) has {total('null_labels')} null "
                         f"labels; drop those rows, set {_SKIP_HINT}, or fit without labels "
                         "(label_col=None)")


# ---------------------------------------------------------------------------- training data

@dataclass(frozen=True)
class ShardLayout:
    """What a task needs to read its partition of the training DataFrame into a ``Shard``."""

    rows: tuple  # rows of each partition, by partition id (= worker rank)
    n_features: int
    dtype: str
    labelled: bool
    mean: np.ndarray | None
    scale: np.ndarray | None
    # A directory on the machine of every task (a local master) holding each worker's shard
    # as files, which every phase maps instead of reading a partition; None: read the cached
    # partition in every phase.
    shard_dir: str | None = None


def frame_from_arrays(spark, X, codes, worker_rows, dtype, is_connect):
    """Numpy training data as a DataFrame with a worker and a shard position for every row.

    X is sent in chunks of about ``ARRAY_CHUNK_BYTES`` built from Arrow batches, so the
    driver's Python process never holds a second copy of it (its JVM keeps the chunks, as
    Spark keeps any local data, for as long as the DataFrame lives). Row
    ``worker_rows[w][i]`` of X gets worker ``w`` and position ``i``, so the training
    partitions are the shards the local engines would cut.
    """
    import pyarrow as pa

    order = np.concatenate(worker_rows)
    worker = np.repeat(np.arange(len(worker_rows), dtype=np.int32),
                       [len(rows) for rows in worker_rows])
    position = np.concatenate([np.arange(len(rows), dtype=np.int64) for rows in worker_rows])
    chunk_bytes = ARRAY_CHUNK_BYTES
    if is_connect:
        chunk_bytes = max(chunk_bytes, _byte_size(spark.conf.get(_CONNECT_CACHE_THRESHOLD, None)))
    chunk_bytes = min(chunk_bytes, 1 << 30)  # binary offsets are 32-bit
    row_bytes = max(1, X.shape[1]) * np.dtype(dtype).itemsize
    n_chunks = max(1, (len(order) * row_bytes) // chunk_bytes)
    frames = []
    for chunk in np.array_split(np.arange(len(order)), n_chunks):
        rows = order[chunk]
        block = X[rows]
        block = block.toarray() if hasattr(block, "toarray") else block
        columns = {FEATURES: arrow_rows(block.astype(dtype, copy=False))}
        if codes is not None:
            columns[LABEL] = pa.array(codes[rows].astype(np.int32))
        columns[POSITION] = pa.array(position[chunk])
        columns[_WORKER] = pa.array(worker[chunk])
        frames.append(spark.createDataFrame(pa.Table.from_pydict(columns)))
        del block, columns
    return reduce(lambda a, b: a.unionAll(b), frames)


def _byte_size(value):
    """A Spark size setting ("67108864", "64m", "64MB") in bytes; 0 when absent."""
    if value is None:
        return 0
    text = str(value).strip().lower().removesuffix("b")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def cache_partitions(source, n_workers):
    """Repartition ``source`` into one partition per worker, cache it on disk, count each.

    Returns
    -------
    frame : pyspark.sql.DataFrame
        Features (and label codes), each row's worker and its position in the worker's
        shard, partition ``w`` holding worker ``w``'s rows; cached on the executors' local
        disks. The rows of a partition may arrive in any order (a shuffle's blocks do): the
        position puts each row in its place when a task reads the partition.
    rows : tuple of int
        Rows of each partition.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions

    kept = [c for c in (FEATURES, LABEL, POSITION, _WORKER) if c in source.columns]
    # On the executors' local disks, not in the JVM heap: building an in-memory cache of a
    # shard larger than the storage memory spills anyway, costs more, and can exhaust a small
    # heap (Spark's default 1 GB); the operating system's page cache still serves the reads.
    frame = (source.repartitionById(n_workers, functions.col(_WORKER)).select(*kept)
             .persist(StorageLevel.DISK_ONLY))
    try:
        counted = (frame.select(functions.spark_partition_id().alias("partition"))
                   .groupBy("partition").count().toArrow().to_pylist())
    except BaseException:
        frame.unpersist()
        raise
    rows = {row["partition"]: row["count"] for row in counted}
    return frame, tuple(int(rows.get(rank, 0)) for rank in range(n_workers))


def regroup_partitions(frame, n_tasks):
    """The cached training partitions of ``cache_partitions`` regrouped for ``n_tasks``
    tasks, task ``t`` holding the rows of workers ``t, t + n_tasks, ...``; cached on disk
    like them (a phase rerun on fewer workers than the fit started with reads it)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions

    task = functions.pmod(functions.col(_WORKER), functions.lit(n_tasks))
    return frame.repartitionById(n_tasks, task).persist(StorageLevel.DISK_ONLY)


def task_ranks(task, n_tasks, n_workers):
    """The workers' shards (ranks) that task ``task`` of ``n_tasks`` trains on."""
    return range(task, n_workers, n_tasks)


def _features_of(column, layout):
    import pyarrow as pa

    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return matrix_of_rows(column, layout.n_features, layout.dtype)
    return matrix_of(column, layout.n_features, layout.dtype)


def read_shard(batches, ranks, layout):
    """Read this task's Arrow batches into one contiguous array (runs on an executor).

    ``ranks`` are the workers whose rows the task trains on (one, unless a phase is rerun on
    fewer workers), kept one after another. Every row goes to the place its worker and
    position columns give, so the shard is the same whatever order the rows arrive in.
    """
    ranks = list(ranks)
    rows = np.asarray(layout.rows, dtype=np.int64)
    start = np.full(len(rows), -1, dtype=np.int64)  # where each of our ranks' rows begin
    start[ranks] = np.concatenate([[0], np.cumsum(rows[ranks])[:-1]])
    n_rows = int(rows[ranks].sum())
    X = np.empty((n_rows, layout.n_features), dtype=layout.dtype)
    y = np.empty(n_rows, dtype=np.int64) if layout.labelled else None
    seen = np.zeros(n_rows, dtype=bool)
    for batch in batches:
        place = _places(batch, ranks, start, rows)
        if place is None or seen[place].any():
            raise RuntimeError(
                f"worker {ranks[0]} got rows outside its shard of {n_rows}: the DataFrame gave "
                "other rows on a second read (a nondeterministic plan); cache it before fit"
            )
        seen[place] = True
        X[place] = _features_of(batch.column(FEATURES), layout)
        if y is not None:
            y[place] = _codes_of(batch.column(LABEL))
    if not seen.all():
        raise RuntimeError(f"worker {ranks[0]} got {np.count_nonzero(seen)} rows, expected "
                           f"{n_rows}")
    return Shard(X, y, layout.mean, layout.scale)


def _places(batch, ranks, start, rows):
    """Each row's index in the task's shard, or None if a row belongs to no rank of it."""
    position = batch.column(POSITION).to_numpy()
    if not position.size:
        return position
    names = batch.schema.names
    worker = (batch.column(_WORKER).to_numpy() if _WORKER in names
              else np.full(position.size, ranks[0]))
    if worker.min() < 0 or worker.max() >= len(rows):
        return None
    if (start[worker] < 0).any() or position.min() < 0 or (position >= rows[worker]).any():
        return None
    return start[worker] + position


def _codes_of(column):
    codes = column.to_numpy(zero_copy_only=False)
    if codes.size and codes.min() < 0:  # a label the statistics pass did not see
        raise RuntimeError("the DataFrame gave labels on a second read that the first did not "
                           "have (a nondeterministic plan); cache it before fit")
    return codes


# ---------------------------------------------------------------------------- inference

_RESULT_TYPES = {"double": "double", "long": "bigint", "string": "string",
                 "array": "array<double>"}


def check_feature_count(df, features_col, n_features):
    """Raise early (one small job) if ``df``'s feature vectors do not have ``n_features``."""
    from pyspark.sql import functions

    features, _ = feature_column(df, features_col)
    first = df.select(functions.size(features).alias("n")).first()
    if first is not None and first["n"] is not None and first["n"] >= 0 \
            and first["n"] != n_features:
        raise ValueError(
            f"X has {first['n']} features, but DistributedDBN is expecting {n_features} "
            "features as input."
        )


def valid_features(features, n_features=None):
    """A boolean Spark column: the row's features (an array column) are there, finite, and
    ``n_features`` long (when given). Computed in the JVM."""
    from pyspark.sql import functions

    finite = functions.forall(features, lambda x: x.isNotNull() & ~functions.isnan(x)
                              & (functions.abs(x) != float("inf")))
    valid = features.isNotNull() & finite
    if n_features is not None:
        valid = valid & (functions.size(features) == n_features)
    return valid


def map_dataframe(df, features_col, n_features, compute, name, kind, handle_invalid="error",
                  dtype=None):
    """``df`` with a column ``name`` holding ``compute(X)`` per row, computed on the executors.

    ``compute`` maps an ``(n_rows, n_features)`` array of features to one value or one array
    per row; it travels to the executors inside the UDF (the numpy model, nothing kept on the
    cluster). An Arrow UDF carries the batches: only the features go through Python, and no
    Python object is made per row. ``kind`` is the new column's type: "double", "long",
    "string" or "array" (of doubles).

    Rows whose features are null, of another length or hold NaN or infinity are *invalid*:
    ``handle_invalid="error"`` fails the job with an error that says so, ``"skip"`` leaves
    them out of the result, ``"keep"`` keeps them with a null in ``name``. ``compute`` gets
    the features in ``dtype`` (None: the column's own, see ``feature_column``).
    """
    import pyarrow as pa
    from pyspark.sql.functions import arrow_udf

    features, dtype = feature_column(df, features_col, dtype)
    if handle_invalid == "skip":
        df = df.filter(valid_features(features, n_features))
    where = features_col if isinstance(features_col, str) else list(features_col)

    def apply(batch: pa.Array) -> pa.Array:
        valid = _valid_rows(batch, n_features)
        if valid.all():
            return _result_array(compute(matrix_of(batch, n_features, dtype)), kind)
        if handle_invalid == "error":
            raise ValueError(
                f"features_col {where!r} has {np.count_nonzero(~valid)} invalid rows in a "
                f"batch (null, not {n_features} values long, or holding NaN or infinity); "
                "drop or fix them, or set handle_invalid='skip' (leave them out) or 'keep' "
                "(null results)"
            )
        kept = np.flatnonzero(valid)
        values = compute(matrix_of(batch.take(pa.array(kept)), n_features, dtype))
        return _result_array(values, kind, rows=len(batch), at=kept)

    return df.withColumn(name, arrow_udf(apply, _RESULT_TYPES[kind])(features))


def _valid_rows(lists, n_features):
    """Which rows of an Arrow list array are valid feature vectors (see ``map_dataframe``)."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(lists).fill_null(-1).to_numpy(zero_copy_only=False)
    valid = lengths == n_features
    # Values of the non-null rows, in order (nulls inside a vector become NaN).
    values = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
    if valid.all():  # the usual batch: one check per row, no index array
        return np.isfinite(values.reshape(len(lists), n_features)).all(axis=1)
    # Owner of each value, from the lengths (a null row owns none, whatever its offsets).
    owners = np.repeat(np.arange(len(lists)), np.maximum(lengths, 0))
    bad = np.bincount(owners[~np.isfinite(values)], minlength=len(lists)) > 0
    return valid & ~bad


def _result_array(values, kind, rows=None, at=None):
    """``values`` (one per row, or rows of an array) as an Arrow array; with ``at``, placed
    at those of ``rows`` rows, the others null."""
    import pyarrow as pa

    values = np.asarray(values, dtype=np.float64 if kind in ("array", "double") else None)
    if at is None:
        return arrow_matrix(values) if kind == "array" else pa.array(values)
    missing = np.ones(rows, dtype=bool)
    missing[at] = False
    if kind == "array":
        width = values.shape[1]
        lengths = np.zeros(rows, dtype=np.int32)
        lengths[at] = width
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)),
                                        mask=pa.array(missing))
    full = np.empty(rows, dtype=values.dtype)
    full[at] = values
    return pa.array(full, mask=missing)


def accuracy_of(df, prediction_col, label_col):
    """Share of rows whose prediction equals the label, aggregated on the executors."""
    from pyspark.sql import functions

    hit = (functions.col(prediction_col) == functions.col(label_col)).cast("double")
    return float(df.select(functions.avg(hit)).first()[0])
