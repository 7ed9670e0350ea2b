"""What a fit shows while it runs, what it records, and the plots of it.

Progress must reach the driver while a phase runs (not only at its end), on local processes
and on Spark tasks alike; ``verbose=0`` must print nothing; the per-epoch lines must carry the
figures the fit records; the per-worker diagnostics must be data pandas takes as it is.
"""

import contextlib
import math
import pickle
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from joblib import Parallel, delayed
from sklearn.datasets import load_digits

from skdbn import DistributedDBN, ParallelSearchWarning
from skdbn._console import StageProgress
from skdbn._transport import connect, send_frame
from skdbn._watch import (
    SNAPSHOT_FIELDS,
    ProgressClient,
    ProgressListener,
    open_progress_listener,
    progress_context,
)

EPOCHS = 4
QUICK = dict(hidden_layer_sizes=(32,), pretrain_epochs=EPOCHS, max_iter=3, random_state=0)
# A first phase of a few seconds, so that workers report several times during it.
LONGER = dict(QUICK, hidden_layer_sizes=(128,), pretrain_epochs=12)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return np.tile(X / 16.0, (2, 1)), np.tile(y, 2)


class _Recorded:
    """Calls of ``StageProgress.update`` and ``phase_done``, with their times."""

    def __init__(self, monkeypatch):
        self.updates, self.phase_ends = [], []
        self._lock = threading.Lock()
        update, phase_done = StageProgress.update, StageProgress.phase_done
        recorded = self

        def recording_update(stage, rank, snapshot):
            with recorded._lock:
                recorded.updates.append((stage.name, time.monotonic(), rank, snapshot.copy()))
            return update(stage, rank, snapshot)

        def recording_phase_done(stage, results, history, epochs):
            recorded.phase_ends.append((stage.name, time.monotonic(), epochs * stage.n_samples))
            return phase_done(stage, results, history, epochs)

        monkeypatch.setattr(StageProgress, "update", recording_update)
        monkeypatch.setattr(StageProgress, "phase_done", recording_phase_done)

    def during_first_phase(self, n_workers):
        """Updates of the first phase that arrived before it ended, from workers that had
        done less than three quarters of their share of it."""
        stage, ended, budget = self.phase_ends[0]
        samples = SNAPSHOT_FIELDS.index("samples")
        return [rank for name, at, rank, snapshot in self.updates
                if name == stage and at < ended
                and 0 < snapshot[samples] < 0.75 * budget / n_workers]


def _assert_reported_while_running(recorded, n_workers):
    assert set(recorded.during_first_phase(n_workers)) == set(range(n_workers))


def test_local_workers_report_progress_while_a_phase_runs(digits, monkeypatch, capsys):
    recorded = _Recorded(monkeypatch)
    X, y = digits
    DistributedDBN(backend="local", n_workers=2, verbose=1, **LONGER).fit(X, y)
    _assert_reported_while_running(recorded, 2)
    out = capsys.readouterr().out
    assert "pretrained layer 0" in out and "fine-tuned: 3 epochs in all" in out


def test_spark_tasks_report_progress_while_a_phase_runs(spark, digits, monkeypatch):
    recorded = _Recorded(monkeypatch)
    X, y = digits
    DistributedDBN(backend="spark", n_workers=2, verbose=1, **LONGER).fit(X, y)
    _assert_reported_while_running(recorded, 2)


def test_verbose_0_prints_nothing(digits, capfd):
    X, y = digits
    DistributedDBN(n_workers=2, backend="local", **QUICK).fit(X, y)
    DistributedDBN(**QUICK).fit(X, y)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


@pytest.mark.parametrize("n_workers", [None, 2])
def test_verbose_2_writes_each_epoch_once_with_the_recorded_figure(digits, capsys, n_workers):
    X, y = digits
    model = DistributedDBN(backend="local", n_workers=n_workers, verbose=2, **QUICK).fit(X, y)
    lines = capsys.readouterr().out.splitlines()
    layer = [line for line in lines if "layer 0: epoch" in line]
    tuning = [line for line in lines if "fine-tuning: epoch" in line]
    assert [line.split("epoch ")[1].split(",")[0] for line in layer] == [
        f"{k}/{EPOCHS}" for k in range(1, EPOCHS + 1)]
    errors = model.pretraining_history_[0]["reconstruction_error"]
    for line, error in zip(layer, errors, strict=True):
        assert f"reconstruction error {error:.5f}" in line
    for line, loss in zip(tuning, model.loss_curve_, strict=True):
        assert f"loss {loss:.5f}" in line


