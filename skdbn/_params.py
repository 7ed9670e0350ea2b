"""Every hyper-parameter of ``DistributedDBN``, declared once.

``HYPER_PARAMETERS`` holds each one's name, default, constraint and a one-line description,
its name on the ``pyspark.ml`` stages, and whether it changes the model a fit makes. From it
come the estimator's ``_parameter_constraints``, the stages' Spark ``Param`` objects (names,
converters, defaults, docs: ``skdbn.spark.ml``), the settings a checkpoint ignores
(``MODEL_NEUTRAL``), and ``Settings``, the frozen snapshot a fit trains with.
``tests/test_params.py`` checks that the estimator's signature, its docstring and every
derivation agree with the table.
"""

import dataclasses
import os
from numbers import Integral, Real

import numpy as np
from sklearn.utils._param_validation import Interval, Options, StrOptions

from ._rbm import BERNOULLI, GAUSSIAN

HANDLE_INVALID = ("error", "skip", "keep")


@dataclasses.dataclass(frozen=True)
class HyperParameter:
    """One hyper-parameter of ``DistributedDBN``.

    Attributes
    ----------
    name : str
        Its name in scikit-learn (``__init__``, ``get_params``).
    default : object
        Its default.
    constraint : list
        scikit-learn's parameter constraints (``_parameter_constraints``).
    doc : str
        One line saying what it is (the Spark ``Param``'s doc).
    spark : str or None
        Its name on the ``pyspark.ml`` stages; None where the stages have no such setting
        (they always train on Spark, never warm-start, and name their output columns in
        Spark's way).
    converter : str or None
        The ``pyspark.ml.param.TypeConverters`` method of a ``Param`` of skdbn's own, or one
        of skdbn's (``"toIntOrAuto"``: an int or "auto"; ``"toDtypeName"``: "float32" or
        "float64"); None for one of pyspark's shared params (``maxIter``, ``tol``, ``seed``).
    changes_model : bool
        False for a setting that does not change what a fit learns: changing it keeps a
        checkpoint valid.
    added_in : str or None
        The version that added it, if later than 0.1.0: a model pickled by an earlier
        version gets its default when it is loaded.
    """

    name: str
    default: object
    constraint: list
    doc: str
    spark: str | None = None
    converter: str | None = None
    changes_model: bool = True
    added_in: str | None = None


def _at_least(low):
    return Interval(Integral, low, None, closed="left")


def _positive():
    return Interval(Real, 0, None, closed="neither")


HYPER_PARAMETERS = (
    HyperParameter("hidden_layer_sizes", (256, 256), ["array-like", _at_least(1)],
                   "units of each hidden layer, bottom to top", "hiddenLayerSizes",
                   "toListInt"),
    HyperParameter("visible_units", "auto", [StrOptions({"auto", BERNOULLI, GAUSSIAN})],
                   "visible units of the first RBM: 'bernoulli', 'gaussian' or 'auto'",
                   "visibleUnits", "toString"),
    HyperParameter("pretrain_epochs", 5, [_at_least(0)],
                   "contrastive-divergence epochs per RBM layer", "pretrainEpochs", "toInt"),
    HyperParameter("pretrain_learning_rate", 0.1, [_positive()],
                   "learning rate of pretraining", "pretrainLearningRate", "toFloat"),
    HyperParameter("cd_steps", 1, [_at_least(1)], "Gibbs steps of contrastive divergence",
                   "cdSteps", "toInt"),
    HyperParameter("persistent", False, ["boolean"], "persistent contrastive divergence",
                   "persistent", "toBoolean"),
    HyperParameter("max_iter", 200, [_at_least(1)], "fine-tuning epochs at most", "maxIter"),
    HyperParameter("learning_rate", 0.1, [_positive()], "learning rate of fine-tuning",
                   "learningRate", "toFloat"),
    HyperParameter("momentum", 0.9, [Interval(Real, 0, 1, closed="left")],
                   "momentum of both phases", "momentum", "toFloat"),
    HyperParameter("alpha", 1e-4, [Interval(Real, 0, None, closed="left")], "L2 penalty",
                   "alpha", "toFloat"),
    HyperParameter("batch_size", "auto", [_at_least(1), StrOptions({"auto"})],
                   "rows of a minibatch, or 'auto': the rows over 80, from 10 to 100",
                   "batchSize", "toIntOrAuto"),
    HyperParameter("early_stopping", False, ["boolean"],
                   "hold out validationFraction of the rows and stop on validation accuracy",
                   "earlyStopping", "toBoolean"),
    HyperParameter("validation_fraction", 0.1, [Interval(Real, 0, 1, closed="neither")],
                   "share of the rows held out with earlyStopping", "validationFraction",
                   "toFloat"),
    HyperParameter("n_iter_no_change", 5, [_at_least(1)],
                   "epochs without improvement before fine-tuning stops", "nIterNoChange",
                   "toInt"),
    HyperParameter("tol", 3e-3, [Interval(Real, 0, None, closed="left")],
                   "smallest improvement that counts as progress", "tol"),
    HyperParameter("dtype", None,
                   [StrOptions({"float32", "float64"}), Options(type, {np.float32, np.float64}),
                    None],
                   "dtype training runs in: 'float32' or 'float64' (unset: float32 for a "
                   "DataFrame, float32 input stays float32 and other arrays train in float64)",
                   "dtype", "toDtypeName", added_in="0.2.0"),
    HyperParameter("device", "cpu", [StrOptions({"cpu", "cuda"})],
                   "where each worker trains: 'cpu' (numpy) or 'cuda' (PyTorch on a CUDA GPU)",
                   "device", "toString", changes_model=False, added_in="0.2.0"),
    HyperParameter("backend", "auto", [StrOptions({"auto", "local", "spark"})],
                   "where the workers run: 'auto', 'local' or 'spark'"),
    HyperParameter("n_workers", None, [_at_least(1), None],
                   "workers (barrier tasks); unset: one per 5,000 rows, at most the free task "
                   "slots", "numWorkers", "toInt"),
    HyperParameter("sync", "gossip", [StrOptions({"gossip", "average", "none"})],
                   "synchronisation of the workers: 'gossip', 'average' or 'none'", "sync",
                   "toString"),
    HyperParameter("sync_every", 10, [_at_least(1)],
                   "minibatches between two synchronisations of a worker", "syncEvery",
                   "toInt"),
    HyperParameter("checkpoint_dir", None, [str, os.PathLike, None],
                   "directory of the driver's training checkpoints (unset: none)",
                   "checkpointDir", "toString", changes_model=False),
    HyperParameter("phase_retries", 2, [_at_least(0)], "reruns of a phase that lost a worker",
                   "phaseRetries", "toInt", changes_model=False),
    HyperParameter("network_timeout", None, [_positive(), None],
                   "seconds any network wait of a worker may take (unset: 60)",
                   "networkTimeout", "toFloat", changes_model=False),
    HyperParameter("warm_start", False, ["boolean"],
                   "start from the weights of the previous fit", changes_model=False),
    HyperParameter("verbose", 0, ["verbose"], "progress lines on the driver", "verbose",
                   "toInt", changes_model=False),
    HyperParameter("random_state", None, ["random_state"], "seed of every random draw",
                   "seed"),
    HyperParameter("features_col", "features", [str, list, tuple],
                   "features of a Spark DataFrame: a vector or array column, or numeric "
                   "columns", "featuresCol"),
    HyperParameter("label_col", "label", [str, None],
                   "column of class labels of a Spark DataFrame", "labelCol"),
    HyperParameter("prediction_col", "prediction", [str],
                   "column predict adds to a Spark DataFrame", changes_model=False),
    HyperParameter("probability_col", "probability", [str],
                   "column predict_proba adds to a Spark DataFrame", changes_model=False),
    HyperParameter("transform_col", "dbn_features", [str],
                   "column transform adds to a Spark DataFrame", changes_model=False),
    HyperParameter("handle_invalid", "error", [StrOptions(set(HANDLE_INVALID))],
                   "rows of a Spark DataFrame with invalid features: 'error', 'skip' or "
                   "'keep'", "handleInvalid"),
)

