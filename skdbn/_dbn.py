"""``DistributedDBN``: a deep belief network as a scikit-learn classifier and transformer."""

import contextlib
import os
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from ._console import StageProgress, report
from ._engines import (
    make_engine,
    resolve_backend,
    run_phase_retrying,
    trains_in_driver_process,
)
from ._flat import FlatParams
from ._network import forward, network_from_layers, network_layout
from ._progress import (
    TrainingProgress,
    check_progress,
    fingerprint,
    frame_fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from ._rbm import BERNOULLI, GAUSSIAN, init_rbm, mean_hidden, rbm_layout
from ._watch import FitRecord
from ._worker import FinetunePhase, PhaseState, PretrainPhase, standardize
from .spark.data import (
    HANDLE_INVALID,
    accuracy_of,
    check_feature_count,
    feature_column,
    map_dataframe,
    read_dataframe,
    valid_features,
)
from .spark.session import is_spark_dataframe
from .spark.shards import partition_rows

_SEED_BOUND = np.iinfo(np.int32).max
# Where the documentation is published; the HTML repr in a notebook links to the
# estimator's entry there. SKDBN_DOCS_URL points it elsewhere (a local build, a mirror).
DOCS_URL = os.environ.get("SKDBN_DOCS_URL", "https://skdbn.readthedocs.io/en/latest/")
_BERNOULLI_RANGE_MESSAGE = (
    "visible_units='bernoulli' needs every value of X in [0, 1]; scale the data "
    "(e.g. MinMaxScaler) or use visible_units='gaussian' or 'auto'"
)


class DistributedDBN(ClassNamePrefixFeaturesOutMixin, ClassifierMixin, TransformerMixin,
                     BaseEstimator):
    """Deep belief network: greedy RBM pretraining, then backprop fine-tuning.

    A stack of restricted Boltzmann machines is pretrained greedily, layer by layer, with
    contrastive divergence; each layer learns from the mean hidden activations of the layer
    below. With labels, the stack is then unrolled into a sigmoid network with a softmax head
    and fine-tuned with minibatch SGD and momentum on the cross-entropy.

    Without labels, ``fit(X)`` only pretrains: :meth:`transform` then gives the top layer's
    features (for example in front of another classifier), and :meth:`predict` raises.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(256, 256)
        Number of hidden units of each RBM layer, bottom to top.
    visible_units : {"auto", "bernoulli", "gaussian"}, default="auto"
        Kind of the first layer's visible units. ``"bernoulli"`` needs data in [0, 1];
        ``"gaussian"`` standardizes each feature with the mean and standard deviation learned
        in ``fit`` and trains with a ten times smaller pretraining learning rate, as Hinton's
        practical guide (2010) advises. ``"auto"`` picks Bernoulli when all training values lie
        in [0, 1] and Gaussian otherwise.
    pretrain_epochs : int, default=20
        Epochs of contrastive divergence for each layer. 0 skips pretraining: the network then
        starts from Glorot-uniform weights, as :class:`~sklearn.neural_network.MLPClassifier`
        does.
    pretrain_learning_rate : float, default=0.1
        Learning rate of contrastive divergence (on the minibatch-mean gradient).
    cd_steps : int, default=1
        Gibbs steps per contrastive divergence update (the ``k`` of CD-k).
    persistent : bool, default=False
        Use persistent contrastive divergence: the negative chain carries over between
        minibatches instead of restarting at the data.
    max_iter : int, default=100
        Number of fine-tuning epochs. As in the DBN literature, fine-tuning is planned as a
        fixed number of epochs, so reaching ``max_iter`` is the normal end (no
        ``ConvergenceWarning``); it ends sooner when the loss (or, with early stopping, the
        validation accuracy) stops improving by ``tol`` for ``n_iter_no_change`` epochs.
    learning_rate : float, default=0.1
        Learning rate of fine-tuning SGD.
    momentum : float, default=0.9
        Momentum of both pretraining and fine-tuning; pretraining uses 0.5 for its first
        epochs (up to five, and at most half of them) while the RBM statistics settle.
    alpha : float, default=1e-4
        L2 penalty: the fine-tuning loss is the mean cross-entropy plus
        ``0.5 * alpha * ||W||^2``; pretraining decays its weights by the same coefficient.
    batch_size : int, default=32
        Minibatch size of both phases (capped at the number of samples).
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the labelled data (stratified) and stop
        fine-tuning when the validation accuracy has not improved by ``tol`` for
        ``n_iter_no_change`` epochs; the best network seen is kept.
    validation_fraction : float, default=0.1
        Share of the training data held out when ``early_stopping`` is on.
    n_iter_no_change : int, default=10
        Epochs without improvement tolerated before fine-tuning stops. Set it above
        ``max_iter`` to train exactly ``max_iter`` epochs: with several workers the epoch loss
        is noisier and the loss rule can stop early (see the user guide).
    tol : float, default=1e-4
        Smallest improvement of the training loss (or, with early stopping, of the validation
        accuracy) that counts as progress.
    backend : {"auto", "local", "spark"}, default="auto"
        Where the workers run. ``"spark"``: one task per worker in a barrier stage of the
        SparkSession (the input DataFrame's, else the active one, else an embedded
        ``local[*]`` session created once per process); with ``n_workers=None`` and fewer than
        10,000 samples (arrays, or a DataFrame read here in one pass), the single worker
        trains in this process without Spark tasks. ``"local"``: one worker in this process,
        or worker processes on this machine that gossip over loopback with the same protocol
        (a DataFrame is read into this process); they are kept warm between fits, and map the
        data from shared memory. ``"auto"``: Spark for a DataFrame or when a SparkSession is
        active, else local processes (measured faster on one machine: no JVM to start).
    n_workers : int or None, default=None
        Number of workers, each holding a full copy of the network and training on its own
        shard of the data. ``None``: one worker per 5,000 samples, at most one per core for
        local processes (each with one BLAS thread, measured the fastest split of the cores)
        and at most the session's free task slots on Spark. One worker trains in this
        process with all the cores' BLAS threads.
    sync : {"gossip", "average", "none"}, default="gossip"
        How workers keep their copies together within a phase. ``"gossip"``: asynchronous
        push-sum; a phase's work is a global budget, so a slow worker does less and nobody
        waits. ``"average"``: every ``sync_every`` minibatches all workers take the exact
        average (synchronous, deterministic). ``"none"``: workers train independently and are
        averaged once per phase (for comparison). Every phase ends with the exact weighted
        consensus. Without effect on one worker.
    sync_every : int, default=10
        Minibatches between two synchronisations of a worker. With ``"gossip"`` they are
        counted at the average worker's pace (a worker pushes each time all workers together
        have trained ``n_workers * sync_every`` minibatches), so a slow worker pushes as often
        as a fast one. Without effect on one worker.
    checkpoint_dir : str or path-like or None, default=None
        Directory where the training progress is saved after every phase. A fit with the same
        parameters and data resumes from the last saved phase and gives the same model as an
        uninterrupted fit; a checkpoint of another run is ignored and replaced. Arrays are
        recognised as the same data by their bytes; a DataFrame by what its statistics pass
        sees (rows per partition, per-feature mean, variance and extremes, classes). A
        damaged checkpoint is set aside with a ``CheckpointWarning`` and the fit resumes from
        the one before it, or starts afresh. Warm-start fits and :meth:`partial_fit` do not
        checkpoint.
    phase_retries : int, default=2
        How often a phase is rerun, from the state it started from, when it fails because a
        worker was lost: a killed or crashed worker process (local processes or a Spark task's
        Python worker), a lost Spark executor, or (classic Spark sessions) a task that stopped
        making progress. On Spark a retry waits up to ``network_timeout`` for the task slots
        to come back, then runs on those that are left. Errors of the fit itself (bad data,
        divergence) are never retried. Losing a worker thus costs at most the phase it was
        in: one layer's pretraining, or up to ten fine-tuning epochs (one with
        ``early_stopping=True``).
    network_timeout : float or None, default=None
        Seconds any one network wait of a worker may take (a rendezvous, a delivery, a
        synchronous average) before the peer is given up for the rest of the phase. ``None``:
        30 for local processes, 60 on Spark. A stopped peer thus costs at most one timeout per
        phase; raise it for very large networks on slow links. On Spark it also bounds how
        long a retried phase waits for lost task slots to come back (then it runs on the slots
        that are left) and, on classic sessions, how far (at least) the last task of a phase
        may fall behind the first before the phase is cancelled and rerun.
    warm_start : bool, default=False
        Start from the weights of the previous fit. With labels, pretraining is skipped and
        fine-tuning continues from the current network (a softmax head is added if the model
        has none, so ``fit(X_unlabelled)`` followed by a warm ``fit(X, y)`` fine-tunes the
        pretrained stack). Without labels, pretraining continues from the current layers.
    verbose : int, default=0
        Show progress. 0: nothing. 1: while a stage runs (the pretraining of a layer, or the
        fine-tuning) a progress bar (``tqdm.auto``: a widget in Jupyter, text on a
        terminal) with samples per second, the epoch and the current loss, fed by the
        workers while they train, local processes and Spark tasks alike; then one line per
        stage. 2: also one line per epoch. Bars go to stderr, lines to stdout. On Spark the
        bar moves while tasks run where they can reach this process: on classic sessions
        unless ``spark.skdbn.rendezvous=barrier``, on Spark Connect when the Connect server
        runs on this machine; elsewhere it moves at the end of each phase.
    random_state : int, RandomState instance or None, default=None
        Seeds the weight initialisation, the shuffling, the Gibbs sampling and the validation
        split. With a fixed seed, training is deterministic on one worker and with
        ``sync="average"`` for a given number of workers; gossip depends on message timing.
    features_col : str or list of str, default="features"
        Features of a Spark DataFrame passed to ``fit`` and the inference methods: a
        pyspark.ml vector column (dense or sparse), an array column of numbers, or a list of
        numeric columns. ``array<float>`` columns (and lists of float columns) train in
        float32, everything else in float64.
    label_col : str or None, default="label"
        Column of class labels (numbers, strings or booleans) of a DataFrame passed to
        ``fit`` and ``score``; it must exist. ``None`` pretrains on a DataFrame without
        labels.
    prediction_col, probability_col, transform_col : str, default="prediction", \
"probability", "dbn_features"
        Columns added by :meth:`predict`, :meth:`predict_proba` and :meth:`transform` when they
        are given a Spark DataFrame.
    handle_invalid : {"error", "skip", "keep"}, default="error"
        What to do with *invalid* rows of a Spark DataFrame: features that are null, hold NaN
        or infinity, or (at inference) have another length than ``n_features_in_``; and, at
        fit, a null label. ``"error"`` raises an error that names the column (as
        pyspark.ml's ``handleInvalid`` does by default); ``"skip"`` leaves such rows out;
        ``"keep"`` keeps them at inference with a null result (at fit they are left out, as
        with ``"skip"``). Arrays are always checked strictly.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels; absent when the model was fitted without labels.
    coefs_ : list of ndarray
        Weight matrices, ``coefs_[i]`` of shape (n_units_in, n_units_out): the hidden layers,
        then the softmax head once the model has been fine-tuned.
    intercepts_ : list of ndarray
        Bias vectors matching ``coefs_``.
    visible_intercepts_ : list of ndarray
        Visible biases of each pretrained RBM layer (used for reconstruction only).
    visible_units_ : {"bernoulli", "gaussian"}
        Kind of visible units used.
    mean_, scale_ : ndarray of shape (n_features,) or None
        Standardization of Gaussian visible units; None for Bernoulli units.
    pretraining_history_ : list of dict
        One dict per layer with per-epoch ``"reconstruction_error"`` (mean squared error of a
        one-step mean-field reconstruction on up to 512 training rows) and, for Bernoulli
        visible units, ``"pseudo_likelihood"`` (mean pseudo-log-likelihood per visible unit).
    loss_curve_ : list of float
        Fine-tuning loss (cross-entropy plus L2 term) after each epoch.
    validation_scores_ : list of float or None
        Validation accuracy after each epoch when ``early_stopping`` is on, else None.
    best_validation_score_ : float or None
        Best validation accuracy when ``early_stopping`` is on, else None.
    best_loss_ : float or None
        Lowest training loss when ``early_stopping`` is off, else None.
    n_iter_ : int
        Fine-tuning epochs run (0 after pretraining only).
    n_workers_ : int
        Number of workers the last fit used.
    n_phase_retries_ : int
        Phases the last fit reran after losing a worker (see ``phase_retries``).
    worker_stats_ : list of dict
        One row per worker and phase of the last call to ``fit`` or ``partial_fit``, for
        ``pandas.DataFrame(worker_stats_)``. Keys: ``stage`` (``"layer 0"``, ...,
        ``"fine-tuning"``), ``phase`` (its index in the fit), ``worker``, ``samples``
        (trained), ``messages_sent`` and ``messages_merged`` (parameter states exchanged
        with peers), ``seconds_waiting`` (for peers: synchronous averages, the end of a
        phase), ``seconds_reading`` (its data), ``seconds_training`` and ``started`` (seconds
        after the fit began). Phases resumed from a checkpoint are not in it.
    worker_trace_ : list of dict
        Each worker's course through each phase, for ``pandas.DataFrame(worker_trace_)``:
        rows with ``stage``, ``phase``, ``worker``, ``seconds`` (since the fit began),
        ``samples`` (trained in the phase so far) and ``drift``. A row is taken at most every
        0.2 s while the worker trains (drift NaN there) and at every drift measurement (at
        most every 0.2 s, at an exchange): ``drift`` is the relative distance
        ``||own - merged|| / ||merged||`` between the worker's parameters and the mean of the
        states it merged (for ``sync="average"``, the exact consensus). A phase keeps at most
        256 rows per worker, evenly spread.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features,)
        Names of features seen during fit, when ``X`` has string column names.

    See Also
    --------
    sklearn.neural_network.BernoulliRBM : A single RBM layer, trained with persistent CD.
    sklearn.neural_network.MLPClassifier : A feed-forward network trained from random weights.

    Notes
    -----
    A fit is deterministic for a fixed ``random_state`` and worker count with one worker or
    ``sync="average"`` (or ``"none"``); gossip is asynchronous, so its models differ a little
    from run to run. With ``n_workers=None`` the worker count follows the data size and the
    machine's cores: set ``n_workers`` for the same model on other machines. Input of
    dtype float32 is trained and transformed in float32 (about twice as fast as float64).
    The fitted model holds numpy arrays only: it pickles, and predicts without Spark.

    References
    ----------
    Hinton, G. E., Osindero, S. and Teh, Y. (2006). A fast learning algorithm for deep belief
    nets. Neural Computation 18, 1527-1554.

    Hinton, G. E. (2010). A practical guide to training restricted Boltzmann machines.
    UTML TR 2010-003, University of Toronto.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skdbn import DistributedDBN
    >>> X, y = load_digits(return_X_y=True)
    >>> dbn = DistributedDBN(hidden_layer_sizes=(64,), max_iter=20, random_state=0)
    >>> dbn.fit(X / 16, y).score(X / 16, y) > 0.9
    True
    """

    _parameter_constraints = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "visible_units": [StrOptions({"auto", BERNOULLI, GAUSSIAN})],
        "pretrain_epochs": [Interval(Integral, 0, None, closed="left")],
        "pretrain_learning_rate": [Interval(Real, 0, None, closed="neither")],
        "cd_steps": [Interval(Integral, 1, None, closed="left")],
        "persistent": ["boolean"],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "backend": [StrOptions({"auto", "local", "spark"})],
        "n_workers": [Interval(Integral, 1, None, closed="left"), None],
        "sync": [StrOptions({"gossip", "average", "none"})],
        "sync_every": [Interval(Integral, 1, None, closed="left")],
        "checkpoint_dir": [str, os.PathLike, None],
        "phase_retries": [Interval(Integral, 0, None, closed="left")],
        "network_timeout": [Interval(Real, 0, None, closed="neither"), None],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
        "features_col": [str, list, tuple],
        "label_col": [str, None],
        "handle_invalid": [StrOptions(set(HANDLE_INVALID))],
        "prediction_col": [str],
        "probability_col": [str],
        "transform_col": [str],
    }

    # Test and benchmark hook, not a parameter: (worker rank, seconds to sleep per minibatch).
    _slow_worker = None
    _doc_link_module = "skdbn"
    _doc_link_template = DOCS_URL.rstrip("/") + "/api.html#{estimator_module}.{estimator_name}"

    def __init__(
        self,
        hidden_layer_sizes=(256, 256),
        visible_units="auto",
        pretrain_epochs=20,
        pretrain_learning_rate=0.1,
        cd_steps=1,
        persistent=False,
        max_iter=100,
        learning_rate=0.1,
        momentum=0.9,
        alpha=1e-4,
        batch_size=32,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        tol=1e-4,
        backend="auto",
        n_workers=None,
        sync="gossip",
        sync_every=10,
        checkpoint_dir=None,
        phase_retries=2,
        network_timeout=None,
        warm_start=False,
        verbose=0,
        random_state=None,
        features_col="features",
        label_col="label",
        prediction_col="prediction",
        probability_col="probability",
        transform_col="dbn_features",
        handle_invalid="error",
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.visible_units = visible_units
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_learning_rate = pretrain_learning_rate
        self.cd_steps = cd_steps
        self.persistent = persistent
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.alpha = alpha
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.backend = backend
        self.n_workers = n_workers
        self.sync = sync
        self.sync_every = sync_every
        self.checkpoint_dir = checkpoint_dir
        self.phase_retries = phase_retries
        self.network_timeout = network_timeout
        self.warm_start = warm_start
        self.verbose = verbose
        self.random_state = random_state
        self.features_col = features_col
        self.label_col = label_col
        self.prediction_col = prediction_col
        self.probability_col = probability_col
        self.transform_col = transform_col
        self.handle_invalid = handle_invalid

    # ------------------------------------------------------------------ fitting

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Pretrain the RBM stack on ``X`` and, when ``y`` is given, fine-tune it.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data. Sparse input must be CSR (other formats are converted).
        y : array-like of shape (n_samples,), default=None
            Class labels. Without them only pretraining runs.

        Returns
        -------
        self : DistributedDBN
            The fitted estimator.
        """
        # The cleanup closes an engine that a DataFrame's preparation started, should the fit
        # fail before training (training closes it otherwise).
        with self._unchanged_on_error(), contextlib.ExitStack() as cleanup:
            continuing = self.warm_start and hasattr(self, "coefs_")
            seed = check_random_state(self.random_state).randint(_SEED_BOUND)
            if is_spark_dataframe(X):
                data, classes, validation, key = self._prepare_dataframe(X, y, continuing,
                                                                         cleanup)
            else:
                data, classes, validation, key = self._prepare_arrays(X, y, continuing, seed)
            labelled = classes is not None
            progress = self._starting_progress(seed, key, continuing, labelled, classes,
                                               data.dtype)
            if continuing:
                pretrain = "none" if labelled else "all"
                max_epochs = progress.n_iter + self.max_iter
            else:
                pretrain, max_epochs = "missing", self.max_iter
            self._train(progress, data, classes, validation, key,
                        pretrain=pretrain, max_epochs=max_epochs)
        return self

    def _prepare_arrays(self, X, y, continuing, seed):
        X, y = self._validate_training_data(X, y, reset=not continuing)
        self._check_warm_start_compatible(continuing)
        classes = self._classes_for_fit(y, continuing)
        if not continuing:
            self._learn_visible_units(X)
        X_train, y_train, validation = self._split_validation(X, y, classes, seed)
        key = None
        if self.checkpoint_dir is not None and not continuing:
            key = fingerprint(self.get_params(), X, y, classes)
        return _TrainingData.of_arrays(X_train, y_train, self), classes, validation, key

    def _prepare_dataframe(self, df, y, continuing, cleanup):
        if y is not None:
            raise ValueError(
                "with a Spark DataFrame the labels are a column of it (label_col="
                f"{self.label_col!r}); do not pass y"
            )
        if self.early_stopping:
            raise NotImplementedError(
                "early_stopping is not available for Spark DataFrames yet; fit on numpy "
                "arrays or set early_stopping=False"
            )
        label_col = self._checked_label_col(df, "fit")
        if self.handle_invalid != "error":
            df = df.filter(self._valid_training_rows(df, label_col))
        summary, X, labels, engine = self._summarize_dataframe(df, label_col, cleanup)
        if continuing and summary.n_features != self.n_features_in_:
            raise ValueError(
                f"X has {summary.n_features} features, but DistributedDBN is expecting "
                f"{self.n_features_in_} features as input."
            )
        self._check_warm_start_compatible(continuing)
        classes = None
        if label_col is not None:
            check_classification_targets(summary.labels)
            classes = self._classes_for_fit(summary.labels, continuing)
        if not continuing:
            self.n_features_in_ = summary.n_features
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
            self._learn_visible_units_from_summary(summary)
        if (self.visible_units_ == BERNOULLI
                and (summary.minimum.min() < 0 or summary.maximum.max() > 1)):
            raise ValueError(_BERNOULLI_RANGE_MESSAGE)
        data = _TrainingData.of_dataframe(df, label_col, summary, self, engine)
        if X is not None:
            data = data.held_here(X, labels)
        key = None
        if self.checkpoint_dir is not None and not continuing:
            key = frame_fingerprint(self.get_params(), summary, classes)
        return data, classes, None, key

    def _checked_label_col(self, df, method):
        if self.label_col is None:
            return None
        if self.label_col not in df.columns:
            advice = ("name the labels' column, or set label_col=None to pretrain without "
                      "labels" if method == "fit" else "score needs labels: name their column")
            raise ValueError(
                f"label_col {self.label_col!r} is not a column of the DataFrame (its columns: "
                f"{', '.join(df.columns)}); {advice}"
            )
        return self.label_col

    def _valid_training_rows(self, df, label_col):
        from pyspark.sql import functions, types

        features, _ = feature_column(df, self.features_col)
        valid = valid_features(features)
        if label_col is None:
            return valid
        label = df[label_col]
        valid = valid & label.isNotNull()
        if isinstance(df.schema[label_col].dataType, (types.FloatType, types.DoubleType)):
            valid = valid & ~functions.isnan(label)
        return valid

    def _summarize_dataframe(self, df, label_col, cleanup):
        """Read the DataFrame once: into this process when the fit trains here, else on the
        executors by the engine that is to train (which may write the shards on the way).

        Returns ``(summary, X, labels, engine)``: the arrays when read here, else the engine.
        Choosing the number of workers needs the row count, a cheap JVM-only job.
        """
        backend = resolve_backend(self.backend, dataframe_input=True)
        counts = None
        if backend != "local" and self.n_workers is None:
            counts = partition_rows(df)
        n_samples = 0 if counts is None else sum(counts.values())
        if trains_in_driver_process(backend, self.n_workers, n_samples):
            return (*read_dataframe(df, self.features_col, label_col), None)
        engine = make_engine(backend, self.n_workers, self.sync, self.sync_every,
                             n_samples, df, timeout=self.network_timeout)
        cleanup.callback(engine.close)
        return engine.summarize(df, self.features_col, label_col, counts), None, None, engine

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None, classes=None):
        """Train for one epoch on ``X``.

        Without labels this is one epoch of contrastive divergence for every layer, bottom to
        top (any softmax head is dropped, since the layers under it change). With labels it is
        one epoch of fine-tuning; on the first labelled call the layers that do not exist yet
        are pretrained on ``X`` for ``pretrain_epochs`` epochs first.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,), default=None
            Class labels.
        classes : array-like of shape (n_classes,), default=None
            All classes that can appear; required on the first call with labels.

        Returns
        -------
        self : DistributedDBN
            The updated estimator.
        """
        if is_spark_dataframe(X):
            raise TypeError("partial_fit takes arrays; for a Spark DataFrame use fit (with "
                            "warm_start=True to continue training)")
        with self._unchanged_on_error():
            first_call = not hasattr(self, "coefs_")
            X, y = self._validate_training_data(X, y, reset=first_call)
            if first_call:
                self._learn_visible_units(X)
            self._check_warm_start_compatible(not first_call)
            classes = self._partial_fit_classes(y, classes)
            seed = check_random_state(self.random_state).randint(_SEED_BOUND)
            progress = self._starting_progress(seed, None, not first_call, y is not None)
            seed_offset = len(getattr(self, "loss_curve_", [])) + sum(
                len(h["reconstruction_error"]) for h in getattr(self, "pretraining_history_", [])
            )
            progress.seed = (seed + seed_offset) % _SEED_BOUND
            data = _TrainingData.of_arrays(X, y, self)
            if y is None:
                self._train(progress, data, None, None, None, pretrain="all",
                            max_epochs=0, pretrain_epochs=1)
            else:
                self._train(progress, data, classes, None, None, pretrain="missing",
                            max_epochs=progress.n_iter + 1, apply_stopping_rule=False)
        return self

    def _validate_training_data(self, X, y, reset):
        if y is None:
            X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32],
                              reset=reset)
        else:
            X, y = validate_data(self, X, y, accept_sparse="csr",
                                 dtype=[np.float64, np.float32], reset=reset)
            check_classification_targets(y)
        if X.shape[0] < 1:
            raise ValueError("Found array with 0 sample(s) while a minimum of 1 is required.")
        if sp.issparse(X):
            X.sort_indices()
        visible = getattr(self, "visible_units_", None) if not reset else None
        if (visible or self.visible_units) == BERNOULLI and not _within_unit_interval(X):
            raise ValueError(_BERNOULLI_RANGE_MESSAGE)
        return X, y

    def _check_warm_start_compatible(self, continuing):
        if continuing and tuple(self._hidden_sizes()) != tuple(
            c.shape[1] for c in self.coefs_[: len(self.visible_intercepts_)]
        ):
            raise ValueError(
                "hidden_layer_sizes differs from the fitted model's layers "
                f"{[c.shape[1] for c in self.coefs_[: len(self.visible_intercepts_)]]}; "
                "set warm_start=False to train a new model"
            )

    def _classes_for_fit(self, y, continuing):
        if y is None:
            return None
        classes = unique_labels(y)
        if len(classes) < 2:
            raise ValueError(
                "The number of classes has to be greater than one; got 1 class. A classifier "
                "needs samples of at least 2 classes (call fit(X) without y to only pretrain)."
            )
        previous = getattr(self, "classes_", None)
        if continuing and previous is not None and not np.array_equal(previous, classes):
            raise ValueError(
                f"warm_start fit got classes {classes}, but the model was trained on "
                f"{previous}; set warm_start=False to train a new model"
            )
        return classes

    def _partial_fit_classes(self, y, classes):
        if y is None:
            return None
        previous = getattr(self, "classes_", None)
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

    def _learn_visible_units(self, X):
        kind = self.visible_units
        if kind == "auto":
            kind = BERNOULLI if _within_unit_interval(X) else GAUSSIAN
        self.visible_units_ = kind
        if kind == BERNOULLI:
            self.mean_, self.scale_ = None, None
            return
        with np.errstate(over="ignore", invalid="ignore"):
            if sp.issparse(X):
                mean = np.asarray(X.mean(axis=0, dtype=np.float64)).ravel()
                variance = np.asarray(X.multiply(X).mean(axis=0, dtype=np.float64)).ravel() \
                    - mean**2
            else:
                mean = X.mean(axis=0, dtype=np.float64)
                variance = X.var(axis=0, dtype=np.float64)
        self.mean_, self.scale_ = _standardization(mean, variance, X.dtype)

    def _learn_visible_units_from_summary(self, summary):
        kind = self.visible_units
        if kind == "auto":
            inside = summary.minimum.min() >= 0 and summary.maximum.max() <= 1
            kind = BERNOULLI if inside else GAUSSIAN
        self.visible_units_ = kind
        if kind == BERNOULLI:
            self.mean_, self.scale_ = None, None
            return
        self.mean_, self.scale_ = _standardization(summary.mean, summary.variance,
                                                   summary.dtype)

    def _split_validation(self, X, y, classes, seed):
        if y is None or not self.early_stopping:
            return X, y, None
        X_train, X_val, y_train, y_val = train_test_split(
            X, y, test_size=self.validation_fraction, stratify=y, random_state=seed
        )
        y_val = np.searchsorted(classes, y_val)
        if X_val.shape[0] < 2:
            raise ValueError(
                f"early_stopping needs at least 2 validation samples; validation_fraction="
                f"{self.validation_fraction} of {X.shape[0]} samples gives {X_val.shape[0]}"
            )
        return X_train, y_train, (X_val, y_val)

    def _starting_progress(self, seed, key, continuing, labelled, classes=None, dtype=None):
        if self.checkpoint_dir is not None and key is not None:
            sizes = [self.n_features_in_, *self._hidden_sizes()]
            n_classes = None if classes is None else len(classes)
            saved, path = load_checkpoint(
                self.checkpoint_dir, key,
                lambda progress: check_progress(progress, sizes, n_classes, dtype))
            if saved is not None:
                self._report(f"resumed from {path}: {len(saved.layers)} of {len(sizes) - 1} "
                             f"layers pretrained, {saved.n_iter} fine-tuning epochs done")
                return saved
        progress = TrainingProgress(seed=int(seed))
        if not continuing:
            return progress
        dtype = self.coefs_[0].dtype
        n_layers = len(self.visible_intercepts_)
        sizes = [self.n_features_in_, *self._hidden_sizes()]
        for i in range(n_layers):
            layer = FlatParams(rbm_layout(sizes[i], sizes[i + 1]), dtype)
            layer["weights"][...] = self.coefs_[i]
            layer["hidden_bias"][...] = self.intercepts_[i]
            layer["visible_bias"][...] = self.visible_intercepts_[i]
            progress.layers.append(layer.flat)
        progress.pretraining_history = [dict(h) for h in self.pretraining_history_]
        if labelled and hasattr(self, "classes_"):
            head = network_from_layers(self.coefs_, self.intercepts_, dtype)
            progress.network = head.flat
            progress.velocity = np.zeros_like(head.flat)
            progress.loss_curve = list(self.loss_curve_)
            progress.best_loss = min(self.loss_curve_, default=np.inf)
        return progress

    # ------------------------------------------------------------------ phases

    def _train(self, progress, data, classes, validation, key, *, pretrain, max_epochs,
               pretrain_epochs=None, apply_stopping_rule=True):
        """Run the phases: ``pretrain`` is "missing" (layers not trained yet), "all" (continue
        every layer) or "none"; fine-tuning follows when ``classes`` is given."""
        self._check_n_workers(data.n_samples)
        self._phase_retries = 0
        self._fit_record = FitRecord()
        backend = resolve_backend(self.backend, dataframe_input=data.dataframe is not None)
        engine = data.engine or make_engine(backend, self.n_workers, self.sync,
                                            self.sync_every, data.n_samples,
                                            timeout=self.network_timeout)
        try:
            self._start_engine(engine, data, classes, progress.seed)
            if pretrain != "none":
                first = 0 if pretrain == "all" else len(progress.layers)
                epochs = self.pretrain_epochs if pretrain_epochs is None else pretrain_epochs
                self._pretrain(engine, progress, data, key, first, epochs)
            if classes is not None:
                self._finetune(engine, progress, len(classes), validation, key, max_epochs,
                               apply_stopping_rule, data.n_samples)
        finally:
            engine.close()
        self._store_fitted(progress, classes, engine.n_workers)

    def _start_engine(self, engine, data, classes, seed):
        if data.dataframe is not None:
            engine.start_from_dataframe(data.dataframe, self.features_col, data.label_col,
                                        classes, data.summary, self.mean_, self.scale_)
            return
        codes = None if data.y is None else np.searchsorted(classes, data.y)
        worker_rows = _worker_rows(data.n_samples, engine.n_workers, seed)
        engine.start_from_arrays(data.X, codes, worker_rows, self.mean_, self.scale_)

    def _check_n_workers(self, n_samples):
        if self.n_workers is not None and self.n_workers > n_samples:
            raise ValueError(
                f"n_workers={self.n_workers} is more than the {n_samples} training samples; "
                "every worker needs a shard"
            )

    def _pretrain(self, engine, progress, data, key, first, epochs):
        sizes = [data.n_features, *self._hidden_sizes()]
        for index in range(first, len(sizes) - 1):
            with StageProgress(f"layer {index}", "reconstruction error", data.n_samples,
                               epochs, self.verbose) as stage:
                params, history, output_mean = self._pretrain_layer(
                    engine, progress, data, sizes, index, epochs, stage)
                self._record_layer(progress, index, params, history, output_mean)
                stage.close(f"pretrained layer {index}: {_last_figures(history)}")
            if self.checkpoint_dir is not None and key is not None:
                save_checkpoint(self.checkpoint_dir, key, progress)

    def _pretrain_layer(self, engine, progress, data, sizes, index, epochs, stage):
        """Pretrain layer ``index`` for ``epochs`` epochs: its parameters, per-epoch history
        and mean hidden activation (the next layer's visible mean)."""
        # A stream of its own per layer: a fit resumed at this layer draws what an
        # uninterrupted one does.
        rng = np.random.default_rng([progress.seed, 0, index])
        phase = self._pretrain_phase(index, sizes, epochs, progress.seed)
        initial = self._initial_layer(progress, data, sizes, index, phase, rng)
        if epochs == 0:
            # Untrained: no better guess of the activations than one half.
            return initial, {"reconstruction_error": []}, np.full(sizes[index + 1], 0.5)
        below = [FlatParams(rbm_layout(sizes[i], sizes[i + 1]), data.dtype, progress.layers[i])
                 for i in range(index)]
        state, results = self._run_phase(
            engine, phase, PhaseState(initial, np.zeros_like(initial)), below, stage)
        history = _mean_history(results)
        stage.phase_done(results, history["reconstruction_error"], epochs)
        output_mean = np.average([r.hidden_mean for r in results], axis=0,
                                 weights=[r.n_samples for r in results])
        return state.params, history, output_mean

    def _initial_layer(self, progress, data, sizes, index, phase, rng):
        """The starting parameters of layer ``index``: the layer trained so far, or a new
        one (Glorot weights when it will not be pretrained)."""
        if index < len(progress.layers):
            return progress.layers[index]
        visible_mean = data.input_mean if index == 0 else progress.layer_means[index - 1]
        layer = init_rbm(sizes[index], sizes[index + 1], visible_mean, phase.visible_units,
                         data.dtype, rng)
        if phase.epochs == 0:
            layer["weights"][...] = _glorot_uniform(sizes[index], sizes[index + 1], rng)
        return layer.flat

    def _run_phase(self, engine, phase, state, below, stage):
        """Run ``phase`` (rerun after a lost worker), shown on ``stage``'s progress bar."""
        state, results, retries = run_phase_retrying(
            engine, phase, state, below, self.phase_retries,
            lambda message: self._report(f"{type(phase).__name__}: {message}"),
            monitor=stage if self.verbose >= 1 else None)
        self._phase_retries += retries
        self._fit_record.add(stage.name, results)
        return state, results

    def _pretrain_phase(self, index, sizes, epochs, seed):
        return PretrainPhase(
            layer=index, n_visible=sizes[index], n_hidden=sizes[index + 1],
            visible_units=self.visible_units_ if index == 0 else BERNOULLI,
            epochs=epochs, batch_size=self.batch_size,
            learning_rate=self.pretrain_learning_rate, momentum=self.momentum,
            weight_decay=self.alpha, cd_steps=self.cd_steps, persistent=self.persistent,
            seed=(seed, 1, index), slow_worker=self._slow_worker,
        )

    @staticmethod
    def _record_layer(progress, index, params, history, output_mean):
        if index < len(progress.layer_means):
            progress.layer_means[index] = output_mean
        else:
            progress.layer_means.append(output_mean)
        if index < len(progress.layers):
            progress.layers[index] = params
            merged = {k: list(progress.pretraining_history[index].get(k, [])) + list(v)
                      for k, v in history.items()}
            progress.pretraining_history[index] = merged
        else:
            progress.layers.append(params)
            progress.pretraining_history.append({k: list(v) for k, v in history.items()})

    def _finetune(self, engine, progress, n_classes, validation, key, max_epochs,
                  apply_stopping_rule, n_samples):
        sizes = (self.n_features_in_, *self._hidden_sizes(), n_classes)
        if progress.network is None:
            progress.network = self._initial_network(progress, sizes).flat
            progress.velocity = np.zeros_like(progress.network)
        with StageProgress("fine-tuning", "loss", n_samples,
                           max(0, max_epochs - progress.n_iter), self.verbose) as stage:
            self._finetune_phases(engine, progress, sizes, validation, key, max_epochs,
                                  apply_stopping_rule, stage)
            if validation is not None and progress.best_network is not None:
                progress.network = progress.best_network
            stage.close(_finetuning_summary(progress))

    def _finetune_phases(self, engine, progress, sizes, validation, key, max_epochs,
                         apply_stopping_rule, stage):
        while not progress.finetune_done and progress.n_iter < max_epochs:
            phase = FinetunePhase(
                layer_sizes=sizes,
                epochs=min(1 if validation else engine.epochs_per_phase,
                           max_epochs - progress.n_iter),
                batch_size=self.batch_size, learning_rate=self.learning_rate,
                momentum=self.momentum, alpha=self.alpha,
                seed=(progress.seed, 2, progress.n_iter), slow_worker=self._slow_worker,
            )
            state, results = self._run_phase(
                engine, phase, PhaseState(progress.network, progress.velocity), [], stage)
            progress.network, progress.velocity = state.params, state.velocity
            losses = _mean_history(results)["loss"][-phase.epochs:]
            stage.phase_done(results, losses, phase.epochs)
            for loss in losses:
                progress.loss_curve.append(loss)
                if apply_stopping_rule and not progress.finetune_done:
                    progress.finetune_done = self._update_stopping(progress, validation, sizes)
                    if validation is not None:
                        stage.note(f"validation score {progress.validation_scores[-1]:.4f}")
            if self.checkpoint_dir is not None and key is not None:
                save_checkpoint(self.checkpoint_dir, key, progress)

    def _initial_network(self, progress, sizes):
        dtype = progress.layers[0].dtype if progress.layers else np.float64
        params = FlatParams(network_layout(list(sizes)), dtype)
        rng = np.random.default_rng([progress.seed, 3])
        n_hidden = len(sizes) - 2
        for i in range(n_hidden):
            layer = FlatParams(rbm_layout(sizes[i], sizes[i + 1]), dtype, progress.layers[i])
            params[f"weights_{i}"][...] = layer["weights"]
            params[f"bias_{i}"][...] = layer["hidden_bias"]
        params[f"weights_{n_hidden}"][...] = _glorot_uniform(*sizes[-2:], rng)
        return params

    def _update_stopping(self, progress, validation, sizes):
        """Record this epoch's figure and say whether fine-tuning should stop."""
        if validation is not None:
            X_val, y_val = validation
            params = FlatParams(network_layout(list(sizes)), progress.network.dtype,
                                progress.network)
            probabilities = forward(self._standardized(X_val, params.flat.dtype), params,
                                    len(sizes) - 2)[-1]
            score = float(np.mean(probabilities.argmax(axis=1) == y_val))
            progress.validation_scores.append(score)
            improved = score > progress.best_validation_score + self.tol
            if score > progress.best_validation_score:
                progress.best_validation_score = score
                progress.best_network = progress.network.copy()
        else:
            loss = progress.loss_curve[-1]
            improved = loss < progress.best_loss - self.tol
            progress.best_loss = min(progress.best_loss, loss)
        progress.no_improvement_count = 0 if improved else progress.no_improvement_count + 1
        return bool(progress.no_improvement_count >= self.n_iter_no_change)

    def _store_fitted(self, progress, classes, n_workers):
        sizes = [self.n_features_in_, *self._hidden_sizes()]
        dtype = progress.layers[0].dtype
        layers = [FlatParams(rbm_layout(sizes[i], sizes[i + 1]), dtype, flat)
                  for i, flat in enumerate(progress.layers)]
        self.visible_intercepts_ = [layer["visible_bias"].copy() for layer in layers]
        self.pretraining_history_ = [
            {k: list(v) for k, v in h.items()} for h in progress.pretraining_history
        ]
        if progress.network is not None:
            params = FlatParams(network_layout([*sizes, len(self.classes_ if classes is None
                                                             else classes)]),
                                dtype, progress.network)
            n = len(sizes)
            self.coefs_ = [params[f"weights_{i}"].copy() for i in range(n)]
            self.intercepts_ = [params[f"bias_{i}"].copy() for i in range(n)]
            if classes is not None:
                self.classes_ = classes
        else:
            self.coefs_ = [layer["weights"].copy() for layer in layers]
            self.intercepts_ = [layer["hidden_bias"].copy() for layer in layers]
            if hasattr(self, "classes_"):
                del self.classes_
        self.loss_curve_ = list(progress.loss_curve)
        self.n_iter_ = progress.n_iter
        self.validation_scores_ = (list(progress.validation_scores) if self.early_stopping
                                   else None)
        self.best_validation_score_ = (progress.best_validation_score if self.early_stopping
                                       and progress.validation_scores else None)
        self.best_loss_ = (progress.best_loss if not self.early_stopping
                           and np.isfinite(progress.best_loss) else None)
        self.n_workers_ = n_workers
        self.n_phase_retries_ = self.__dict__.pop("_phase_retries", 0)
        record = self.__dict__.pop("_fit_record", None) or FitRecord()
        self.worker_stats_ = record.workers
        self.worker_trace_ = record.trace

    # ------------------------------------------------------------------ inference

    def transform(self, X):
        """Activations of the top hidden layer.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        features : ndarray of shape (n_samples, hidden_layer_sizes[-1])
            Mean activations of the top hidden layer, in the dtype of ``X`` (float32 stays
            float32).
        """
        if is_spark_dataframe(X):
            return self._map_dataframe(X, self._features, self.transform_col, "array")
        return self._features(self._validate_inference_data(X))

    def _features(self, X):
        x = self._standardized(X, X.dtype)
        for weights, bias in zip(self._hidden_coefs(), self.intercepts_, strict=False):
            x = mean_hidden(x, _rbm_view(weights, bias, X.dtype))
        return x

    def predict_proba(self, X):
        """Class probabilities from the softmax head.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Probability of each class in ``classes_`` order.
        """
        if is_spark_dataframe(X):
            self._check_has_head()
            return self._map_dataframe(X, self._probabilities, self.probability_col, "array")
        X = self._validate_inference_data(X)
        self._check_has_head()
        return self._probabilities(X)

    def _probabilities(self, X):
        params = network_from_layers(self.coefs_, self.intercepts_, X.dtype)
        return forward(self._standardized(X, X.dtype), params, len(self.coefs_) - 1)[-1]

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            Log-probability of each class in ``classes_`` order.
        """
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """Most probable class of each sample.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        y : ndarray of shape (n_samples,)
            Predicted labels, from ``classes_``.
        """
        if is_spark_dataframe(X):
            self._check_has_head()
            kind = {"i": "long", "u": "long", "f": "double"}.get(self.classes_.dtype.kind,
                                                                   "string")
            return self._map_dataframe(X, self._labels, self.prediction_col, kind)
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def _labels(self, X):
        labels = self.classes_[np.argmax(self._probabilities(X), axis=1)]
        return labels.astype(str) if self.classes_.dtype.kind not in "iuf" else labels

    def score(self, X, y=None, sample_weight=None):
        """Accuracy of :meth:`predict` on ``X`` against ``y``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features) or Spark DataFrame
            Input data; a DataFrame carries its labels in ``label_col``.
        y : array-like of shape (n_samples,), default=None
            True labels (arrays only).
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the samples (arrays only).

        Returns
        -------
        score : float
            Mean accuracy.
        """
        if is_spark_dataframe(X):
            if y is not None or sample_weight is not None:
                raise ValueError("with a Spark DataFrame the labels are its label_col column; "
                                 "do not pass y or sample_weight")
            label_col = self._checked_label_col(X, "score")
            if label_col is None:
                raise ValueError("score needs labels: set label_col to the DataFrame's column "
                                 "of labels")
            return accuracy_of(self.predict(X), self.prediction_col, label_col)
        return super().score(X, y, sample_weight=sample_weight)

    def _map_dataframe(self, df, compute, name, kind):
        check_is_fitted(self)
        if self.handle_invalid == "error" and not df.isStreaming:  # an early, clear error
            check_feature_count(df, self.features_col, self.n_features_in_)
        return map_dataframe(df, self.features_col, self.n_features_in_, compute, name, kind,
                             self.handle_invalid)

    def _validate_inference_data(self, X):
        check_is_fitted(self)
        return validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32],
                             reset=False)

    def _check_has_head(self):
        if not hasattr(self, "classes_"):
            raise NotFittedError(
                "This DistributedDBN was fitted without labels (pretraining only), so it "
                "cannot predict. Call fit(X, y) with labels, or use transform(X) for features."
            )

    def _standardized(self, X, dtype):
        if self.mean_ is None:
            return X
        return standardize(X, self.mean_.astype(dtype), self.scale_.astype(dtype))

    def _hidden_coefs(self):
        return self.coefs_[: len(self.visible_intercepts_)]

    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, Integral) else list(sizes)
        if not sizes or not all(isinstance(s, Integral) and s >= 1 for s in sizes):
            raise ValueError(
                "hidden_layer_sizes must be a positive integer or a non-empty sequence of "
                f"positive integers, got {self.hidden_layer_sizes!r}"
            )
        return [int(s) for s in sizes]

    @property
    def _n_features_out(self):
        return self._hidden_coefs()[-1].shape[1]

    # ------------------------------------------------------------------ helpers

    @contextlib.contextmanager
    def _unchanged_on_error(self):
        """Restore the estimator's attributes if the block raises, so bad input never
        leaves a fitted model half-updated (fitted arrays are replaced, never mutated)."""
        saved = dict(self.__dict__)
        try:
            yield
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise

    def _report(self, message, level=1):
        report(self.verbose, message, level)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.target_tags.required = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def _within_unit_interval(X):
    values = X.data if sp.issparse(X) else X
    return values.size == 0 or (values.min() >= 0 and values.max() <= 1)


def _mean_history(results):
    """Per-pass figures averaged over the workers (over the passes all of them finished)."""
    merged = {}
    for name in results[0].history:
        series = [r.history[name] for r in results if r.history.get(name)]
        length = min((len(v) for v in series), default=0)
        merged[name] = [float(np.mean([v[i] for v in series])) for i in range(length)]
        if not merged[name] and series:
            merged[name] = [float(np.mean([v[-1] for v in series]))]
    return merged


def _glorot_uniform(n_in, n_out, rng):
    # The bound MLPClassifier uses for logistic units (Glorot & Bengio 2010).
    bound = np.sqrt(2.0 / (n_in + n_out))
    return rng.uniform(-bound, bound, size=(n_in, n_out))


def _column_mean(x):
    return np.asarray(x.mean(axis=0)).ravel()


@dataclass
class _TrainingData:
    """What ``_train`` needs to know of the training data, wherever it lives."""

    n_samples: int
    n_features: int
    dtype: np.dtype
    input_mean: np.ndarray  # mean of the first layer's (standardized) input
    X: object = None
    y: np.ndarray | None = None
    dataframe: object = None
    label_col: str | None = None
    summary: object = None
    engine: object = None  # the engine that read the DataFrame, to train on it

    @classmethod
    def of_arrays(cls, X, y, estimator):
        """Validated arrays held by the driver."""
        if estimator.mean_ is None:
            input_mean = _column_mean(X)
        else:
            input_mean = np.zeros(X.shape[1], dtype=X.dtype)  # standardized
        return cls(X.shape[0], X.shape[1], X.dtype, input_mean, X=X, y=y)

    @classmethod
    def of_dataframe(cls, df, label_col, summary, estimator, engine):
        """A Spark DataFrame read on the executors by ``engine``, in the dtype of its
        feature column."""
        d = summary.n_features
        input_mean = summary.mean if estimator.mean_ is None else np.zeros(d)
        return cls(summary.n_samples, d, summary.dtype, input_mean.astype(summary.dtype),
                   dataframe=df, label_col=label_col, summary=summary, engine=engine)

    def held_here(self, X, y):
        """The same data, read into this process as ``X`` and labels ``y`` (or None)."""
        return _TrainingData(self.n_samples, self.n_features, self.dtype, self.input_mean,
                             X=X, y=y)


def _standardization(mean, variance, dtype):
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


def _worker_rows(n_samples, n_workers, seed):
    """Rows of each worker: a seeded random permutation cut in ``n_workers`` near-equal parts
    (one worker keeps the rows as they are, given as None)."""
    if n_workers == 1:
        return [None]
    order = np.random.default_rng([seed, 4]).permutation(n_samples)
    return np.array_split(order, n_workers)


def _rbm_view(weights, bias, dtype):
    n_visible, n_hidden = weights.shape
    params = FlatParams(rbm_layout(n_visible, n_hidden), dtype)
    params["weights"][...] = weights
    params["hidden_bias"][...] = bias
    return params


def _finetuning_summary(progress):
    text = f"fine-tuned: {progress.n_iter} epochs in all"
    if progress.loss_curve:
        text += f": loss {progress.loss_curve[-1]:.5f}"
    if progress.validation_scores:
        text += f", best validation score {progress.best_validation_score:.4f}"
    return text


def _last_figures(history):
    return ", ".join(f"{name} {values[-1]:.4f}" for name, values in history.items() if values)
