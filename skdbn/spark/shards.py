"""Training shards as files, for sessions whose tasks all run on this machine.

With a local master every task shares the driver's disk, so each worker's shard is written
once as a ``.npy`` file that every phase maps instead of reading a cached partition. A
DataFrame's rows are written by the same pass that computes its statistics: a cheap count per
partition first gives every partition the global index of its first row, so each task knows
where its rows go (row ``g`` to worker ``g % n_workers`` at position ``g // n_workers``) and
writes them straight into the shard files, without a shuffle and without a second read of
the features (``training_frame`` runs that pass). ``count_rows_task``, ``write_shards_task``
and ``saved_shard`` run on the executors; the other functions on the driver.
"""

import contextlib
import io
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from .._phase import Shard
from .._scratch import choose_scratch_dir
from .._shared import write_rows
from .data import (
    dealt_rows,
    matrix_of,
    statistics_batch,
    statistics_of,
)

_STATE_FILE = "shards.state"  # "ready <n_features> <directory>" once created, else "no-room"
_LOCK_FILE = "shards.lock"


def shard_paths(shard_dir, rank):
    """Files of worker ``rank``'s features and labels in ``shard_dir``."""
    return (os.path.join(shard_dir, f"shard-{rank}-X.npy"),
            os.path.join(shard_dir, f"shard-{rank}-y.npy"))


def reserve_disk(path, length=None):
    """Give the file at ``path`` its disk blocks now (its whole size, or ``length`` bytes), so
    that a full disk raises ``OSError`` here rather than killing a process that later writes
    to a memory map of it."""
    with open(path, "r+b") as handle:
        size = os.fstat(handle.fileno()).st_size if length is None else length
        os.posix_fallocate(handle.fileno(), 0, size)


# ---------------------------------------------------------------------------- numpy input

def write_array_shard(X, codes, rows, rank, layout):
    """Write rows ``rows`` of X (and of ``codes``) as worker ``rank``'s shard files, a
    cache-sized block at a time (the driver holds one block beyond X)."""
    features, labels = shard_paths(layout.shard_dir, rank)
    write_rows(features + ".part", X, rows, layout.dtype)
    if layout.labelled:
        np.save(labels + ".part.npy", codes[rows])
    publish_shard(rank, layout)


# ---------------------------------------------------------------------------- DataFrame input

def count_rows_task(batches):
    """The row count of one partition as one row (runs on an executor)."""
    import pyarrow as pa
    from pyspark import TaskContext

    n_rows = sum(batch.num_rows for batch in batches)
    if n_rows:
        yield pa.RecordBatch.from_pydict({
            "partition": pa.array([TaskContext.get().partitionId()], pa.int32()),
            "n_rows": pa.array([n_rows], pa.int64())})


@dataclass(frozen=True)
class ShardPlan:
    """Where the statistics pass writes a DataFrame's rows: one features file per worker,
    rows dealt in turn in the order of the source partitions.

    ``shard_dir`` (on disk) holds the pass's own small files; the features files go to
    ``memory_dir`` or ``shard_dir``, as :func:`choose_scratch_dir` decides once their size is
    known.
    """

    shard_dir: str
    memory_dir: str | None
    partition_rows: dict  # rows of each non-empty source partition, by partition id
    n_workers: int
    dtype: str
    features_dir: str | None = None  # where the features files went, once written

    @property
    def worker_rows(self):
        """Rows of each worker's shard."""
        return dealt_rows(sum(self.partition_rows.values()), self.n_workers)

    def first_row(self, partition):
        """Global index of the first row of ``partition`` (None if it was counted empty)."""
        if partition not in self.partition_rows:
            return None
        return sum(n for p, n in self.partition_rows.items() if p < partition)


def write_shards_task(labelled, plan, batches):
    """Statistics of this partition, as ``statistics_of`` gives them, with its features
    written into the shard files on the way (runs on an executor)."""
    from pyspark import TaskContext

    partition = TaskContext.get().partitionId()
    writer = _RowWriter(plan, plan.first_row(partition), labelled)
    try:
        statistics = statistics_of(writer.writing(batches), labelled)
        writer.save_labels(_labels_path(plan.shard_dir, partition))
    finally:
        writer.close()
    if statistics is None:
        return
    # mapInArrow matches columns to the schema by position: the partition comes first.
    yield statistics_batch({"partition": partition, "written": writer.written, **statistics})