PARAMETERS = {parameter.name: parameter for parameter in HYPER_PARAMETERS}

# Settings that do not change the model: changing them must not orphan a checkpoint.
MODEL_NEUTRAL = frozenset(p.name for p in HYPER_PARAMETERS if not p.changes_model)

# Settings added after 0.1.0, by name, with their defaults (see HyperParameter.added_in).
ADDED_SINCE_0_1 = {p.name: p.default for p in HYPER_PARAMETERS if p.added_in is not None}


def parameter_constraints():
    """scikit-learn's ``_parameter_constraints`` of the table."""
    return {p.name: list(p.constraint) for p in HYPER_PARAMETERS}


# batch_size="auto": at least this many minibatches per epoch on small data (fewer updates
# cost accuracy there), and at most this many rows per minibatch on large data (larger
# batches cost accuracy at the same epochs); docs/benchmarks.md has the measurements.
_AUTO_BATCHES_PER_EPOCH = 80
_AUTO_BATCH_RANGE = (10, 100)


def batch_size_for(setting, n_samples):
    """The minibatch rows of a fit of ``n_samples`` rows: the ``batch_size`` setting, or for
    ``"auto"`` ``n_samples // 80`` clipped to [10, 100]."""
    if setting != "auto":
        return int(setting)
    low, high = _AUTO_BATCH_RANGE
    return int(min(high, max(low, n_samples // _AUTO_BATCHES_PER_EPOCH)))


def checked_hidden_sizes(hidden_layer_sizes):
    """``hidden_layer_sizes`` as a tuple of ints, or a ValueError that says what it must be."""
    sizes = hidden_layer_sizes
    sizes = [sizes] if isinstance(sizes, Integral) else list(sizes)
    if not sizes or not all(isinstance(s, Integral) and s >= 1 for s in sizes):
        raise ValueError(
            "hidden_layer_sizes must be a positive integer or a non-empty sequence of "
            f"positive integers, got {hidden_layer_sizes!r}"
        )
    return tuple(int(s) for s in sizes)


# The fields of Settings: every hyper-parameter of the table, then what a fit derives.
_SettingsFields = dataclasses.make_dataclass(
    "_SettingsFields",
    [(p.name, object) for p in HYPER_PARAMETERS]
    + [("hidden_sizes", tuple), ("slow_worker", object, dataclasses.field(default=None))],
    frozen=True,
)


class Settings(_SettingsFields):
    """The settings of one fit, frozen: every hyper-parameter of the table by its name,
    ``hidden_sizes`` (``hidden_layer_sizes`` checked, as a tuple of ints) and
    ``slow_worker`` (a test and benchmark hook: ``(rank, seconds)`` that worker sleeps after
    each minibatch)."""

    @classmethod
    def of(cls, estimator):
        """The settings of ``estimator`` now; a bad ``hidden_layer_sizes`` raises here,
        before any data is prepared."""
        values = {p.name: getattr(estimator, p.name) for p in HYPER_PARAMETERS}
        return cls(**values, hidden_sizes=checked_hidden_sizes(values["hidden_layer_sizes"]),
                   slow_worker=getattr(estimator, "_slow_worker", None))

    def params(self):
        """The hyper-parameters, as ``get_params`` gives them."""
        return {p.name: getattr(self, p.name) for p in HYPER_PARAMETERS}