def test_worker_diagnostics_are_rows_for_pandas(digits):
    X, y = digits
    model = DistributedDBN(backend="local", n_workers=2, sync="average", **QUICK).fit(X, y)
    stats = pd.DataFrame(model.worker_stats_)
    assert list(stats.columns) == ["stage", "phase", "worker", "samples", "messages_sent",
                                   "messages_merged", "seconds_waiting", "seconds_reading",
                                   "seconds_training", "started", "device", "address"]
    assert set(stats["stage"]) == {"layer 0", "fine-tuning"}
    assert set(stats["device"]) == {"cpu"}  # numpy in worker processes
    # Local worker processes gossip over loopback, each on a listener of its own.
    assert all(address.startswith("127.0.0.1:") for address in stats["address"])
    assert all(group.nunique() == 2 for _, group in stats.groupby("phase")["address"])
    assert all(sorted(group) == [0, 1] for _, group in stats.groupby("phase")["worker"])
    layer = stats[stats["stage"] == "layer 0"]
    # Synchronous averaging: every worker trains the same share and exchanges at every sync.
    assert layer["samples"].sum() == pytest.approx(EPOCHS * len(X), rel=0.02)
    assert (layer["messages_sent"] > 0).all() and (layer["messages_merged"] > 0).all()
    assert (stats["seconds_training"] > 0).all() and (stats["started"] >= 0).all()
    trace = pd.DataFrame(model.worker_trace_)
    assert list(trace.columns) == ["stage", "phase", "worker", "seconds", "samples", "drift"]
    drift = trace["drift"].dropna()
    assert len(drift) > 0 and (drift > 0).all() and (drift < 1).all()
    assert trace.groupby(["phase", "worker"])["samples"].apply(
        lambda s: s.is_monotonic_increasing).all()
    copy = pickle.loads(pickle.dumps(model))
    assert copy.worker_stats_ == model.worker_stats_


def test_a_fit_in_this_process_records_one_worker_without_exchanges(digits):
    X, y = digits
    model = DistributedDBN(**QUICK).fit(X[:500], y[:500])
    stats = pd.DataFrame(model.worker_stats_)
    assert (stats["worker"] == 0).all() and (stats["messages_sent"] == 0).all()
    assert stats.loc[stats["stage"] == "layer 0", "samples"].sum() == EPOCHS * 500


def test_the_progress_listener_takes_only_authenticated_snapshots():
    secret, phase_key = b"s" * 32, 12345
    received = []
    listener = ProgressListener(secret, phase_key, 2, lambda rank, v: received.append((rank, v)))
    listener.start()
    try:
        snapshot = np.arange(len(SNAPSHOT_FIELDS), dtype=np.float64)
        ProgressClient(listener.address, secret, phase_key, 1)(snapshot)
        with contextlib.suppress(OSError):  # the wrong secret: dropped after the challenge
            ProgressClient(listener.address, b"x" * 32, phase_key, 0)(snapshot)
        # Right secret, another phase's context: the listener drops it as well.
        host, port = listener.address.rsplit(":", 1)
        conn, nonce = connect((host, int(port)), secret, progress_context(phase_key + 1), 0, 2)
        with conn, contextlib.suppress(OSError):  # dropped once its answer fails to verify
            send_frame(conn, secret, nonce, [snapshot.tobytes()])
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
    finally:
        listener.close()
    assert len(received) == 1
    rank, values = received[0]
    assert rank == 1 and np.array_equal(values, snapshot)


def test_a_listener_that_cannot_be_opened_leaves_the_fit_without_live_progress():
    class Monitor:
        def update(self, rank, snapshot):
            raise AssertionError("never called")

    # 192.0.2.1 (TEST-NET-1) is no address of this machine: binding to it fails at once,
    # and nothing is sent anywhere.
    assert open_progress_listener(b"s" * 32, 1, 2, Monitor(), host="192.0.2.1") is None
    assert open_progress_listener(b"s" * 32, 1, 2, None) is None


def _joblib_worker_warns():
    from skdbn.spark.session import _warn_if_in_joblib_worker

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _warn_if_in_joblib_worker()
    return [type(w.message).__name__ for w in caught]


def test_a_spark_session_started_in_a_joblib_worker_is_warned_about():
    from joblib.externals.loky import get_reusable_executor

    assert _joblib_worker_warns() == []
    try:
        in_workers = Parallel(n_jobs=2)(delayed(_joblib_worker_warns)() for _ in range(2))
    finally:  # joblib keeps its worker processes for the next call: end them now
        get_reusable_executor().shutdown(wait=True, kill_workers=True)
    assert in_workers == [[ParallelSearchWarning.__name__]] * 2


