"""The Arrow conversions and statistics of ``skdbn.spark.data``, without a Spark session."""

import numpy as np
import pyarrow as pa
import pytest

from skdbn import _scratch
from skdbn._machine import usable_cpus
from skdbn.spark import shards
from skdbn.spark.data import (
    ShardLayout,
    _Moments,
    arrow_matrix,
    arrow_rows,
    matrix_of,
    matrix_of_rows,
)
from skdbn.spark.session import local_master_cores


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_rows_round_trip_and_slices(dtype):
    X = np.arange(40, dtype=dtype).reshape(10, 4)
    packed = arrow_rows(X)
    assert packed.type == pa.binary() and len(packed) == 10
    np.testing.assert_array_equal(matrix_of_rows(packed, 4, dtype), X)
    np.testing.assert_array_equal(matrix_of_rows(packed.slice(3, 5), 4, dtype), X[3:8])
    assert matrix_of_rows(packed.slice(0, 0), 4, dtype).shape == (0, 4)
    with pytest.raises(ValueError, match="does not hold 5"):
        matrix_of_rows(packed, 5, dtype)


def test_list_arrays_become_matrices_without_copies_and_bad_rows_are_refused():
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    lists = arrow_matrix(X)
    view = matrix_of(lists, 3, np.float32)
    np.testing.assert_array_equal(view, X)
    assert not view.flags.owndata  # a view of the Arrow buffer
    np.testing.assert_array_equal(matrix_of(lists.slice(1, 2), 3, np.float64), X[1:3])
    with pytest.raises(ValueError, match="must all have 2 values"):
        matrix_of(lists, 2, np.float32)
    with pytest.raises(ValueError, match="null rows"):
        matrix_of(pa.array([[1.0, 2.0], None]), 2, np.float64)
    with pytest.raises(ValueError, match="null values"):
        matrix_of(pa.array([[1.0, None]]), 2, np.float64)


