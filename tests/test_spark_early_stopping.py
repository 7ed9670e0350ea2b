"""Early stopping on Spark DataFrames: the stratified validation share held out on the
executors, the training shards without it, and the stopping rule as for arrays.

Every test that takes the ``spark`` fixture runs on a classic session, and again on a Spark
Connect session with ``pytest --spark-session=connect`` (see conftest.py).
"""

import math

import numpy as np
import pytest
from sklearn.datasets import load_digits

from skdbn import DistributedDBN

pyspark = pytest.importorskip("pyspark", reason="pyspark is a dependency; needed here")

from skdbn.spark.held_out import hold_out, validation_counts  # noqa: E402

QUICK = dict(hidden_layer_sizes=(16,), pretrain_epochs=1, random_state=0)
# tol=1 is more than any accuracy can improve by: after the first epoch every epoch counts
# as one without improvement, so a fit stops after exactly 1 + n_iter_no_change epochs.
STOPPING = dict(QUICK, early_stopping=True, validation_fraction=0.2, n_iter_no_change=2,
                tol=1.0, max_iter=30)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def _frame(spark, X, y, partitions=None):
    """Features as ``array<double>``, the labels, and a row ``id`` (for the tests' checks)."""
    import pandas as pd

    frame = spark.createDataFrame(pd.DataFrame({"id": np.arange(len(X)),
                                                "features": list(X), "label": y}))
    return frame if partitions is None else frame.repartition(partitions)


def _ids(frame):
    return np.sort(frame.select("id").toPandas()["id"].to_numpy())


def test_validation_counts_share_the_fraction_out_by_class():
    sizes = np.array([50, 30, 17, 3])
    counts = validation_counts(["a", "b", "c", "d"], sizes, 0.25, seed=0)
    assert counts.sum() == math.ceil(0.25 * sizes.sum())
    share = sizes * 0.25
    assert np.all(counts >= np.floor(share)) and np.all(counts <= np.ceil(share))
    # Ties between equal remainders are drawn with the seed; the seed decides alone.
    ties = [tuple(validation_counts(range(4), [10] * 4, 0.15, seed)) for seed in range(20)]
    assert all(sum(t) == 6 for t in ties) and len(set(ties)) > 1
    assert ties == [tuple(validation_counts(range(4), [10] * 4, 0.15, s)) for s in range(20)]
    with pytest.raises(ValueError, match=r"classes \['d'\] have only 1 row"):
        validation_counts(["a", "d"], [10, 1], 0.2, 0)
    with pytest.raises(ValueError, match="at least 2 validation samples"):
        validation_counts([0, 1], [5, 5], 0.1, 0)
    with pytest.raises(ValueError, match="fewer than the 3 classes"):
        validation_counts([0, 1, 2], [2, 2, 20], 0.05, 0)


def test_the_held_out_rows_are_a_stratified_share_chosen_by_the_seed(spark, digits):
    X, y = digits
    frame = _frame(spark, X, y, partitions=3)
    split = hold_out(frame, "features", "label", np.float32, 0.2, seed=7)
    held, kept = _ids(split.validation), _ids(split.training)
    # Every row on one side only; exactly the share of each class (digits has no duplicates).
    assert len(np.intersect1d(held, kept)) == 0 and len(held) + len(kept) == len(X)
    classes, sizes = np.unique(y, return_counts=True)
    expected = validation_counts(classes.tolist(), sizes, 0.2, 7)
    np.testing.assert_array_equal(np.bincount(y[held], minlength=10), expected)
    assert split.counts == dict(zip(classes.tolist(), expected.tolist(), strict=True))
    # The seed alone decides: another partitioning gives the same rows, another seed others.
    again = hold_out(_frame(spark, X, y, partitions=2), "features", "label", np.float32, 0.2,
                     seed=7)
    np.testing.assert_array_equal(_ids(again.validation), held)
    other = hold_out(frame, "features", "label", np.float32, 0.2, seed=8)
    assert not np.array_equal(_ids(other.validation), held)


