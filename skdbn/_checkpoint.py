"""What a fit has achieved so far, and its checkpoint on disk.

The training schedule records every finished phase in a ``TrainingState``; with
``checkpoint_dir`` set the state is written after each phase, and a later fit with the same
settings and data resumes from it. Checkpoints hold arrays and JSON only and are read with
``allow_pickle=False``.

A checkpoint is written to a temporary file, flushed to disk and then renamed over the
previous one, which is kept beside it: a crash while writing leaves both valid. A checkpoint
that cannot be read or does not hold what this fit needs (shapes, dtypes, finite values, the
type of every field) is set aside with a ``CheckpointWarning`` naming the file and the reason,
and the fit resumes from the previous checkpoint, or starts afresh.
"""

import contextlib
import hashlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sp

from ._digest import digest_arrays
from ._network import network_layout
from ._params import MODEL_NEUTRAL
from ._rbm import rbm_layout

CHECKPOINT_FILE = "skdbn-checkpoint.npz"
PREVIOUS_FILE = "skdbn-checkpoint.previous.npz"
_FORMAT_VERSION = 1
_ARRAYS = ("network", "velocity", "best_network")


class CheckpointWarning(UserWarning):
    """A checkpoint file was damaged, so it was set aside and not resumed."""


class DamagedCheckpoint(ValueError):
    """A checkpoint that does not hold a valid state of the fit that reads it."""


@dataclass
class TrainingState:
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


# Settings whose effect the data's part of a fingerprint holds already: the training dtype is
# the dtype of the arrays hashed (or of the DataFrame summarised), so a checkpoint of 0.1.0,
# which had no such setting, resumes under the dtype it trained in.
_HELD_BY_THE_DATA = frozenset({"dtype"})


def _settings_digest(estimator_params, classes):
    digest = hashlib.sha256()
    settings = {k: repr(v) for k, v in sorted(estimator_params.items())
                if k not in MODEL_NEUTRAL and k not in _HELD_BY_THE_DATA}
    digest.update(json.dumps(settings).encode())
    classes = np.asarray(classes if classes is not None else [])
    digest.update(repr(classes.tolist()).encode())
    return digest


def fingerprint(estimator_params, X, y, classes):
    """Digest of everything that determines a fit: parameters, data and classes.

    A checkpoint is only resumed by a fit with the same fingerprint, so a stale checkpoint
    of another run is never mixed into this one.
    """
    digest = _settings_digest(estimator_params, classes)
    parts = [X.data, X.indices, X.indptr] if sp.issparse(X) else [X]
    parts += [y if y is not None else np.array([])]
    return digest_arrays(digest, parts).hexdigest()


def frame_fingerprint(estimator_params, summary, classes):
    """Digest of a DataFrame fit: parameters, and what the statistics pass saw of the data.

    A DataFrame is recognised as the same training data by its content as summarised: row
    count, rows of each partition (which decide the workers' shards), number of features,
    per-feature mean, variance and extremes, and the classes. Rows changed, added, removed or
    moved to other partitions give another fingerprint.
    """
    digest = _settings_digest(estimator_params, classes)
    digest.update(json.dumps([summary.n_samples, summary.n_features, str(summary.dtype),
                              sorted(summary.partition_rows.items())]).encode())
    for values in (summary.mean, summary.variance, summary.minimum, summary.maximum):
        digest.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
    return digest.hexdigest()