@pytest.mark.parametrize("offset", [0.0, 1.7e9])
def test_moments_merged_over_batches_match_numpy(offset):
    rng = np.random.default_rng(0)
    X = offset + rng.standard_normal((5000, 3)) * [1.0, 10.0, 0.1]
    moments = _Moments()
    for part in np.array_split(X, 7):
        moments.add(part)
    assert moments.n == 5000
    np.testing.assert_allclose(moments.mean, X.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(moments.m2 / moments.n, X.var(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(moments.minimum, X.min(axis=0))
    np.testing.assert_array_equal(moments.maximum, X.max(axis=0))


def test_spark_size_settings_are_read_in_bytes():
    from skdbn.spark.data import _byte_size

    assert _byte_size("67108864") == 64 << 20
    assert _byte_size("64m") == _byte_size("64MB") == 64 << 20
    assert _byte_size("1g") == 1 << 30
    assert _byte_size(None) == 0


@pytest.mark.parametrize("master, cores", [
    ("local", 1), ("local[3]", 3), ("local[4,2]", 4), ("local-cluster[2, 3, 1024]", 6),
    ("spark://127.0.0.1:7077", None), ("yarn", None), ("localhost", None),
])
def test_cores_of_local_masters(master, cores):
    assert local_master_cores(master) == cores
    assert local_master_cores("local[*]") == usable_cpus() >= 1


def _write_partitions(plan, features, labels, order):
    """Write each partition's rows as its task would, tasks running in ``order``."""
    for partition in order:
        X = features[partition]
        writer = shards._RowWriter(plan, plan.first_row(partition), labelled=True)
        batches = [pa.record_batch([arrow_matrix(X[i:i + 4]), pa.array(labels[partition][i:i + 4])],
                                   names=["features", "label"]) for i in range(0, len(X), 4)]
        assert list(writer.writing(batches)) == batches  # passed on to the statistics
        writer.save_labels(shards._labels_path(plan.shard_dir, partition))
        writer.close()
        assert writer.written == len(X)


@pytest.mark.parametrize("n_workers", [1, 2, 3])
def test_partitions_write_their_rows_straight_into_the_shard_files(tmp_path, n_workers):
    # Row g of the source (partitions in order) belongs to worker g % n at position g // n,
    # whichever order the tasks run in; labels become codes once the classes are known.
    rng = np.random.default_rng(0)
    counts = {0: 7, 2: 10, 3: 1}  # partition 1 is empty
    features = {p: rng.random((n, 5)).astype(np.float32) for p, n in counts.items()}
    labels = {p: rng.choice(["a", "b", "c"], n).tolist() for p, n in counts.items()}
    plan = shards.ShardPlan(str(tmp_path), None, counts, n_workers, "float32")
    _write_partitions(plan, features, labels, order=[3, 0, 2])
    X = np.concatenate([features[p] for p in sorted(counts)])
    y = np.concatenate([labels[p] for p in sorted(counts)])
    layout = ShardLayout(rows=plan.worker_rows, n_features=5, dtype="float32", labelled=True,
                         mean=None, scale=None, shard_dir=str(tmp_path))
    shards.write_label_shards(plan, np.array(["a", "b", "c"]), layout)
    for rank in range(n_workers):
        shards.publish_shard(rank, layout)
        shard = shards.saved_shard(rank, layout)
        np.testing.assert_array_equal(shard.X, X[rank::n_workers])
        np.testing.assert_array_equal(shard.y, np.searchsorted(["a", "b", "c"], y[rank::n_workers]))


def test_shard_files_are_not_written_without_room_or_with_other_widths(tmp_path, monkeypatch):
    plan = shards.ShardPlan(str(tmp_path), None, {0: 4, 1: 4}, 2, "float64")
    wide, narrow = arrow_matrix(np.ones((4, 3))), arrow_matrix(np.ones((4, 2)))
    writer = shards._RowWriter(plan, 0, labelled=False)
    list(writer.writing([pa.record_batch([wide], names=["features"])]))
    assert writer.written == 4
    other = shards._RowWriter(plan, 4, labelled=False)  # the files hold 3 features a row
    list(other.writing([pa.record_batch([narrow], names=["features"])]))
    assert other.written == 0
    writer.close(), other.close()

    full = tmp_path / "full"
    full.mkdir()
    monkeypatch.setattr(_scratch, "room_for", lambda directory, n_bytes: False)
    plan = shards.ShardPlan(str(full), None, {0: 4}, 1, "float64")
    writer = shards._RowWriter(plan, 0, labelled=False)
    list(writer.writing([pa.record_batch([wide], names=["features"])]))
    assert writer.written == 0 and not list(full.glob("shard-*"))


def test_shards_go_to_shared_memory_when_it_has_room(tmp_path, monkeypatch):
    on_disk, in_memory = str(tmp_path / "disk"), str(tmp_path / "memory")
    room = {on_disk: True, in_memory: True}
    monkeypatch.setattr(_scratch, "room_for", lambda directory, n_bytes: room[directory])
    monkeypatch.setattr(_scratch, "available_memory", lambda: 10 << 30)
    assert _scratch.choose_scratch_dir(on_disk, in_memory, 2 << 30) == in_memory
    assert _scratch.choose_scratch_dir(on_disk, in_memory, 3 << 30) == on_disk  # > a quarter
    assert _scratch.choose_scratch_dir(on_disk, None, 1 << 30) == on_disk
    room[in_memory] = False
    assert _scratch.choose_scratch_dir(on_disk, in_memory, 1 << 30) == on_disk
    room[on_disk] = False
    assert _scratch.choose_scratch_dir(on_disk, in_memory, 1 << 30) is None


def _training_batches(X, codes, worker, position, size=3):
    from skdbn.spark.data import _WORKER, FEATURES, LABEL, POSITION

    return [pa.record_batch(
        [arrow_matrix(X[i:i + size]), pa.array(codes[i:i + size]),
         pa.array(position[i:i + size]), pa.array(worker[i:i + size].astype(np.int32))],
        names=[FEATURES, LABEL, POSITION, _WORKER]) for i in range(0, len(X), size)]


@pytest.mark.parametrize("n_tasks", [1, 2, 3])
def test_a_task_reads_the_shards_of_every_worker_it_stands_in_for(tmp_path, n_tasks):
    # After a lost executor a phase may run on fewer tasks than workers: task t trains the
    # shards of workers t, t + n_tasks, ... one after another, in both storage layouts.
    from skdbn.spark.data import read_shard, task_ranks

    rng = np.random.default_rng(1)
    n_workers, rows = 3, (4, 4, 3)
    X = rng.random((sum(rows), 5)).astype(np.float32)
    codes = rng.integers(0, 3, sum(rows))
    worker = np.arange(sum(rows)) % n_workers
    position = np.arange(sum(rows)) // n_workers
    layout = ShardLayout(rows=rows, n_features=5, dtype="float32", labelled=True,
                         mean=None, scale=None, shard_dir=str(tmp_path))
    for rank in range(n_workers):
        shards.write_array_shard(X, codes, np.flatnonzero(worker == rank), rank, layout)
    order = rng.permutation(sum(rows))  # rows of a shuffle arrive in any order
    for task in range(n_tasks):
        ranks = task_ranks(task, n_tasks, n_workers)
        expected = np.concatenate([np.flatnonzero(worker == rank) for rank in ranks])
        mine = order[np.isin(worker[order], list(ranks))]
        read = read_shard(_training_batches(X[mine], codes[mine], worker[mine],
                                            position[mine]), ranks, layout)
        saved = shards.saved_shards(ranks, layout)
        for shard in (read, saved):
            np.testing.assert_array_equal(shard.X, X[expected])
            np.testing.assert_array_equal(shard.y, codes[expected])


def test_a_task_refuses_rows_of_a_worker_it_does_not_stand_in_for():
    from skdbn.spark.data import read_shard

    X, codes = np.ones((4, 2), np.float32), np.zeros(4, np.int64)
    layout = ShardLayout(rows=(2, 2), n_features=2, dtype="float32", labelled=True,
                         mean=None, scale=None, shard_dir=None)
    batches = _training_batches(X, codes, np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1]))
    with pytest.raises(RuntimeError, match="rows outside its shard"):
        read_shard(batches, range(0, 2, 2), layout)
