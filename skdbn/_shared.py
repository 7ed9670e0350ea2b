"""Training data shared with local worker processes: mapped by them, never copied to them.

A dataset (features and class codes) is written once into a file in shared memory
(``/dev/shm``, or the temporary directory where shared memory has no room) and every worker
process maps it. Datasets are recognised by their content, so fits of the same data in one
process (the candidates of a grid search) write it once. Files are removed when the process
exits, when :func:`release_shared_data` is called, or to make room for newer data; files of
a process killed before it could clean up are removed by the next process that shares data.

Each worker cuts its shard out of the mapped dataset once per fit and keeps it for the fit's
phases (:func:`open_shard`).
"""

import hashlib
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ._digest import described_bytes
from ._machine import available_memory, usable_cpus
from ._phase import Shard
from ._scratch import choose_scratch_dir, new_scratch_dirs, remove_tree

_HASH_BLOCK = 8 << 20  # bytes hashed per task: enough tasks to share out, few digests

_lock = threading.Lock()
_datasets = OrderedDict()  # key -> SharedArrays, least recently used first
_directories = None  # (on_disk, in_memory) of this process, made on first use


@dataclass(frozen=True)
class SharedArrays:
    """Where a shared dataset's arrays are: ``.npy`` files every worker can map."""

    key: str
    features: str
    labels: str | None
    n_bytes: int


@dataclass(frozen=True)
class ShardSource:
    """What a worker needs to build its shard: the dataset, its rows (None: all, in
    order), the standardization, and a token naming this combination."""

    data: object  # SharedArrays, or the arrays themselves where they cannot be shared
    rows: np.ndarray | None
    mean: np.ndarray | None
    scale: np.ndarray | None
    token: str


def shard_sources(X, codes, worker_rows, mean, scale):
    """One ``ShardSource`` per worker for ``X`` and ``codes`` (None without labels)."""
    data = share(X, codes)
    base = data.key if isinstance(data, SharedArrays) else os.urandom(8).hex()
    sources = []
    for rows in worker_rows:
        digest = hashlib.sha1(base.encode(), usedforsecurity=False)
        for part in (rows, mean, scale):
            digest.update(b"-" if part is None else np.ascontiguousarray(part).tobytes())
        sources.append(ShardSource(data, rows, mean, scale, digest.hexdigest()))
    return sources


def share(X, codes):
    """The ``SharedArrays`` of ``X`` and ``codes``, written now unless they already are; the
    arrays themselves for sparse X, or where no directory has room."""
    if not isinstance(X, np.ndarray):  # sparse input travels as it is
        return (X, codes)
    key = _content_key(X, codes)
    with _lock:
        known = _datasets.get(key)
        if known is not None and os.path.exists(known.features):
            _datasets.move_to_end(key)
            return known
        n_bytes = X.nbytes + (0 if codes is None else codes.nbytes)
        directory = _directory_for(n_bytes)
        if directory is None:
            return (X, codes)
        shared = _write(directory, key, X, codes, n_bytes)
        _datasets[key] = shared
        return shared


def release_shared_data():
    """Remove every dataset this process shared (workers that still map one keep their
    pages until they let go of it)."""
    global _directories
    with _lock:
        _datasets.clear()
        directories, _directories = _directories, None
    for directory in directories or ():
        remove_tree(directory)


def _content_key(X, codes):
    """Name of ``X`` and ``codes`` by content: a digest of their shapes, dtypes and of the
    digests of their bytes in blocks.

    The blocks are hashed on every core (hashlib lets go of the GIL), because a whole fit's
    fixed cost on large data is mostly this pass: 250 MB take 0.13 s on one core of the 2-core
    development machine and more on cores without SHA instructions. ``X`` is a validated
    float array and ``codes`` integers, so their bytes are their content.
    """
    parts = [X] if codes is None else [X, np.asarray(codes, dtype=np.int64)]
    digest = hashlib.sha1(usedforsecurity=False)
    blocks = []
    for part in parts:
        header, raw = described_bytes(part)
        digest.update(header)
        blocks += [raw[start:start + _HASH_BLOCK] for start in range(0, raw.size, _HASH_BLOCK)]
    n_threads = min(usable_cpus(), len(blocks))
    if n_threads > 1:
        with ThreadPoolExecutor(n_threads, thread_name_prefix="skdbn-hash") as hashers:
            block_digests = list(hashers.map(_block_digest, blocks))
    else:
        block_digests = [_block_digest(block) for block in blocks]
    for block_digest in block_digests:
        digest.update(block_digest)
    return digest.hexdigest()


def _block_digest(block):
    return hashlib.sha1(block, usedforsecurity=False).digest()


def _directory_for(n_bytes):
    """Where ``n_bytes`` more go, after dropping older datasets if shared memory is short
    (the datasets may take a quarter of the available memory)."""
    global _directories
    if _directories is None:
        _directories = new_scratch_dirs()
    on_disk, in_memory = _directories
    held = sum(d.n_bytes for d in _datasets.values())
    while _datasets and held + n_bytes > available_memory() // 4:
        _, oldest = _datasets.popitem(last=False)
        _remove(oldest)
        held -= oldest.n_bytes
    return choose_scratch_dir(on_disk, in_memory, n_bytes)


def _write(directory, key, X, codes, n_bytes):
    features = os.path.join(directory, f"{key}.features.npy")
    labels = None if codes is None else os.path.join(directory, f"{key}.labels.npy")
    # Written under another name and renamed: a worker never maps half a file.
    if labels is not None:
        np.save(labels + ".part.npy", np.asarray(codes, dtype=np.int64))
        os.replace(labels + ".part.npy", labels)
    np.save(features + ".part.npy", X)
    os.replace(features + ".part.npy", features)
    return SharedArrays(key, features, labels, n_bytes)


def _remove(shared):
    for path in (shared.features, shared.labels):
        if path is not None and os.path.exists(path):
            os.unlink(path)


# ---------------------------------------------------------------------------- in the workers

_open_shards = {}  # token -> Shard, of this worker process's current fit


def open_shard(source):
    """The worker's shard for ``source`` (runs in a worker process): cut from the mapped
    dataset on the fit's first phase, kept for its other phases."""
    shard = _open_shards.get(source.token)
    if shard is not None:
        return shard
    _open_shards.clear()  # another fit's shard: let go of its pages
    if isinstance(source.data, SharedArrays):
        X = np.load(source.data.features, mmap_mode="r")
        y = None if source.data.labels is None else np.load(source.data.labels)
    else:
        X, y = source.data
    if source.rows is not None:
        X = X[source.rows]
        y = None if y is None else y[source.rows]
    elif isinstance(X, np.memmap):
        X = np.asarray(X)
    shard = Shard(X, y, source.mean, source.scale)
    _open_shards[source.token] = shard
    return shard
