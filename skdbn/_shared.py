"""Training data shared with local worker processes: written once per fit, already dealt, and
mapped by the workers where it lies.

A fit's rows are written in the order they are dealt (worker 0's rows, then worker 1's, ...)
into one file in shared memory (``/dev/shm``, or the temporary directory where shared memory
has no room), and their class codes into another. Each worker maps its block of rows and
trains on it without copying it: the write is the fit's only pass over the data before
training, nothing is hashed, and the data is held once however many workers read it. The files
are removed when the fit ends (:meth:`SharedShards.close`); the directories of a process killed
before it could clean up are removed by the next process that shares data.
"""

import os
import secrets
import threading
from dataclasses import dataclass

import numpy as np

from ._phase import Shard
from ._scratch import choose_scratch_dir, new_scratch_dirs, remove_files, remove_tree

_WRITE_BYTES = 1 << 20  # rows gathered at a time before they are written: they stay in cache

_lock = threading.Lock()
_directories = None  # (on_disk, in_memory) of this process, made on first use


@dataclass(frozen=True)
class ShardSource:
    """What a worker needs to build its shard: where its rows are, their standardization,
    and a token naming this shard (a worker keeps the shard it has for the fit's next
    phases).

    ``features`` and ``labels`` are the paths of the fit's ``.npy`` files with ``rows`` the
    worker's block of them (a slice), or, where the data could not be written, the worker's
    rows themselves (an array or sparse matrix, and the codes or None) with ``rows`` None.
    """

    features: object
    labels: object
    rows: slice | None
    mean: np.ndarray | None
    scale: np.ndarray | None
    token: str


class SharedShards:
    """The shards of one fit's workers, written (by :meth:`write`) for them to map.

    Parameters
    ----------
    X : ndarray or sparse matrix of shape (n_samples, n_features)
        The training rows. Sparse input is not written: each worker gets its rows pickled.
    codes : ndarray of shape (n_samples,) or None
        Each row's class code.
    worker_rows : list of ndarray
        The rows of each worker, in the order the worker trains on them.
    mean, scale : ndarray of shape (n_features,) or None
        Standardization of Gaussian visible units, applied by the workers.

    Attributes
    ----------
    sources : list of ShardSource
        One per worker, in rank order.
    """

    def __init__(self, X, codes, worker_rows, mean, scale):
        self._paths = ()
        name = secrets.token_hex(8)  # of this fit's files and shards
        paths = _dealt_paths(X, codes, worker_rows, name) if isinstance(X, np.ndarray) else None
        self.sources = []
        start = 0
        for rank, rows in enumerate(worker_rows):
            if paths is None:
                features = X[rows]
                labels = None if codes is None else np.asarray(codes)[rows]
                block = None
            else:
                features, labels = paths
                block = slice(start, start + len(rows))
                start += len(rows)
            self.sources.append(ShardSource(features, labels, block, mean, scale,
                                            f"{name}-{rank}"))
        self._unwritten = None
        if paths is not None:
            self._paths = tuple(path for path in paths if path is not None)
            self._unwritten = (X, codes, np.concatenate(worker_rows), paths)

    @property
    def unwritten_bytes(self):
        """Bytes :meth:`write` has yet to write (0 once written, or where nothing is)."""
        if self._unwritten is None:
            return 0
        X, codes, order, _ = self._unwritten
        return len(order) * (X[:1].nbytes + (0 if codes is None else 8))

    def write(self):
        """Write the files the ``sources`` name (once; nothing to do where the rows travel
        in the sources themselves). Workers must not open their shards before this returns;
        a failed write removes what it wrote."""
        if self._unwritten is None:
            return
        (X, codes, order, (features, labels)), self._unwritten = self._unwritten, None
        try:
            write_rows(features, X, order)
            if labels is not None:
                np.save(labels, np.asarray(codes, dtype=np.int64)[order])
        except BaseException:
            self.close()
            raise

    def close(self, empty=True):
        """Remove the files.

        With ``empty`` (every worker is done with them), the files are emptied too: their
        memory is given back (on a thread, see ``remove_files``) rather than when the last
        worker that mapped them lets go of its shard, which would cost that worker the time at
        the start of its next fit. Without it (workers being killed may still read them) they
        are only unlinked.
        """
        remove_files(self._paths, empty=empty)
        self._paths = ()


def release_shared_data():
    """Remove this process's directories of shared training data, with any file in them."""
    global _directories
    with _lock:
        directories, _directories = _directories, None
    for directory in directories or ():
        remove_tree(directory)


def _dealt_paths(X, codes, worker_rows, name):
    """``(features_path, labels_path)`` of the files of ``X`` and ``codes`` in the dealt order
    of ``worker_rows`` (``labels_path`` None without codes); None where no directory has
    room for them."""
    n_rows = sum(len(rows) for rows in worker_rows)
    n_bytes = X[:1].nbytes * n_rows + (0 if codes is None else 8 * n_rows)
    directory = _directory_for(n_bytes)
    if directory is None:
        return None
    labels = None if codes is None else os.path.join(directory, f"{name}.labels.npy")
    return os.path.join(directory, f"{name}.features.npy"), labels


def write_rows(path, X, order, dtype=None):
    """Write ``X[order]`` as a dense ``.npy`` file at ``path``, in ``dtype`` (that of ``X`` by
    default), gathered a cache-sized block at a time; sparse rows are densified a block at a
    time. Written with ``write`` rather than through a memory map, so a full disk or shared
    memory raises ``OSError`` here."""
    dtype = np.dtype(X.dtype if dtype is None else dtype)
    n_features = X.shape[1]
    header = np.lib.format.header_data_from_array_1_0(np.empty((0, n_features), dtype))
    header["shape"] = (len(order), n_features)
    header["fortran_order"] = False
    step = max(1, _WRITE_BYTES // max(1, n_features * dtype.itemsize))
    block = np.empty((min(step, len(order)), n_features), dtype)
    gathers_in_place = isinstance(X, np.ndarray) and X.dtype == dtype
    with open(path, "wb") as out:
        np.lib.format.write_array_header_1_0(out, header)
        for start in range(0, len(order), step):
            rows = order[start:start + step]
            part = block[:len(rows)]
            if gathers_in_place:
                np.take(X, rows, axis=0, out=part)
            else:
                chosen = X[rows]
                part[...] = chosen.toarray() if hasattr(chosen, "toarray") else chosen
            out.write(memoryview(part).cast("B"))


def _directory_for(n_bytes):
    """Where ``n_bytes`` of shard files go, or None where there is no room."""
    global _directories
    with _lock:
        if _directories is None:
            _directories = new_scratch_dirs()
        on_disk, in_memory = _directories
    return choose_scratch_dir(on_disk, in_memory, n_bytes)


# ---------------------------------------------------------------------------- in the workers

_open_shards = {}  # token -> Shard, of this worker process's current fit


def open_shard(source):
    """The worker's shard for ``source`` (runs in a worker process): its block of the fit's
    files, mapped (no copy), kept for the fit's other phases."""
    shard = _open_shards.get(source.token)
    if shard is not None:
        return shard
    _open_shards.clear()  # another fit's shard: let go of its pages
    if source.rows is None:
        X, y = source.features, source.labels
    else:
        X = np.asarray(np.load(source.features, mmap_mode="r")[source.rows])
        y = None
        if source.labels is not None:
            y = np.asarray(np.load(source.labels, mmap_mode="r")[source.rows])
    shard = Shard(X, y, source.mean, source.scale)
    _open_shards[source.token] = shard
    return shard
