"""Checkpoints: a driver killed mid-fit resumes; damaged checkpoints never load silently."""

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from bad_checkpoints import DAMAGE, damage, interrupted_fit, rewrite
from sklearn.datasets import load_digits

from skdbn import CheckpointWarning, DistributedDBN
from skdbn._checkpoint import CHECKPOINT_FILE, PREVIOUS_FILE

PARAMS = dict(hidden_layer_sizes=(32, 16), pretrain_epochs=3, max_iter=3, backend="local",
              n_workers=2, sync="average", random_state=0)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


@pytest.fixture(scope="module")
def reference(digits):
    return DistributedDBN(**PARAMS).fit(*digits)


def _assert_same_model(model, reference):
    for a, b in zip(model.coefs_ + model.intercepts_, reference.coefs_ + reference.intercepts_,
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert model.loss_curve_ == reference.loss_curve_


def _interrupted_fit(directory, digits, phases):
    interrupted_fit(directory, PARAMS, *digits, phases=phases)


def test_a_killed_driver_resumes_at_its_last_phase(digits, reference, tmp_path):
    # The driver is a real process, killed with SIGKILL once its first phase is saved.
    script = textwrap.dedent(f"""
        import numpy as np
        from sklearn.datasets import load_digits
        from skdbn import DistributedDBN
        X, y = load_digits(return_X_y=True)
        DistributedDBN(checkpoint_dir={str(tmp_path)!r}, verbose=1, **{PARAMS!r}).fit(X / 16.0, y)
        print("FINISHED", flush=True)
    """)
    # A session of its own, so that killing its process group kills its worker processes too.
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in process.stdout:  # one line per phase at verbose=1
            if "pretrained layer 0" in line:
                break
        deadline = time.monotonic() + 30
        while not (tmp_path / CHECKPOINT_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        process.stdout.close()
        # What the killed driver (and its worker pool's resource tracker) could not clean
        # up: joblib's folders for its workers' data, and loky's semaphores.
        for folder in glob.glob(f"/dev/shm/joblib_memmapping_folder_{process.pid}_*"):
            shutil.rmtree(folder, ignore_errors=True)
        for semaphore in glob.glob(f"/dev/shm/sem.loky-{process.pid}-*"):
            with contextlib.suppress(OSError):
                os.remove(semaphore)
        process.stderr.close()
    assert (tmp_path / CHECKPOINT_FILE).exists()
    resumed = _fit_and_capture(tmp_path, digits)
    assert resumed["output"].count("resumed from") == 1
    _assert_same_model(resumed["model"], reference)


def _fit_and_capture(directory, digits, **changes):
    import contextlib
    import io

    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        model = DistributedDBN(checkpoint_dir=str(directory), verbose=1,
                               **{**PARAMS, **changes}).fit(*digits)
    return {"model": model, "output": output.getvalue()}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_checkpoint_is_set_aside_and_the_previous_one_resumed(digits, reference,
                                                                       tmp_path, kind):
    _interrupted_fit(tmp_path, digits, phases=2)  # both layers pretrained, two files
    assert (tmp_path / PREVIOUS_FILE).exists()
    damage(kind, tmp_path / CHECKPOINT_FILE)
    with pytest.warns(CheckpointWarning, match=CHECKPOINT_FILE) as caught:
        resumed = _fit_and_capture(tmp_path, digits)
    assert "was not resumed" in str(caught[0].message)
    assert any(name.startswith(CHECKPOINT_FILE + ".damaged-") for name in os.listdir(tmp_path))
    assert "resumed from" in resumed["output"] and PREVIOUS_FILE in resumed["output"]
    _assert_same_model(resumed["model"], reference)


def test_damaged_checkpoints_without_a_good_one_start_afresh(digits, reference, tmp_path):
    _interrupted_fit(tmp_path, digits, phases=1)  # one file only
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.warns(CheckpointWarning):
        resumed = _fit_and_capture(tmp_path, digits)
    assert "resumed from" not in resumed["output"]
    _assert_same_model(resumed["model"], reference)
    # The next fit of the same data resumes from the finished fit's checkpoint, quietly.
    again = _fit_and_capture(tmp_path, digits)
    assert "resumed from" in again["output"]


def test_a_checkpoint_of_other_shapes_is_not_loaded(digits, tmp_path):
    _interrupted_fit(tmp_path, digits, phases=1)
    # Same fingerprint but another architecture can only come from a tampered file: swap
    # the layer for one of the wrong size under the right key.
    rewrite(tmp_path / CHECKPOINT_FILE,
             lambda arrays, meta: arrays.update(layer_0=np.zeros(10)))
    with pytest.warns(CheckpointWarning, match=r"layer 0 is float64\(10,\)"):
        _fit_and_capture(tmp_path, digits)


def test_half_written_checkpoints_of_dead_writers_are_removed(digits, tmp_path):
    # A driver killed while writing leaves its temporary file; the next fit removes it, but
    # not the file a live process is still writing.
    dead = tmp_path / f"skdbn-checkpoint.writing.{_dead_pid()}.x1.tmp.npz"
    live = tmp_path / f"skdbn-checkpoint.writing.{os.getppid()}.x2.tmp.npz"
    dead.write_bytes(b"half a checkpoint")
    live.write_bytes(b"being written")
    DistributedDBN(checkpoint_dir=str(tmp_path), **PARAMS).fit(*digits)
    assert not dead.exists() and live.exists()
    assert (tmp_path / CHECKPOINT_FILE).exists()


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=60)
    return process.pid
