"""What a fit trains on: ``TrainingData``, and how arrays become one.

Arrays are validated (scikit-learn's ``validate_data``), their classes found, the kind of the
first layer's visible units and the standardisation of Gaussian units learned (or kept from
the model a warm start continues), and a validation share split off for early stopping. A
Spark DataFrame becomes the same kind of ``TrainingData`` in ``spark.training_frame``, which
shares the rules here (classes, standardisation, the Bernoulli range).
"""

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.model_selection import train_test_split
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import validate_data

from ._checkpoint import TrainingState, fingerprint
from ._flat import FlatParams
from ._network import network_from_layers
from ._rbm import BERNOULLI, GAUSSIAN, rbm_layout

# What a Spark DataFrame trains in unless the dtype setting says otherwise: its vectors hold
# doubles, and float32 trains about twice as fast with the same accuracy (docs/benchmarks.md).
DATAFRAME_DTYPE = np.dtype(np.float32)

BERNOULLI_RANGE_MESSAGE = (
    "visible_units='bernoulli' needs every value of X in [0, 1]; scale the data "
    "(e.g. MinMaxScaler) or use visible_units='gaussian' or 'auto'"
)


@dataclass(frozen=True)
class WarmStart:
    """What a fitted model fixes for a fit that continues it (``warm_start=True``, or
    ``partial_fit`` after the first call): its input, its classes and its layers.

    Attributes
    ----------
    n_features : int
        Features it was fitted on.
    visible_units : {"bernoulli", "gaussian"}
        Kind of its first layer's visible units.
    mean, scale : ndarray of shape (n_features,) or None
        Standardisation of Gaussian visible units; None for Bernoulli units.
    classes : ndarray of shape (n_classes,) or None
        Its classes; None when it was fitted without labels.
    layer_sizes : tuple of int
        Hidden units of its pretrained layers, bottom to top.
    dtype : numpy.dtype
        The dtype it was trained in, which a fit that continues it keeps unless the
        ``dtype`` setting says otherwise.
    """

    n_features: int
    visible_units: str
    mean: np.ndarray | None
    scale: np.ndarray | None
    classes: np.ndarray | None
    layer_sizes: tuple
    dtype: np.dtype = None

    def check_layers(self, hidden_sizes):
        """Raise unless ``hidden_sizes`` are the model's layers."""
        if tuple(hidden_sizes) != self.layer_sizes:
            raise ValueError(
                f"hidden_layer_sizes differs from the fitted model's layers "
                f"{list(self.layer_sizes)}; set warm_start=False to train a new model"
            )


@dataclass
class TrainingData:
    """What the training schedule trains on, wherever the data lives.

    Arrays held by this process are ``X`` and the class ``codes``; a Spark DataFrame left on
    the cluster is ``frame`` (``spark.training_frame.DealtFrame``: where each worker's shard
    is), already dealt to the workers of ``workers`` (an ``_engines.WorkerPlan``). Used as a
    context manager, it removes the shard files a DataFrame's preparation wrote (whoever
    writes shard files removes them: the engine those it writes from arrays).

    Attributes
    ----------
    n_samples, n_features : int
        Training rows (without a validation share) and features.
    dtype : numpy.dtype
        The dtype training runs in.
    input_mean : ndarray of shape (n_features,)
        Mean of the first layer's input (after standardisation), for its visible biases.
    visible_units : {"bernoulli", "gaussian"}
        Kind of the first layer's visible units.
    mean, scale : ndarray of shape (n_features,) or None
        Standardisation of Gaussian visible units; None for Bernoulli units.
    classes : ndarray of shape (n_classes,) or None
        Sorted class labels; None without labels (pretraining only).
    X : array-like of shape (n_samples, n_features) or None
        The training rows, when this process holds them.
    codes : ndarray of shape (n_samples,) or None
        Each row's class as an index into ``classes``.
    validation : tuple of (X_val, codes_val) or None
        The rows held out for early stopping.
    checkpoint_key : str or None
        The fit's checkpoint fingerprint, when it checkpoints.
    frame : DealtFrame or None
        A DataFrame's shards on the cluster.
    workers : WorkerPlan or None
        The workers the data was dealt to (None: the schedule chooses them).
    """

    n_samples: int
    n_features: int
    dtype: np.dtype
    input_mean: np.ndarray
    visible_units: str
    mean: np.ndarray | None
    scale: np.ndarray | None
    classes: np.ndarray | None
    X: object = None
    codes: np.ndarray | None = None
    validation: tuple | None = None
    checkpoint_key: str | None = None
    frame: object = None
    workers: object = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.frame is not None:
            self.frame.close()


