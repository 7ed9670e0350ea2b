"""Local worker processes: chosen by ``backend="auto"``, kept warm between fits, fed from
shared memory, released on request."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits

from skdbn import DistributedDBN, _pool, _shared, release_workers
from skdbn._engines import dealt_indices, default_workers, resolve_backend
from skdbn._machine import usable_cpus

PARAMS = dict(hidden_layer_sizes=(32,), pretrain_epochs=2, max_iter=2, backend="local",
              n_workers=2, sync="average", random_state=0)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def _pool_pids(n_workers):
    executor = _pool.acquire_pool(n_workers)
    try:
        return {executor.submit(os.getpid).result(timeout=60) for _ in range(8 * n_workers)}
    finally:
        _pool.release_pool(n_workers, executor)


def test_a_second_fit_reuses_the_worker_processes(digits):
    X, y = digits
    first = DistributedDBN(**PARAMS).fit(X, y)
    pids = _pool_pids(2)
    second = DistributedDBN(**PARAMS).fit(X.copy(), y.copy())
    assert _pool_pids(2) == pids
    left = [name for d in _shared._directories if d for name in os.listdir(d)]
    assert not [name for name in left if name.endswith(".npy")]  # each fit removed its files
    for a, b in zip(first.coefs_, second.coefs_, strict=True):
        np.testing.assert_array_equal(a, b)


def test_each_worker_maps_its_dealt_rows_and_the_files_go_with_the_fit():
    X = np.random.default_rng(0).random((3001, 7)).astype(np.float32)
    X = np.asfortranarray(X)  # any layout is written row by row
    codes = np.arange(3001) % 3
    rows = dealt_indices(3001, 3, seed=5)
    shards = _shared.SharedShards(X, codes, rows, None, None)
    try:
        paths = [shards.sources[0].features, shards.sources[0].labels]
        assert not any(os.path.exists(p) for p in paths)  # named, written by write()
        shards.write()
        assert all(p.startswith(tuple(d for d in _shared._directories if d)) for p in paths)
        for rank, source in enumerate(shards.sources):
            shard = _shared.open_shard(source)
            np.testing.assert_array_equal(shard.X, X[rows[rank]])
            np.testing.assert_array_equal(shard.y, codes[rows[rank]])
            assert isinstance(shard.X.base, np.memmap)  # mapped, not copied
            assert _shared.open_shard(source) is shard  # kept for the fit's next phases
    finally:
        shards.close()
    assert not any(os.path.exists(p) for p in paths)
    _shared._open_shards.clear()


def test_shards_are_pickled_where_they_cannot_be_written(digits, monkeypatch):
    from scipy import sparse

    X, y = digits
    rows = dealt_indices(len(X), 2, seed=0)
    monkeypatch.setattr(_shared, "choose_scratch_dir", lambda *args: None)  # no room
    for data in (X, sparse.csr_matrix(X)):
        shards = _shared.SharedShards(data, y, rows, None, None)
        shards.write()  # nothing to write
        for rank, source in enumerate(shards.sources):
            shard = _shared.open_shard(source)
            dense = shard.X.toarray() if sparse.issparse(shard.X) else shard.X
            np.testing.assert_array_equal(dense, X[rows[rank]])
            np.testing.assert_array_equal(shard.y, y[rows[rank]])
        shards.close()
    _shared._open_shards.clear()


def test_a_failed_write_of_the_shards_leaves_no_files(monkeypatch):
    X = np.ones((500, 4), dtype=np.float32)
    shards = _shared.SharedShards(X, np.zeros(500, int), dealt_indices(500, 2, 0), None, None)
    paths = [shards.sources[0].features, shards.sources[0].labels]

    def fail(path, *args):
        with open(path, "wb") as out:
            out.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_shared, "write_rows", fail)
    with pytest.raises(OSError, match="No space"):
        shards.write()
    assert not any(os.path.exists(p) for p in paths)


def test_removed_files_are_gone_at_once_and_their_memory_follows(tmp_path):
    from skdbn import _scratch

    kept, mapped, missing = tmp_path / "kept", tmp_path / "mapped", tmp_path / "missing"
    for path in (kept, mapped):
        np.save(path, np.ones(1000, dtype=np.float32))
    view = np.load(f"{mapped}.npy", mmap_mode="r")  # a worker that still maps its shard
    _scratch.remove_files([f"{kept}.npy", f"{missing}.npy"])
    assert not os.path.exists(f"{kept}.npy")
    _scratch.remove_files([f"{mapped}.npy"], empty=True)
    assert not os.path.exists(f"{mapped}.npy")
    deadline = time.monotonic() + 10
    while view._mmap.size() > 0:  # the size of the file behind the map: emptied on a thread
        assert time.monotonic() < deadline, "the removed file was never emptied"
        time.sleep(0.01)


def test_workers_wait_for_shards_written_while_they_start(digits, monkeypatch):
    # The shards are written after the workers were sent their phase; a worker that read
    # its shard before the write ended would find no file, or half of one.
    X, y = digits
    expected = DistributedDBN(**PARAMS).fit(X, y)
    write = _shared.SharedShards.write

    def slow_write(shards):
        time.sleep(1.0)
        write(shards)

    monkeypatch.setattr(_shared.SharedShards, "write", slow_write)
    model = DistributedDBN(**PARAMS).fit(X, y)
    for a, b in zip(expected.coefs_, model.coefs_, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_write_too_long_to_overlap_comes_before_the_workers_start(digits, monkeypatch):
    # The workers' waits at the rendezvous are bounded by network_timeout: shards that could
    # take a fair share of it to write (here: a very slow disk) are written before the
    # workers are sent their phase, or they would give up waiting.
    from skdbn import _processes

    X, y = digits
    monkeypatch.setattr(_processes, "_SLOW_WRITE_BYTES_PER_SECOND", 1000)
    write = _shared.SharedShards.write

    def slow_write(shards):
        if shards.unwritten_bytes:
            time.sleep(3.0)
        write(shards)

    monkeypatch.setattr(_shared.SharedShards, "write", slow_write)
    model = DistributedDBN(**dict(PARAMS, network_timeout=2.0)).fit(X, y)
    assert model.n_workers_ == 2


def test_a_fit_without_room_for_files_trains_as_one_with_them(digits, monkeypatch):
    X, y = digits
    written = DistributedDBN(**PARAMS).fit(X, y)
    monkeypatch.setattr(_shared, "choose_scratch_dir", lambda *args: None)
    pickled = DistributedDBN(**PARAMS).fit(X, y)
    for a, b in zip(written.coefs_, pickled.coefs_, strict=True):
        np.testing.assert_array_equal(a, b)


def test_workers_train_every_kind_of_layer_on_their_mapped_read_only_shards(digits,
                                                                           monkeypatch):
    X, y = digits
    params = dict(PARAMS, hidden_layer_sizes=(16, 8), persistent=True, cd_steps=2)
    gaussian = (X - 0.3) * 4  # Gaussian visible units, standardized by the workers
    mapped = DistributedDBN(**params).fit(gaussian, y)
    assert mapped.visible_units_ == "gaussian"
    monkeypatch.setattr(_shared, "choose_scratch_dir", lambda *args: None)  # own copies
    copied = DistributedDBN(**params).fit(gaussian, y)
    for a, b in zip(mapped.coefs_ + mapped.intercepts_, copied.coefs_ + copied.intercepts_,
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_failed_fit_removes_its_shard_files(digits):
    X, y = digits
    with pytest.raises(FloatingPointError, match="diverged"):
        DistributedDBN(**dict(PARAMS, learning_rate=1e30)).fit(X * 1e3, y)
    left = [name for d in _shared._directories if d for name in os.listdir(d)]
    assert not [name for name in left if name.endswith(".npy")]


def test_release_workers_ends_the_processes_and_removes_the_shared_files(digits):
    X, y = digits
    DistributedDBN(**PARAMS).fit(X, y)
    directories = [d for d in _shared._directories if d is not None]
    pids = _pool_pids(2)
    assert directories and all(os.path.isdir(d) for d in directories)
    release_workers()
    assert not any(os.path.exists(d) for d in directories)
    assert not _pool._idle
    for pid in pids:  # gone, or at most a zombie being reaped
        assert not os.path.exists(f"/proc/{pid}") or _state(pid) == "Z"
    DistributedDBN(**PARAMS).fit(X, y)  # and fits still work afterwards


def _state(pid):
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0]


def test_sparse_input_trains_on_local_workers(digits):
    # Sparse X is not written to shared memory: it travels to the workers as it is.
    from scipy import sparse

    X, y = digits
    model = DistributedDBN(**PARAMS).fit(sparse.csr_matrix(X), y)
    dense = DistributedDBN(**PARAMS).fit(X, y)
    assert model.score(X, y) == pytest.approx(dense.score(X, y), abs=0.05)


def test_the_default_backend_and_workers():
    assert resolve_backend("local", True) == "local"
    assert resolve_backend("spark", False) == "spark"
    assert resolve_backend("auto", True) == "spark"
    cores = usable_cpus()
    assert default_workers("local", 4_999) == 1
    assert default_workers("local", 1_000_000) == cores  # one per core, never more
    assert default_workers("spark", 1_000_000) == 200  # the session's slots cap it later


def test_a_numpy_fit_without_a_session_never_starts_spark():
    # backend="auto" with no active session: local processes, and pyspark is not even
    # imported (no JVM); 12,000 samples make at least one worker per core up to two.
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from skdbn import DistributedDBN
        X = np.random.default_rng(0).random((12_000, 20))
        model = DistributedDBN(hidden_layer_sizes=(8,), pretrain_epochs=1, max_iter=1,
                               random_state=0).fit(X, (X[:, 0] > 0.5).astype(int))
        print("RESULT", model.n_workers_, "pyspark" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=180)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stderr[-2000:]
    _, workers, imported = lines[0].split()
    assert int(workers) == min(2, usable_cpus())
    assert imported == "False"


def test_an_interrupted_fit_leaves_no_busy_pool_behind(digits):
    # Ctrl-C in a notebook while workers train: the pool still busy with the phase is shut
    # down, and the next fit gets fresh workers instead of waiting behind the old phase.
    X, y = digits
    X, y = np.tile(X, (4, 1)), np.tile(y, 4)
    busy = _pool_pids(2)  # the idle pool the interrupted fit will take
    interrupt = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
    interrupt.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            DistributedDBN(**dict(PARAMS, hidden_layer_sizes=(256,), pretrain_epochs=200)
                           ).fit(X, y)
    finally:
        interrupt.cancel()
    assert _pool_pids(2).isdisjoint(busy)
    assert DistributedDBN(**PARAMS).fit(X, y).n_workers_ == 2