class _RowWriter:
    """Writes a partition's rows, batch by batch, at their places in the shard files, and
    keeps its labels (the classes are known only once every partition is summarised)."""

    def __init__(self, plan, first_row, labelled):
        self.plan = plan
        self._worker_rows = plan.worker_rows
        self.next_row = first_row  # global index of the next row to arrive
        self.written = 0
        self.writing_rows = first_row is not None
        self._labels = [] if labelled else None
        self._files = None
        self._header_bytes = None  # of each worker's features file

    def writing(self, batches):
        """Pass ``batches`` through, writing each one's rows on the way."""
        for batch in batches:
            if self.writing_rows and batch.num_rows:
                self.writing_rows = self._write(batch.column(0))
                if self.writing_rows and self._labels is not None:
                    self._labels.append(batch.column(1))
            yield batch

    def save_labels(self, path):
        """Write the partition's labels, in row order, as an Arrow file at ``path``."""
        import pyarrow as pa

        if self._labels is None or not self.written:
            return
        table = pa.Table.from_arrays([pa.chunked_array(self._labels)], names=["label"])
        # A name of its own: Spark may run two attempts of one partition at once.
        handle, part = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".part")
        os.close(handle)
        with pa.OSFile(part, "wb") as sink, pa.ipc.new_file(sink, table.schema) as out:
            out.write_table(table)
        os.replace(part, path)

    def _write(self, column):
        """Write one batch's feature vectors; False when writing must stop (a bad batch, a
        full disk, rows beyond the plan), which the driver sees as rows not written."""
        import pyarrow.compute as pc

        if column.null_count:
            return False  # refused on the driver
        n_features = int(pc.list_value_length(column)[0].as_py())
        try:
            matrix = matrix_of(column, n_features, self.plan.dtype)
        except ValueError:
            return False
        if self._files is None and not self._open(n_features):
            return False
        n, first = self.plan.n_workers, self.next_row
        row_bytes = n_features * matrix.itemsize
        for rank, handle in enumerate(self._files):
            start = (rank - first) % n
            block = np.ascontiguousarray(matrix[start::n])
            position = (first + start) // n
            if not len(block):
                continue
            if position + len(block) > self._worker_rows[rank]:
                return False  # more rows than counted: refused on the driver
            _write_all(handle, memoryview(block).cast("B"),
                       self._header_bytes[rank] + position * row_bytes)
        self.next_row += len(matrix)
        self.written += len(matrix)
        return True

    def _open(self, n_features):
        features_dir = create_shard_files(self.plan, n_features)
        if features_dir is None:
            return False
        self._header_bytes = [len(_npy_header(self.plan.dtype, (n_rows, n_features)))
                              for n_rows in self._worker_rows]
        paths = [shard_paths(features_dir, rank)[0] + ".part"
                 for rank in range(self.plan.n_workers)]
        self._files = [os.open(path, os.O_WRONLY) for path in paths]
        return True

    def close(self):
        for handle in self._files or ():
            os.close(handle)
        self._files = None


def _write_all(handle, data, offset):
    while len(data):
        done = os.pwrite(handle, data, offset)
        data, offset = data[done:], offset + done