def prepare_arrays(estimator, X, y, settings, warm, seed):
    """The ``TrainingData`` of ``fit(X, y)``; ``warm`` is the ``WarmStart`` of a warm-start
    fit, else None (``validate_data`` then resets ``estimator``'s input attributes).

    ``seed`` draws the validation split of early stopping.
    """
    X, y = validated(estimator, X, y, warm, settings.visible_units,
                     dtype_setting(settings.dtype, warm))
    if warm is not None:
        warm.check_layers(settings.hidden_sizes)
    classes = classes_for_fit(y, warm)
    kind, mean, scale = _visible_units(X, settings.visible_units, warm)
    X_train, y_train, validation = split_validation(X, y, classes, seed, settings)
    key = None
    if settings.checkpoint_dir is not None and warm is None:
        key = fingerprint(settings.params(), X, y, classes)
    return arrays_data(X_train, y_train, classes, kind, mean, scale, validation=validation,
                       checkpoint_key=key)


def prepare_partial_arrays(estimator, X, y, classes, settings, warm):
    """The ``TrainingData`` of ``partial_fit(X, y, classes)`` (``warm``: as for
    :func:`prepare_arrays`, None on the first call)."""
    X, y = validated(estimator, X, y, warm, settings.visible_units,
                     dtype_setting(settings.dtype, warm))
    kind, mean, scale = _visible_units(X, settings.visible_units, warm)
    if warm is not None:
        warm.check_layers(settings.hidden_sizes)
    classes = classes_for_partial_fit(y, classes, warm)
    return arrays_data(X, y, classes, kind, mean, scale)


def dtype_setting(setting, warm):
    """The dtype a fit converts its input to: the ``dtype`` setting, else, for a fit that
    continues a model (``warm``), the model's dtype; None: the input's own rule."""
    if setting is not None or warm is None:
        return setting
    return warm.dtype


def frame_dtype(setting):
    """The dtype a DataFrame trains in: the ``dtype`` setting, else ``DATAFRAME_DTYPE``."""
    return np.dtype(DATAFRAME_DTYPE if setting is None else setting)


def array_dtypes(setting):
    """The dtypes an array may train in, for ``validate_data``: the ``dtype`` setting, else
    scikit-learn's rule (float32 stays float32, anything else becomes float64)."""
    return [np.float64, np.float32] if setting is None else np.dtype(setting)


def arrays_data(X, y, classes, visible_units, mean, scale, validation=None,
                checkpoint_key=None):
    """``TrainingData`` of validated arrays held by this process (``y``: labels or None),
    with the rows held out for early stopping and the checkpoint fingerprint, if any."""
    if mean is None:
        input_mean = np.asarray(X.mean(axis=0)).ravel()
    else:
        input_mean = np.zeros(X.shape[1], dtype=X.dtype)  # standardized
    codes = None if y is None else np.searchsorted(classes, y)
    return TrainingData(X.shape[0], X.shape[1], X.dtype, input_mean, visible_units, mean,
                        scale, classes, X=X, codes=codes, validation=validation,
                        checkpoint_key=checkpoint_key)


def validated(estimator, X, y, warm, visible_units, dtype=None):
    """``X`` (float in the ``dtype`` setting's dtype, CSR with sorted indices) and ``y`` as
    ``validate_data`` checks them, and in [0, 1] for Bernoulli visible units (``warm``'s,
    else the ``visible_units`` setting)."""
    reset = warm is None
    dtypes = array_dtypes(dtype)
    if y is None:
        X = validate_data(estimator, X, accept_sparse="csr", dtype=dtypes, reset=reset)
    else:
        X, y = validate_data(estimator, X, y, accept_sparse="csr", dtype=dtypes, reset=reset)
        check_classification_targets(y)
    if X.shape[0] < 1:
        raise ValueError("Found array with 0 sample(s) while a minimum of 1 is required.")
    if sp.issparse(X):
        X.sort_indices()
    kind = visible_units if warm is None else warm.visible_units
    if kind == BERNOULLI and not within_unit_interval(X):
        raise ValueError(BERNOULLI_RANGE_MESSAGE)
    return X, y


def classes_for_fit(y, warm):
    """The sorted classes of labels ``y`` (None without labels), which a warm start must
    share with its model."""
    if y is None:
        return None
    classes = unique_labels(y)
    if len(classes) < 2:
        raise ValueError(
            "The number of classes has to be greater than one; got 1 class. A classifier "
            "needs samples of at least 2 classes (call fit(X) without y to only pretrain)."
        )
    previous = None if warm is None else warm.classes
    if previous is not None and not np.array_equal(previous, classes):
        raise ValueError(
            f"warm_start fit got classes {classes}, but the model was trained on "
            f"{previous}; set warm_start=False to train a new model"
        )
    return classes


