"""Damaging checkpoints on disk, and interrupting fits after some phases, for the checkpoint
tests and the fault matrix (``benchmarks/fault_matrix.py``)."""

import json
import os

import numpy as np

from skdbn import DistributedDBN


def interrupted_fit(directory, params, X, y, phases):
    """Fit with ``checkpoint_dir=directory`` until ``phases`` phases are saved, then stop as a
    killed driver would (nothing after that phase is written)."""
    from skdbn._processes import ProcessEngine

    original, calls = ProcessEngine.run_phase, {"n": 0}

    def run_phase(engine, *args):
        calls["n"] += 1
        if calls["n"] > phases:
            raise KeyboardInterrupt("the driver stops here")
        return original(engine, *args)

    ProcessEngine.run_phase = run_phase
    try:
        DistributedDBN(checkpoint_dir=str(directory), **params).fit(X, y)
    except KeyboardInterrupt:
        return
    finally:
        ProcessEngine.run_phase = original
    raise AssertionError(f"the fit ended within {phases} phases")


def rewrite(path, change):
    """Rewrite the checkpoint at ``path`` with ``change(arrays, meta)`` applied."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(str(arrays["meta"][()]))
    change(arrays, meta)
    arrays["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _nan_layer(arrays, meta):
    arrays["layer_0"] = np.full_like(arrays["layer_0"], np.nan)


def _wrong_metadata(arrays, meta):
    meta["no_improvement_count"] = "three"


DAMAGE = {
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:100]),
    "empty": lambda path: path.write_bytes(b""),
    "garbage": lambda path: path.write_bytes(os.urandom(2000)),
    "NaN arrays": lambda path: rewrite(path, _nan_layer),
    "wrong metadata": lambda path: rewrite(path, _wrong_metadata),
}


def damage(kind, path):
    """Damage the checkpoint file at ``path`` (a ``pathlib.Path``) in the way ``kind`` says."""
    DAMAGE[kind](path)