def save_checkpoint(directory, key, state):
    """Write ``state`` under ``directory``, replacing any earlier checkpoint atomically."""
    os.makedirs(directory, exist_ok=True)
    arrays = {f"layer_{i}": layer for i, layer in enumerate(state.layers)}
    arrays.update({f"layer_mean_{i}": m for i, m in enumerate(state.layer_means)})
    for name in ("network", "velocity", "best_network"):
        if getattr(state, name) is not None:
            arrays[name] = getattr(state, name)
    meta = {k: v for k, v in asdict(state).items()
            if k not in {"layers", "layer_means", "network", "velocity", "best_network"}}
    meta.update(version=_FORMAT_VERSION, key=key, n_layers=len(state.layers),
                n_layer_means=len(state.layer_means))
    arrays["meta"] = np.array(json.dumps(meta, default=_plain))
    handle, tmp_path = tempfile.mkstemp(dir=directory, prefix=f"{_TMP_PREFIX}{os.getpid()}.",
                                        suffix=_TMP_SUFFIX)
    current = os.path.join(directory, CHECKPOINT_FILE)
    try:
        with os.fdopen(handle, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        if os.path.exists(current):
            os.replace(current, os.path.join(directory, PREVIOUS_FILE))
        os.replace(tmp_path, current)
        _sync_directory(directory)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise


def _plain(value):
    """Numpy scalars as the JSON values of their Python types (a ``np.bool_`` as a bool)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} cannot go into a checkpoint")


def _sync_directory(directory):
    """Make the renames in ``directory`` durable (where the platform allows)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


# A checkpoint being written is "<prefix><writer's pid>.<random><suffix>" until it is complete.
_TMP_PREFIX = "skdbn-checkpoint.writing."
_TMP_SUFFIX = ".tmp.npz"


def _remove_abandoned_writes(directory):
    """Delete the half-written checkpoints of writers that died (their pid is gone)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if not (name.startswith(_TMP_PREFIX) and name.endswith(_TMP_SUFFIX)):
                continue
            pid = name[len(_TMP_PREFIX):].split(".", 1)[0]
            if pid.isdigit() and not _process_exists(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def load_checkpoint(directory, key, check):
    """The latest valid state saved under ``directory`` for fingerprint ``key``.

    ``check(state)`` raises ``DamagedCheckpoint`` when the state does not fit this fit
    (see :func:`check_state`). A damaged file is set aside with a ``CheckpointWarning`` and
    the previous checkpoint is tried; a checkpoint of another fit (another fingerprint) is
    left to be replaced.

    Returns
    -------
    state : TrainingState or None
    path : str or None
        The file it came from.
    """
    _remove_abandoned_writes(directory)
    for name in (CHECKPOINT_FILE, PREVIOUS_FILE):
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        try:
            saved_key, state = _read_checkpoint(path)
            if saved_key != key:
                continue
            check(state)
        except Exception as error:  # every way a file can be damaged: set it aside
            _set_aside(path, error)
            continue
        return state, path
    return None, None


def _read_checkpoint(path):
    _check_members(path)
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"][()]))
        if not isinstance(meta, dict) or meta.get("version") != _FORMAT_VERSION:
            raise DamagedCheckpoint("not a checkpoint of this format version")
        key = meta.pop("key")
        meta.pop("version")
        _check_meta(meta)
        layers = [data[f"layer_{i}"] for i in range(meta.pop("n_layers"))]
        layer_means = [data[f"layer_mean_{i}"] for i in range(meta.pop("n_layer_means"))]
        arrays = {name: data[name] if name in data.files else None for name in _ARRAYS}
    return key, TrainingState(layers=layers, layer_means=layer_means, **arrays, **meta)


def _check_members(path):
    """Refuse an archive whose members would inflate when read: checkpoints are written
    uncompressed, so a compressed member is not one of ours (and could be a zip bomb)."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            if member.compress_type != zipfile.ZIP_STORED or \
                    member.file_size != member.compress_size:
                raise DamagedCheckpoint(f"member {member.filename} is compressed")


def _set_aside(path, error):
    aside = f"{path}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    reason = f"{type(error).__name__}: {error}"
    try:
        os.replace(path, aside)
    except OSError as exc:
        aside = f"(could not be moved: {exc})"
    warnings.warn(f"checkpoint {path} is damaged and was not resumed ({reason}); it is "
                  f"now {aside}", CheckpointWarning, stacklevel=4)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_meta(meta):
    """Raise ``DamagedCheckpoint`` unless every metadata field has its type."""
    integers = ("seed", "no_improvement_count", "n_layers", "n_layer_means")
    expected = set(integers) | {"pretraining_history", "loss_curve", "validation_scores",
                                "best_loss", "best_validation_score", "finetune_done"}
    if set(meta) != expected:
        raise DamagedCheckpoint(f"fields {sorted(set(meta) ^ expected)} do not belong")
    for name in integers:
        if not isinstance(meta[name], int) or isinstance(meta[name], bool) or meta[name] < 0:
            raise DamagedCheckpoint(f"{name} is not a count: {meta[name]!r}")
    for name in ("best_loss", "best_validation_score"):
        if not _is_number(meta[name]) or np.isnan(meta[name]):
            raise DamagedCheckpoint(f"{name} is not a number: {meta[name]!r}")
    if not isinstance(meta["finetune_done"], bool):
        raise DamagedCheckpoint("finetune_done is not a boolean")
    for name in ("loss_curve", "validation_scores"):
        values = meta[name]
        if not isinstance(values, list) or not all(_is_number(v) and np.isfinite(v)
                                                   for v in values):
            raise DamagedCheckpoint(f"{name} is not a list of finite numbers")
    history = meta["pretraining_history"]
    if not isinstance(history, list) or not all(
            isinstance(h, dict) and all(isinstance(k, str) and isinstance(v, list)
                                        and all(_is_number(x) for x in v)
                                        for k, v in h.items()) for h in history):
        raise DamagedCheckpoint("pretraining_history is not a list of {name: numbers}")


def check_state(state, layer_sizes, n_classes, dtype):
    """Raise ``DamagedCheckpoint`` unless ``state`` is a state of a fit of ``layer_sizes``
    (``[n_features, *hidden]``) with ``n_classes`` classes (None: unlabelled) in ``dtype``.
    """
    def check_array(name, array, size):
        if array.dtype != dtype or array.shape != (size,):
            raise DamagedCheckpoint(f"{name} is {array.dtype}{array.shape}, expected "
                                    f"{np.dtype(dtype)}({size},)")
        if not np.all(np.isfinite(array)):
            raise DamagedCheckpoint(f"{name} holds NaN or infinity")

    n_hidden = len(layer_sizes) - 1
    if len(state.layers) > n_hidden or len(state.layer_means) != len(state.layers) \
            or len(state.pretraining_history) != len(state.layers):
        raise DamagedCheckpoint(f"{len(state.layers)} layers, {len(state.layer_means)} "
                                f"layer means and {len(state.pretraining_history)} "
                                f"histories for a network of {n_hidden} hidden layers")
    for i, layer in enumerate(state.layers):
        size = sum(int(np.prod(s)) for s in rbm_layout(*layer_sizes[i:i + 2]).values())
        check_array(f"layer {i}", layer, size)
        mean = state.layer_means[i]
        if mean.dtype.kind != "f" or mean.shape != (layer_sizes[i + 1],) or \
                not np.all((mean >= 0) & (mean <= 1)):
            raise DamagedCheckpoint(f"the mean activation of layer {i} is not valid")
    for i, history in enumerate(state.pretraining_history):
        if not all(np.all(np.isfinite(values)) for values in history.values()):
            raise DamagedCheckpoint(f"the history of layer {i} holds NaN or infinity")
    scores = state.validation_scores
    best_is_lost = bool(scores) and not np.isfinite(state.best_validation_score)
    if len(scores) > state.n_iter or best_is_lost or \
            state.no_improvement_count > state.n_iter:
        raise DamagedCheckpoint("the fine-tuning figures do not add up")
    arrays = [getattr(state, name) for name in _ARRAYS]
    if n_classes is None or state.network is None:
        if any(a is not None for a in arrays) or state.loss_curve or state.finetune_done:
            raise DamagedCheckpoint("fine-tuning state in a fit that has none yet")
        return
    size = sum(int(np.prod(s)) for s in network_layout([*layer_sizes, n_classes]).values())
    for name, array in zip(_ARRAYS, arrays, strict=True):
        if array is not None:
            check_array(name, array, size)
    if state.velocity is None or len(state.layers) != n_hidden:
        raise DamagedCheckpoint("a fine-tuning state without its velocity or its layers")
