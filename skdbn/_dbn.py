"""``DistributedDBN``: a deep belief network as a scikit-learn classifier and transformer.

The estimator is the scikit-learn face of skdbn: its parameters, ``fit`` and ``partial_fit``
as glue between the input preparation (``_inputs`` for arrays, ``spark.training_frame`` for
DataFrames) and the training schedule (``_schedule``), inference, and the fitted attributes
(a warm start's starting state in, the schedule's outcome out).
"""

import contextlib
import os

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from ._array_api import (
    attributes_to,
    fit_settings,
    host_attributes,
    in_input_namespace,
    numpy_dtype,
    on_host,
    tensor_input,
)
from ._flat import FlatParams
from ._inputs import WarmStart, prepare_arrays, prepare_partial_arrays, starting_state
from ._network import forward, network_from_layers, network_layout
from ._params import ADDED_SINCE_0_1, Settings, parameter_constraints
from ._phase import standardize
from ._rbm import mean_hidden, rbm_layout
from ._schedule import Plan, check_fit_device, train
from .spark.data import accuracy_of, check_feature_count, label_column, map_dataframe
from .spark.session import is_spark_dataframe
from .spark.training_frame import prepare_training_frame

_SEED_BOUND = np.iinfo(np.int32).max
# Where the documentation is published; the HTML repr in a notebook links to the
# estimator's entry there. SKDBN_DOCS_URL points it elsewhere (a local build, a mirror).
DOCS_URL = os.environ.get("SKDBN_DOCS_URL", "https://skdbn.readthedocs.io/en/latest/")
# Every attribute a fit sets (see the class's Attributes); set_fitted_state takes these.
FITTED_ATTRIBUTES = (
    "classes_", "coefs_", "intercepts_", "visible_intercepts_", "visible_units_", "mean_",
    "scale_", "pretraining_history_", "loss_curve_", "validation_scores_",
    "best_validation_score_", "best_loss_", "n_iter_", "n_workers_", "n_phase_retries_",
    "worker_stats_", "worker_trace_", "n_features_in_", "feature_names_in_",
)
# What every fitted model has (the others depend on how it was fitted).
_REQUIRED_FITTED = ("coefs_", "intercepts_", "visible_intercepts_", "visible_units_", "mean_",
                    "scale_", "n_features_in_")


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
    pretrain_epochs : int, default=5
        Epochs of contrastive divergence for each layer (the default was chosen by
        measurement, see ``docs/benchmarks.md``). 0 skips pretraining: the network then
        starts from Glorot-uniform weights, as :class:`~sklearn.neural_network.MLPClassifier`
        does.
    pretrain_learning_rate : float, default=0.1
        Learning rate of contrastive divergence (on the minibatch-mean gradient).
    cd_steps : int, default=1
        Gibbs steps per contrastive divergence update (the ``k`` of CD-k).
    persistent : bool, default=False
        Use persistent contrastive divergence: the negative chain carries over between
        minibatches instead of restarting at the data.
    max_iter : int, default=200
        Fine-tuning epochs at most. Fine-tuning ends sooner, as ``MLPClassifier``'s does, when
        the training loss (or, with early stopping, the validation accuracy) has not improved
        by ``tol`` for ``n_iter_no_change`` epochs; reaching ``max_iter`` is a normal end too
        (no ``ConvergenceWarning``).
    learning_rate : float, default=0.1
        Learning rate of fine-tuning SGD.
    momentum : float, default=0.9
        Momentum of both pretraining and fine-tuning; pretraining uses 0.5 for its first
        epochs (up to five, and at most half of them) while the RBM statistics settle.
    alpha : float, default=1e-4
        L2 penalty: the fine-tuning loss is the mean cross-entropy plus
        ``0.5 * alpha * ||W||^2``; pretraining decays its weights by the same coefficient.
    batch_size : int or "auto", default="auto"
        Minibatch size of both phases (capped at the number of samples). ``"auto"``: the
        training rows over 80, at least 10 and at most 100, so that small data gets enough
        updates per epoch and large data the speed of larger batches (measured in
        ``docs/benchmarks.md``); ``partial_fit`` follows each call's rows.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the labelled data (stratified) and stop
        fine-tuning when the validation accuracy has not improved by ``tol`` for
        ``n_iter_no_change`` epochs; the best network seen is kept. A Spark DataFrame's share
        is chosen on the executors; only it is read into the driver, which scores it.
    validation_fraction : float, default=0.1
        Share of the labelled rows held out when ``early_stopping`` is on.
    n_iter_no_change : int, default=5
        Epochs without improvement tolerated before fine-tuning stops. Set it above
        ``max_iter`` to train exactly ``max_iter`` epochs: with several workers the epoch loss
        is noisier and the loss rule can stop early (see the user guide).
    tol : float, default=3e-3
        Smallest improvement of the training loss (or, with early stopping, of the validation
        accuracy) that counts as progress. Larger than ``MLPClassifier``'s 1e-4: plain SGD
        with momentum lowers the loss by more than that long after the test error has
        stopped improving (``docs/benchmarks.md``).
    dtype : {"float32", "float64"}, numpy.float32, numpy.float64 or None, default=None
        The dtype training runs in, and the fitted model's (``dtype_``). ``None``: a Spark
        DataFrame trains in float32, as deep-learning libraries do (its vectors hold doubles;
        float32 trains about twice as fast, with the same accuracy on the benchmarks); an
        array follows scikit-learn's rule: float32 stays float32, other input is trained in
        float64. Set it to convert either kind of input.
    device : {"cpu", "cuda"}, default="cpu"
        Where each worker trains. ``"cpu"``: numpy, the fastest CPU path. ``"cuda"``:
        PyTorch on CUDA GPUs (install ``skdbn[gpu]``): on this machine worker ``r`` on GPU
        ``r`` modulo those ``CUDA_VISIBLE_DEVICES`` shows, ``n_workers=None`` taking one per
        GPU; on Spark each barrier task on the GPU its executor was assigned (one GPU a task,
        ``spark.executor.resource.gpu.amount``); at most one worker per 5,000 rows. The
        fitted model holds numpy arrays either way, so it pickles, loads and predicts
        without torch. A GPU fit draws other random numbers than a CPU fit. PyTorch tensors
        under scikit-learn's ``array_api_dispatch`` train on their own device whatever this
        says, and give tensors back (see the user guide, "Training on GPUs").
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
        numeric columns. Every kind trains in float32 unless ``dtype`` says otherwise.
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
    dtype_ : numpy.dtype
        The dtype the model was trained in and holds its weights in (see ``dtype``).
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
        One row per worker and phase of the last ``fit`` or ``partial_fit``, for
        ``pandas.DataFrame(worker_stats_)``. Keys: ``stage`` (``"layer 0"``, ...,
        ``"fine-tuning"``), ``phase`` (its index), ``worker``, ``samples`` (trained),
        ``messages_sent``, ``messages_merged`` (states exchanged with peers),
        ``seconds_waiting`` (for peers), ``seconds_reading``, ``seconds_training``,
        ``started`` (seconds into the fit), ``device`` (``"cpu"`` for numpy, else the torch
        device, e.g. ``"cuda:0"``) and ``address`` (``"host:port"`` of its gossip listener;
        None without peers). Phases resumed from a checkpoint are not in it.
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

    _parameter_constraints = parameter_constraints()

    # Test and benchmark hook, not a parameter: (worker rank, seconds to sleep per minibatch).
    _slow_worker = None
    _doc_link_module = "skdbn"
    _doc_link_template = DOCS_URL.rstrip("/") + "/api.html#{estimator_module}.{estimator_name}"

    def __init__(
        self,
        hidden_layer_sizes=(256, 256),
        visible_units="auto",
        pretrain_epochs=5,
        pretrain_learning_rate=0.1,
        cd_steps=1,
        persistent=False,
        max_iter=200,
        learning_rate=0.1,
        momentum=0.9,
        alpha=1e-4,
        batch_size="auto",
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=5,
        tol=3e-3,
        dtype=None,
        device="cpu",
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
        self.dtype = dtype
        self.device = device
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
        X : {array-like, sparse matrix} of shape (n_samples, n_features) or Spark DataFrame
            Training data. Sparse input must be CSR (other formats are converted). A
            DataFrame holds the features in ``features_col`` and the labels in
            ``label_col``.
        y : array-like of shape (n_samples,), default=None
            Class labels (arrays only). Without them only pretraining runs.

        Returns
        -------
        self : DistributedDBN
            The fitted estimator.
        """
        with _unchanged_on_error(self):
            settings, tensors, X, y = _fit_call(self, X, y)
            warm = self._warm_start() if self.warm_start and hasattr(self, "coefs_") else None
            seed = check_random_state(self.random_state).randint(_SEED_BOUND)
            with self._prepared(X, y, settings, warm, seed) as data:
                labelled = data.classes is not None
                state = starting_state(self, seed, warm, labelled, data.dtype)
                if warm is None:
                    plan = Plan("missing", settings.pretrain_epochs, settings.max_iter)
                else:
                    plan = Plan("none" if labelled else "all", settings.pretrain_epochs,
                                state.n_iter + settings.max_iter)
                outcome = train(settings, data, plan, state)
            self._set_fitted(outcome, data, settings,
                             input_names=warm is not None or not is_spark_dataframe(X))
            if tensors is not None:
                attributes_to(self, tensors)
        return self

    def _prepared(self, X, y, settings, warm, seed):
        if is_spark_dataframe(X):
            return prepare_training_frame(X, y, settings, warm, seed)
        return prepare_arrays(self, X, y, settings, warm, seed)

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
        with _unchanged_on_error(self):
            settings, tensors, X, y = _fit_call(self, X, y)
            classes = classes if tensors is None else tensors.labels_to_host(classes)
            warm = self._warm_start() if hasattr(self, "coefs_") else None
            data = prepare_partial_arrays(self, X, y, classes, settings, warm)
            # Each call draws new minibatches: the seed moves on with the epochs trained.
            seed = check_random_state(self.random_state).randint(_SEED_BOUND)
            epochs = len(getattr(self, "loss_curve_", [])) + sum(
                len(h["reconstruction_error"])
                for h in getattr(self, "pretraining_history_", []))
            state = starting_state(self, (seed + epochs) % _SEED_BOUND, warm, y is not None,
                                    data.dtype)
            if y is None:
                plan = Plan("all", pretrain_epochs=1, max_epochs=0)
            else:
                plan = Plan("missing", settings.pretrain_epochs, state.n_iter + 1,
                            stopping_rule=False)
            self._set_fitted(train(settings, data, plan, state), data, settings)
            if tensors is not None:
                attributes_to(self, tensors)
        return self

    # ------------------------------------------------------------------ fitted attributes

    def _warm_start(self):
        """What the fitted model fixes for a fit that continues it."""
        return WarmStart(self.n_features_in_, self.visible_units_, self.mean_, self.scale_,
                         getattr(self, "classes_", None),
                         tuple(c.shape[1] for c in self._hidden_coefs()), self.dtype_)

    def _set_fitted(self, outcome, data, settings, input_names=True):
        """Take the schedule's ``outcome`` as the fitted attributes; the input's, learned
        while the ``data`` was prepared, too. Arrays set their feature names in
        ``validate_data``; a DataFrame has none to keep (``input_names=False`` drops those of
        an earlier fit)."""
        state, sizes = outcome.state, [data.n_features, *settings.hidden_sizes]
        self.n_features_in_ = data.n_features
        if not input_names and hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        self.visible_units_, self.mean_, self.scale_ = data.visible_units, data.mean, data.scale
        layers = [FlatParams(rbm_layout(*sizes[i:i + 2]), state.layers[0].dtype, flat)
                  for i, flat in enumerate(state.layers)]
        self.visible_intercepts_ = [layer["visible_bias"].copy() for layer in layers]
        self.pretraining_history_ = [{k: list(v) for k, v in h.items()}
                                     for h in state.pretraining_history]
        if state.network is not None:
            params = FlatParams(network_layout([*sizes, len(data.classes)]),
                                state.layers[0].dtype, state.network)
            self.coefs_ = [params[f"weights_{i}"].copy() for i in range(len(sizes))]
            self.intercepts_ = [params[f"bias_{i}"].copy() for i in range(len(sizes))]
            self.classes_ = data.classes
        else:
            self.coefs_ = [layer["weights"].copy() for layer in layers]
            self.intercepts_ = [layer["hidden_bias"].copy() for layer in layers]
            self.__dict__.pop("classes_", None)
        self._set_fine_tuning_figures(state)
        self.n_workers_, self.n_phase_retries_ = outcome.n_workers, outcome.n_phase_retries
        self.worker_stats_, self.worker_trace_ = outcome.worker_stats, outcome.worker_trace

    def _set_fine_tuning_figures(self, state):
        self.loss_curve_ = list(state.loss_curve)
        self.n_iter_ = state.n_iter
        self.validation_scores_ = (list(state.validation_scores) if self.early_stopping
                                   else None)
        self.best_validation_score_ = (state.best_validation_score if self.early_stopping
                                       and state.validation_scores else None)
        self.best_loss_ = (state.best_loss if not self.early_stopping
                           and np.isfinite(state.best_loss) else None)

    def get_fitted_state(self):
        """The fitted attributes, for saving the model without pickle.

        The ``pyspark.ml`` stages save models this way: the values are numpy arrays, lists
        (of arrays, numbers or dicts), numbers, strings and None, which JSON and Parquet
        carry. :meth:`set_fitted_state` takes them back.

        Returns
        -------
        state : dict
            Each fitted attribute (``coefs_``, ``classes_``, ...) by name.
        """
        check_is_fitted(self)
        return {name: value for name, value in vars(on_host(self)).items()
                if name in FITTED_ATTRIBUTES}

    def set_fitted_state(self, state):
        """Make this estimator the model whose fitted attributes are ``state``.

        Parameters
        ----------
        state : dict
            As :meth:`get_fitted_state` gives it (attribute name to value).

        Returns
        -------
        self : DistributedDBN
            The fitted estimator.
        """
        unknown = sorted(set(state) - set(FITTED_ATTRIBUTES))
        missing = sorted(set(_REQUIRED_FITTED) - set(state))
        if unknown or missing:
            raise ValueError(f"not a fitted state of a DistributedDBN: unknown attributes "
                             f"{unknown}, missing attributes {missing}")
        for name in FITTED_ATTRIBUTES:
            self.__dict__.pop(name, None)
        self.__dict__.update(state)
        return self

    # ------------------------------------------------------------------ inference

    @in_input_namespace
    def transform(self, X):
        """Activations of the top hidden layer.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features) or Spark DataFrame
            Input data; a DataFrame holds the features in ``features_col``.

        Returns
        -------
        features : ndarray of shape (n_samples, hidden_layer_sizes[-1]) or Spark DataFrame
            Mean activations of the top hidden layer, in the dtype of ``X`` (float32 stays
            float32); for a DataFrame, the DataFrame with them in ``transform_col``, computed
            on the executors.
        """
        if is_spark_dataframe(X):
            return self._map_dataframe(X, self._features, self.transform_col, "array")
        return self._features(self._validate_inference_data(X))

    def _features(self, X):
        x = self._standardized(X, X.dtype)
        for weights, bias in zip(self._hidden_coefs(), self.intercepts_, strict=False):
            x = mean_hidden(x, _rbm_view(weights, bias, X.dtype))
        return x

    @in_input_namespace
    def predict_proba(self, X):
        """Class probabilities from the softmax head.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features) or Spark DataFrame
            Input data; a DataFrame holds the features in ``features_col``.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes) or Spark DataFrame
            Probability of each class in ``classes_`` order; for a DataFrame, the DataFrame
            with them as an array in ``probability_col``, computed on the executors.
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

    @in_input_namespace
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

    @in_input_namespace
    def predict(self, X):
        """Most probable class of each sample.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features) or Spark DataFrame
            Input data; a DataFrame holds the features in ``features_col``.

        Returns
        -------
        y : ndarray of shape (n_samples,) or Spark DataFrame
            Predicted labels, from ``classes_``; for a DataFrame, the DataFrame with them in
            ``prediction_col``, computed on the executors.
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
            label_col = label_column(X, self.label_col, "score")
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
                             self.handle_invalid, dtype=self.dtype_)

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

    @property
    def dtype_(self):
        """The dtype of the fitted weights: the dtype training ran in (read-only)."""
        check_is_fitted(self)
        return numpy_dtype(self.coefs_[0].dtype)

    @property
    def _n_features_out(self):
        return self._hidden_coefs()[-1].shape[1]

    # ------------------------------------------------------------------ helpers

    def __setstate__(self, state):
        # A model pickled before a hyper-parameter existed gets its default, which is what
        # that version did.
        super().__setstate__(state)
        for name, default in ADDED_SINCE_0_1.items():
            self.__dict__.setdefault(name, default)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.target_tags.required = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.array_api_support = True  # PyTorch tensors (see _array_api)
        return tags


def _fit_call(estimator, X, y):
    """``(settings, tensors, X, y)`` of a fit of ``estimator`` on ``X`` and ``y``: its
    settings, checked for their device before any data is prepared; the ``TensorInput`` of
    PyTorch tensors under ``array_api_dispatch`` (else None), whose fit trains on their
    device; and the data on the host. A model fitted on tensors is taken to the host, where
    a fit that continues it starts."""
    settings, tensors = Settings.of(estimator), tensor_input(X)
    if tensors is not None:
        X, y = tensors.to_host(X), tensors.labels_to_host(y)
        settings = fit_settings(settings, tensors)
    check_fit_device(settings, is_spark_dataframe(X))
    host_attributes(estimator)
    return settings, tensors, X, y


@contextlib.contextmanager
def _unchanged_on_error(estimator):
    """Restore ``estimator``'s attributes if the block raises, so bad input never leaves a
    fitted model half-updated (fitted arrays are replaced, never mutated)."""
    saved = dict(estimator.__dict__)
    try:
        yield
    except BaseException:
        estimator.__dict__.clear()
        estimator.__dict__.update(saved)
        raise


def _rbm_view(weights, bias, dtype):
    n_visible, n_hidden = weights.shape
    params = FlatParams(rbm_layout(n_visible, n_hidden), dtype)
    params["weights"][...] = weights
    params["hidden_bias"][...] = bias
    return params