def create_shard_files(plan, n_features):
    """Create the plan's features files at full size, once for all tasks, and return their
    directory; None when there is no room or the files were made for another number of
    features.

    The first task to know the number of features creates them, under a lock, and leaves the
    outcome in a state file that the other tasks read.
    """
    import fcntl  # POSIX only, as are the local masters that write shard files

    state_path = os.path.join(plan.shard_dir, _STATE_FILE)
    with open(os.path.join(plan.shard_dir, _LOCK_FILE), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(state_path):
            state = _create_features_files(plan, n_features)
            with open(state_path + ".tmp", "w") as handle:
                handle.write(state)
            os.replace(state_path + ".tmp", state_path)
    state = read_state(plan)
    if state is None or state[0] != n_features:
        return None
    return state[1]


def read_state(plan):
    """``(n_features, features_dir)`` of the plan's features files, or None if they were
    not created."""
    with contextlib.suppress(FileNotFoundError):
        with open(os.path.join(plan.shard_dir, _STATE_FILE)) as handle:
            state = handle.read().split(" ", 2)
        if state[0] == "ready":
            return int(state[1]), state[2]
    return None


def _create_features_files(plan, n_features):
    itemsize = np.dtype(plan.dtype).itemsize
    features_dir = choose_scratch_dir(plan.shard_dir, plan.memory_dir,
                                    sum(plan.worker_rows) * n_features * itemsize)
    if features_dir is None:
        return "no-room"
    for rank, n_rows in enumerate(plan.worker_rows):
        header = _npy_header(plan.dtype, (n_rows, n_features))
        path = shard_paths(features_dir, rank)[0] + ".part"
        with open(path, "wb") as handle:
            handle.write(header)
        try:
            reserve_disk(path, len(header) + n_rows * n_features * itemsize)
        except OSError:
            return "no-room"
    return f"ready {n_features} {features_dir}"


def _npy_header(dtype, shape):
    """The ``.npy`` header of a C-ordered array of ``dtype`` and ``shape``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _labels_path(shard_dir, partition):
    return os.path.join(shard_dir, f"labels-of-partition-{partition}.arrow")


def write_label_shards(plan, classes, layout):
    """Write every worker's class codes into its labels file, from the labels that the
    statistics pass kept for each partition (read in the same pass as the features, so they
    stay in step with them whatever the DataFrame's plan)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = []
    for partition in plan.partition_rows:
        with pa.memory_map(_labels_path(plan.shard_dir, partition)) as source:
            parts.append(pa.ipc.open_file(source).read_all().column(0).combine_chunks())
        os.remove(_labels_path(plan.shard_dir, partition))
    labels = pa.chunked_array(parts).combine_chunks()
    known = pa.array(np.asarray(classes).tolist()).cast(labels.type)
    codes = pc.index_in(labels, value_set=known)
    if codes.null_count:  # the statistics saw every label: cannot happen but for a bug
        raise RuntimeError("a label of the training data is not among the classes")
    codes = codes.to_numpy().astype(np.int64)
    for rank in range(plan.n_workers):
        labels_file = shard_paths(layout.shard_dir, rank)[1]
        np.save(labels_file + ".part.npy", codes[rank::plan.n_workers])


def publish_shard(rank, layout):
    """Give worker ``rank``'s finished ``.part`` files their names; the features file comes
    last, so a shard whose features file exists is complete."""
    features, labels = shard_paths(layout.shard_dir, rank)
    if layout.labelled:
        os.replace(labels + ".part.npy", labels)
    os.replace(features + ".part", features)


def saved_shard(rank, layout):
    """Worker ``rank``'s shard from its files in ``layout.shard_dir`` (features mapped)."""
    features, labels = shard_paths(layout.shard_dir, rank)
    try:
        X = np.load(features, mmap_mode="r")
        y = np.load(labels) if layout.labelled else None
    except OSError as exc:
        raise RuntimeError(f"worker {rank} cannot read its shard file ({exc}); was the "
                           "temporary directory cleaned during the fit?") from exc
    if X.shape != (layout.rows[rank], layout.n_features) or X.dtype != layout.dtype:
        raise RuntimeError(f"worker {rank}'s shard file {features} is not the fit's shard")
    return Shard(X, y, layout.mean, layout.scale)


def saved_shards(ranks, layout):
    """The shards of workers ``ranks`` as one (a copy when there are several: a phase rerun
    on fewer workers than the fit started with)."""
    shards = [saved_shard(rank, layout) for rank in ranks]
    if len(shards) == 1:
        return shards[0]
    y = None if not layout.labelled else np.concatenate([shard.y for shard in shards])
    return Shard(np.concatenate([shard.X for shard in shards]), y, layout.mean, layout.scale)