def test_the_html_repr_links_to_the_estimator_page():
    html = DistributedDBN()._repr_html_()
    assert 'href="https://skdbn.readthedocs.io/en/latest/api.html#skdbn.DistributedDBN"' in html


# ------------------------------------------------------------------------------- plots

@pytest.fixture(scope="module")
def agg():
    import matplotlib

    matplotlib.use("Agg")  # no window: draw into memory


@pytest.fixture(scope="module")
def fitted(digits, agg):
    X, y = digits
    return DistributedDBN(hidden_layer_sizes=(36, 16), pretrain_epochs=3, max_iter=4,
                          early_stopping=True, backend="local", n_workers=2,
                          random_state=0).fit(X, y)


def test_filters_show_each_unit_as_an_image(fitted):
    from skdbn.plotting import FiltersDisplay

    display = FiltersDisplay.from_estimator(fitted, n_filters=10)
    grid = display.image_.get_array()
    assert display.filters.shape == (10, 8, 8)
    assert grid.shape == (3 * 9 - 1, 4 * 9 - 1)  # 4 columns, 3 rows, 1-pixel gaps
    np.testing.assert_allclose(np.nanmax(grid), 1.0)
    upper = FiltersDisplay.from_estimator(fitted, layer=1)
    assert upper.filters.shape == (16, 8, 8)
    with pytest.raises(ValueError, match="layer"):
        FiltersDisplay.from_estimator(fitted, layer=2)
    with pytest.raises(ValueError, match="image_shape"):
        FiltersDisplay.from_estimator(fitted, image_shape=(7, 9))


def test_training_curves_draw_every_recorded_figure(fitted):
    import matplotlib.pyplot as plt

    from skdbn.plotting import TrainingCurvesDisplay

    display = TrainingCurvesDisplay.from_estimator(fitted)
    assert set(display.lines_) == {"layer 0", "layer 1", "loss", "validation score"}
    np.testing.assert_allclose(display.lines_["loss"].get_ydata(), fitted.loss_curve_)
    np.testing.assert_allclose(display.lines_["layer 1"].get_ydata(),
                               fitted.pretraining_history_[1]["reconstruction_error"])
    figure, axes = plt.subplots(1, 2)
    assert TrainingCurvesDisplay.from_estimator(fitted, ax=axes).figure_ is figure
    with pytest.raises(ValueError, match="2 axes"):
        TrainingCurvesDisplay.from_estimator(fitted, ax=axes[0])


def test_validation_scores_of_a_warm_start_are_drawn_against_its_own_epochs(agg):
    from skdbn.plotting import TrainingCurvesDisplay

    display = TrainingCurvesDisplay([[0.3, 0.2]], [1.0, 0.8, 0.7, 0.6], [0.9, 0.95]).plot()
    np.testing.assert_array_equal(display.lines_["validation score"].get_xdata(), [3, 4])


def test_worker_display_draws_a_line_per_worker(fitted):
    from skdbn.plotting import WorkerDisplay

    drift = WorkerDisplay.from_estimator(fitted)
    assert set(drift.lines_) == {0, 1}
    assert drift.ax_.get_yscale() == "log"
    samples = WorkerDisplay.from_estimator(fitted, kind="samples")
    ys = samples.lines_[0].get_ydata()
    assert np.nanmax(ys) > 0
    with pytest.raises(ValueError, match="kind"):
        WorkerDisplay.from_estimator(fitted, kind="speed")


def test_importing_the_plots_does_not_import_matplotlib():
    code = ("import sys, skdbn.plotting, skdbn; skdbn.DistributedDBN; "
            "print('matplotlib' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.slow
def test_a_loopback_session_starts_without_log_noise(tmp_path):
    code = ("from skdbn import loopback_session\n"
            "spark = loopback_session('local[1]')\n"
            "print(spark.range(3).count())\n"
            "spark.stop()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "3"
    # The JVM itself announces its incubator modules; Spark's logging says nothing.
    noise = [line for line in result.stderr.splitlines()
             if line.strip() and not line.startswith("WARNING: Using incubator modules")]
    assert noise == []


def test_snapshot_fields_are_finite_or_nan():
    from skdbn._watch import WorkerLog

    log = WorkerLog()
    log.trained(10)
    log.ended_epochs(1, 0.5)
    values = log.snapshot()
    assert len(values) == len(SNAPSHOT_FIELDS)
    assert values[0] == 10 and values[1] == 1 and values[2] == 0.5
    assert math.isnan(values[SNAPSHOT_FIELDS.index("drift")])