@pytest.mark.parametrize("shard_files", [True, False])
def test_a_dataframe_fit_stops_early_on_rows_it_did_not_train_on(spark, digits, monkeypatch,
                                                                  shard_files):
    # Shard files where the tasks share this machine's files, else cached partitions: both
    # must leave the held-out rows out.
    if not shard_files:
        from skdbn.spark import placement

        monkeypatch.setattr(placement, "tasks_share_files", lambda spark: False)
    X, y = digits
    frame = _frame(spark, X, y, partitions=3)
    model = DistributedDBN(n_workers=2, sync="average", **STOPPING).fit(frame)
    assert model.n_workers_ == 2
    assert model.n_iter_ == 1 + STOPPING["n_iter_no_change"] < STOPPING["max_iter"]
    assert len(model.validation_scores_) == model.n_iter_ == len(model.loss_curve_)
    assert model.best_validation_score_ == max(model.validation_scores_)
    assert model.best_loss_ is None
    # The workers trained on the rows left after the share was held out, and only on them.
    n_held = math.ceil(STOPPING["validation_fraction"] * len(X))
    pretrained = sum(row["samples"] for row in model.worker_stats_ if row["stage"] == "layer 0")
    assert pretrained == (len(X) - n_held) * QUICK["pretrain_epochs"]
    # The network kept is the best one on the held-out rows (the fit's seed chose them).
    seed = np.random.RandomState(QUICK["random_state"]).randint(np.iinfo(np.int32).max)
    held = hold_out(frame, "features", "label", np.float32, 0.2, seed).validation
    assert model.score(held) == pytest.approx(model.best_validation_score_, abs=1.5 / n_held)
    # The same seed gives the same fit.
    again = DistributedDBN(n_workers=2, sync="average", **STOPPING).fit(frame)
    assert again.validation_scores_ == model.validation_scores_


def test_a_dataframe_read_here_is_split_as_arrays_are(spark, digits):
    # Too few rows for a second worker: the DataFrame is read into this process, and its
    # validation share is the one the same arrays get.
    X, y = digits
    frame = _frame(spark, X, y, partitions=1)
    here = DistributedDBN(**STOPPING).fit(frame)
    arrays = DistributedDBN(dtype="float32", backend="local", n_workers=1,
                            **STOPPING).fit(X, y)
    assert here.n_workers_ == 1
    assert here.validation_scores_ == arrays.validation_scores_
    for a, b in zip(here.coefs_, arrays.coefs_, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_without_labels_nothing_is_held_out(spark, digits):
    X, y = digits
    frame = _frame(spark, X, y, partitions=2)
    model = DistributedDBN(n_workers=2, sync="average", label_col=None,
                           **STOPPING).fit(frame)
    assert model.validation_scores_ == [] and model.best_validation_score_ is None
    pretrained = sum(row["samples"] for row in model.worker_stats_ if row["stage"] == "layer 0")
    assert pretrained == len(X)


def test_a_class_too_small_to_share_is_refused(spark, digits):
    X, y = digits
    keep = np.r_[np.flatnonzero(y != 9), np.flatnonzero(y == 9)[:1]]
    frame = _frame(spark, X[keep], y[keep], partitions=2)
    with pytest.raises(ValueError, match=r"classes \[9\] have only 1 row"):
        DistributedDBN(n_workers=2, sync="average", **STOPPING).fit(frame)


def test_the_classifier_stage_stops_early_and_keeps_its_params(spark, digits, tmp_path):
    from pyspark.ml.functions import array_to_vector

    from skdbn.spark.ml import DBNClassifier

    X, y = digits
    frame = _frame(spark, X, y, partitions=2)
    frame = frame.withColumn("features", array_to_vector("features"))
    stage = DBNClassifier(hiddenLayerSizes=[16], pretrainEpochs=1, maxIter=30, tol=1.0,
                          earlyStopping=True, validationFraction=0.2, nIterNoChange=2,
                          numWorkers=2, sync="average", seed=0)
    path = str(tmp_path / "stage")
    stage.write().overwrite().save(path)
    loaded = DBNClassifier.load(path)
    for name, value in (("earlyStopping", True), ("validationFraction", 0.2),
                        ("nIterNoChange", 2)):
        assert loaded.getOrDefault(name) == value
    dbn = loaded.fit(frame).to_sklearn()
    assert dbn.early_stopping and dbn.n_iter_ == 3 == len(dbn.validation_scores_)
