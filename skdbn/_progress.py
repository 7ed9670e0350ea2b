"""What a fit has achieved so far, and its checkpoint on disk.

The estimator records every finished phase in a ``TrainingProgress``; with ``checkpoint_dir``
set the progress is written after each phase (atomically) and a later fit with the same
settings and data resumes from it. Checkpoints hold arrays and JSON only and are read with
``allow_pickle=False``.
"""

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sp

CHECKPOINT_FILE = "skdbn-checkpoint.npz"
_FORMAT_VERSION = 1


@dataclass
class TrainingProgress:
    """State of a fit between phases; all arrays are flat parameter vectors."""

    seed: int
    layers: list = field(default_factory=list)
    layer_means: list = field(default_factory=list)
    pretraining_history: list = field(default_factory=list)
    network: np.ndarray | None = None
    velocity: np.ndarray | None = None
    best_network: np.ndarray | None = None
    loss_curve: list = field(default_factory=list)
    validation_scores: list = field(default_factory=list)
    best_loss: float = np.inf
    best_validation_score: float = -np.inf
    no_improvement_count: int = 0
    finetune_done: bool = False

    @property
    def n_iter(self):
        """Fine-tuning epochs run so far."""
        return len(self.loss_curve)


def fingerprint(estimator_params, X, y, classes):
    """Digest of everything that determines a fit: parameters, data and classes.

    A checkpoint is only resumed by a fit with the same fingerprint, so a stale checkpoint
    of another run is never mixed into this one.
    """
    digest = hashlib.sha256()
    ignored = {"checkpoint_dir", "verbose", "warm_start"}
    settings = {k: repr(v) for k, v in sorted(estimator_params.items()) if k not in ignored}
    digest.update(json.dumps(settings).encode())
    parts = [X.data, X.indices, X.indptr] if sp.issparse(X) else [X]
    parts += [y if y is not None else np.array([]), classes if classes is not None else []]
    for part in parts:
        part = np.ascontiguousarray(part)
        digest.update(str((part.shape, part.dtype.str)).encode())
        digest.update(part.tobytes() if part.dtype != object else repr(part.tolist()).encode())
    return digest.hexdigest()


def save_checkpoint(directory, key, progress):
    """Write ``progress`` under ``directory``, replacing any earlier checkpoint atomically."""
    os.makedirs(directory, exist_ok=True)
    arrays = {f"layer_{i}": layer for i, layer in enumerate(progress.layers)}
    arrays.update({f"layer_mean_{i}": m for i, m in enumerate(progress.layer_means)})
    for name in ("network", "velocity", "best_network"):
        if getattr(progress, name) is not None:
            arrays[name] = getattr(progress, name)
    meta = {k: v for k, v in asdict(progress).items()
            if k not in {"layers", "layer_means", "network", "velocity", "best_network"}}
    meta.update(version=_FORMAT_VERSION, key=key, n_layers=len(progress.layers),
                n_layer_means=len(progress.layer_means))
    arrays["meta"] = np.array(json.dumps(meta, default=float))
    handle, tmp_path = tempfile.mkstemp(dir=directory, suffix=".tmp.npz")
    try:
        with os.fdopen(handle, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp_path, os.path.join(directory, CHECKPOINT_FILE))
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise


def load_checkpoint(directory, key):
    """The progress saved under ``directory`` for fingerprint ``key``, or None."""
    path = os.path.join(directory, CHECKPOINT_FILE)
    if not os.path.exists(path):
        return None
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        if meta.get("version") != _FORMAT_VERSION or meta.get("key") != key:
            return None
        layers = [data[f"layer_{i}"] for i in range(meta.pop("n_layers"))]
        layer_means = [data[f"layer_mean_{i}"] for i in range(meta.pop("n_layer_means"))]
        arrays = {name: data.get(name) for name in ("network", "velocity", "best_network")}
    meta.pop("version")
    meta.pop("key")
    return TrainingProgress(layers=layers, layer_means=layer_means, **arrays, **meta)