def classes_for_partial_fit(y, classes, warm):
    """The classes of a ``partial_fit`` call: ``classes`` (needed on the first labelled
    call, the model's after it), checked against the labels ``y``."""
    if y is None:
        return None
    previous = None if warm is None else warm.classes
    if classes is not None:
        classes = unique_labels(classes)
        if previous is not None and not np.array_equal(previous, classes):
            raise ValueError(
                f"classes={classes} is not the same as on an earlier call to partial_fit "
                f"or fit ({previous})"
            )
    elif previous is None:
        raise ValueError("classes must be passed on the first call to partial_fit "
                         "with labels.")
    classes = previous if classes is None else classes
    if len(classes) < 2:
        raise ValueError("The number of classes has to be greater than one; got 1 class.")
    unseen = np.setdiff1d(unique_labels(y), classes)
    if unseen.size:
        raise ValueError(f"y contains labels {unseen} that are not in classes {classes}")
    return classes


def _visible_units(X, setting, warm):
    """``(kind, mean, scale)`` of the first layer's visible units: ``warm``'s, else learned
    from ``X`` for the ``visible_units`` setting."""
    if warm is not None:
        return warm.visible_units, warm.mean, warm.scale
    kind = setting
    if kind == "auto":
        kind = BERNOULLI if within_unit_interval(X) else GAUSSIAN
    if kind == BERNOULLI:
        return kind, None, None
    with np.errstate(over="ignore", invalid="ignore"):
        if sp.issparse(X):
            mean = np.asarray(X.mean(axis=0, dtype=np.float64)).ravel()
            variance = np.asarray(X.multiply(X).mean(axis=0, dtype=np.float64)).ravel() \
                - mean**2
        else:
            mean = X.mean(axis=0, dtype=np.float64)
            variance = X.var(axis=0, dtype=np.float64)
    return (kind, *standardization(mean, variance, X.dtype))


def visible_units_of_range(setting, minimum, maximum):
    """The kind of visible units for the ``visible_units`` setting, for data whose values
    lie between ``minimum`` and ``maximum``."""
    if setting != "auto":
        return setting
    return BERNOULLI if minimum >= 0 and maximum <= 1 else GAUSSIAN


def standardization(mean, variance, dtype):
    """``(mean_, scale_)`` of Gaussian visible units in ``dtype``, from float64 moments."""
    scale = np.sqrt(np.maximum(variance, 0))
    with np.errstate(over="ignore"):
        mean, scale = np.asarray(mean).astype(dtype), scale.astype(dtype)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(scale))):
        raise ValueError(
            f"X holds values too large to standardize in {np.dtype(dtype).name} (their "
            "variance overflows); rescale X, e.g. with StandardScaler, before fitting"
        )
    scale[scale < 10 * np.finfo(scale.dtype).eps] = 1.0
    return mean, scale


def within_unit_interval(X):
    """Whether every value of ``X`` (dense or sparse) lies in [0, 1]."""
    values = X.data if sp.issparse(X) else X
    return values.size == 0 or (values.min() >= 0 and values.max() <= 1)


def split_validation(X, y, classes, seed, settings):
    """``(X_train, y_train, validation)``: a stratified share of labelled data held out for
    early stopping, as ``(X_val, codes_val)``; without early stopping nothing is held out.

    A Spark DataFrame read into this process is split here too; one left on the cluster is
    split on its executors (``spark.held_out``)."""
    if y is None or not settings.early_stopping:
        return X, y, None
    X_train, X_val, y_train, y_val = train_test_split(
        X, y, test_size=settings.validation_fraction, stratify=y, random_state=seed
    )
    y_val = np.searchsorted(classes, y_val)
    if X_val.shape[0] < 2:
        raise ValueError(
            f"early_stopping needs at least 2 validation samples; validation_fraction="
            f"{settings.validation_fraction} of {X.shape[0]} samples gives {X_val.shape[0]}"
        )
    return X_train, y_train, (X_val, y_val)


def starting_state(model, seed, warm, labelled, dtype):
    """The training state a fit of ``model`` starts from: fresh, or the fitted model's layers
    (and, for a labelled fit, its network) in ``dtype`` when it continues the model
    (``warm``)."""
    state = TrainingState(seed=int(seed))
    if warm is None:
        return state
    sizes = [model.n_features_in_, *warm.layer_sizes]
    for i, (weights, bias) in enumerate(zip(model._hidden_coefs(), model.intercepts_,
                                            strict=False)):
        layer = FlatParams(rbm_layout(sizes[i], sizes[i + 1]), dtype)
        layer["weights"][...] = weights
        layer["hidden_bias"][...] = bias
        layer["visible_bias"][...] = model.visible_intercepts_[i]
        state.layers.append(layer.flat)
    state.pretraining_history = [dict(h) for h in model.pretraining_history_]
    if labelled and hasattr(model, "classes_"):
        state.network = network_from_layers(model.coefs_, model.intercepts_, dtype).flat
        state.velocity = np.zeros_like(state.network)
        state.loss_curve = list(model.loss_curve_)
        state.best_loss = min(model.loss_curve_, default=np.inf)
    return state
