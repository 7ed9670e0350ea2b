"""The training schedule: which phases a fit runs, on which engine, and what it keeps.

``train(settings, data, plan, state)`` takes the frozen ``Settings`` of a fit, its
``TrainingData``, a ``Plan`` (what this call trains) and the ``TrainingState`` it starts
from; it resumes from a checkpoint where one fits, creates the fit's engine (the one place
that does), pretrains the layers one phase each, fine-tunes in phases of up to
``engine.epochs_per_phase`` epochs with the stopping rule, reruns a phase that lost a worker,
checkpoints after every phase, and returns a ``FitOutcome``. It never reads the estimator.
"""

from dataclasses import dataclass

import numpy as np

from ._checkpoint import TrainingState, check_state, load_checkpoint, save_checkpoint
from ._console import StageProgress, report
from ._devices import check_device
from ._engines import LocalEngine, plan_workers, resolve_backend
from ._flat import FlatParams
from ._network import forward, network_layout
from ._params import batch_size_for
from ._phase import FinetunePhase, PhaseState, PretrainPhase, standardize
from ._processes import ProcessEngine
from ._rbm import BERNOULLI, init_rbm, rbm_layout
from ._watch import FitRecord


@dataclass(frozen=True)
class Plan:
    """What one call to ``fit`` or ``partial_fit`` trains.

    Attributes
    ----------
    pretrain : {"missing", "all", "none"}
        Pretrain the layers not trained yet, continue every layer, or none.
    pretrain_epochs : int
        Epochs of each pretrained layer.
    max_epochs : int
        Fine-tuning epochs the model has in all when this call ends, at most (fine-tuning
        runs when the data has classes).
    stopping_rule : bool, default=True
        Whether fine-tuning stops early on the loss or the validation score.
    """

    pretrain: str
    pretrain_epochs: int
    max_epochs: int
    stopping_rule: bool = True


@dataclass(frozen=True)
class FitOutcome:
    """What a fit produced: its final ``state``, the workers it used, the phases it reran
    after losing a worker, and the per-worker rows (``worker_stats_``, ``worker_trace_``)."""

    state: TrainingState
    n_workers: int
    n_phase_retries: int
    worker_stats: list
    worker_trace: list


def check_fit_device(settings, dataframe_input):
    """Raise what keeps a fit's ``device`` from training where its workers will run, before
    any data is prepared: this machine's GPUs, or (on Spark) the executors', which the
    placement checks with the session's slots."""
    on_spark = resolve_backend(settings.backend, dataframe_input, settings.device) == "spark"
    check_device(settings.device, on_spark)


def train(settings, data, plan, state):
    """Run the phases of ``plan`` on ``data`` from ``state`` and return the ``FitOutcome``.

    Parameters
    ----------
    settings : Settings
        The fit's hyper-parameters, frozen.
    data : TrainingData
        What it trains on; ``data.workers``, if set, are the workers a DataFrame was dealt
        to, else they are chosen here.
    plan : Plan
        What this call trains.
    state : TrainingState
        Where it starts (a fresh state, or the model a warm start continues); a checkpoint
        of the same fit (``data.checkpoint_key``) takes its place.
    """
    return _Schedule(settings, data).run(plan, state)


class _Schedule:
    """One fit's run through its phases; the per-fit counters live here."""

    def __init__(self, settings, data):
        self.settings = settings
        self.data = data
        self.sizes = (data.n_features, *settings.hidden_sizes)
        self.batch_size = batch_size_for(settings.batch_size, data.n_samples)
        self.record = FitRecord()
        self.retries = 0
        self.engine = None

    def run(self, plan, state):
        state = self._resumed(state)
        self._check_n_workers()
        self.engine = make_engine(self.data.workers or plan_workers(
            self.settings, self.data.n_samples), self.settings)
        try:
            self.engine.start(self.data, state.seed)
            if plan.pretrain != "none":
                first = 0 if plan.pretrain == "all" else len(state.layers)
                self._pretrain(state, first, plan.pretrain_epochs)
            if self.data.classes is not None:
                self._finetune(state, plan)
        finally:
            self.engine.close()
        return FitOutcome(state, self.engine.n_workers, self.retries, self.record.workers,
                          self.record.trace)

    def _report(self, message, level=1):
        report(self.settings.verbose, message, level)

    # ------------------------------------------------------------------ starting point

    def _resumed(self, state):
        """The checkpoint of this fit, if one is saved and sound, else ``state``."""
        key, directory = self.data.checkpoint_key, self.settings.checkpoint_dir
        if directory is None or key is None:
            return state
        classes = self.data.classes
        n_classes = None if classes is None else len(classes)
        saved, path = load_checkpoint(
            directory, key, lambda s: check_state(s, list(self.sizes), n_classes,
                                                  self.data.dtype))
        if saved is None:
            return state
        self._report(f"resumed from {path}: {len(saved.layers)} of {len(self.sizes) - 1} "
                     f"layers pretrained, {saved.n_iter} fine-tuning epochs done")
        return saved

    def _check_n_workers(self):
        n_workers, n_samples = self.settings.n_workers, self.data.n_samples
        if n_workers is not None and n_workers > n_samples:
            raise ValueError(
                f"n_workers={n_workers} is more than the {n_samples} training samples; "
                "every worker needs a shard"
            )

    def _checkpoint(self, state):
        if self.settings.checkpoint_dir is not None and self.data.checkpoint_key is not None:
            save_checkpoint(self.settings.checkpoint_dir, self.data.checkpoint_key, state)

    # ------------------------------------------------------------------ phases

    def _run_with_retries(self, phase, state, below, stage):
        """Run ``phase`` on the engine (rerun after a lost worker), shown on ``stage``'s
        progress bar; the consensus state and the workers' results."""
        state, results, retries = run_with_retries(
            self.engine, phase, state, below, self.settings.phase_retries,
            lambda message: self._report(f"{type(phase).__name__}: {message}"),
            monitor=stage if self.settings.verbose >= 1 else None)
        self.retries += retries
        self.record.add(stage.name, results)
        return state, results

    # ------------------------------------------------------------------ pretraining

    def _pretrain(self, state, first, epochs):
        for index in range(first, len(self.sizes) - 1):
            with StageProgress(f"layer {index}", "reconstruction error", self.data.n_samples,
                               epochs, self.settings.verbose) as stage:
                params, history, output_mean = self._pretrain_layer(state, index, epochs,
                                                                    stage)
                _record_layer(state, index, params, history, output_mean)
                stage.close(f"pretrained layer {index}: {_last_figures(history)}")
            self._checkpoint(state)

    def _pretrain_layer(self, state, index, epochs, stage):
        """Pretrain layer ``index`` for ``epochs`` epochs: its parameters, per-epoch history
        and mean hidden activation (the next layer's visible mean)."""
        # A stream of its own per layer: a fit resumed at this layer draws what an
        # uninterrupted one does.
        rng = np.random.default_rng([state.seed, 0, index])
        phase = self._pretrain_phase(index, epochs, state.seed)
        initial = self._initial_layer(state, index, phase, rng)
        if epochs == 0:
            # Untrained: no better guess of the activations than one half.
            return initial, {"reconstruction_error": []}, np.full(self.sizes[index + 1], 0.5)
        below = [FlatParams(rbm_layout(*self.sizes[i:i + 2]), self.data.dtype, state.layers[i])
                 for i in range(index)]
        consensus, results = self._run_with_retries(
            phase, PhaseState(initial, np.zeros_like(initial)), below, stage)
        history = _mean_history(results)
        stage.phase_done(results, history["reconstruction_error"], epochs)
        output_mean = np.average([r.hidden_mean for r in results], axis=0,
                                 weights=[r.n_samples for r in results])
        return consensus.params, history, output_mean

    def _pretrain_phase(self, index, epochs, seed):
        s = self.settings
        return PretrainPhase(
            layer=index, n_visible=self.sizes[index], n_hidden=self.sizes[index + 1],
            visible_units=self.data.visible_units if index == 0 else BERNOULLI,
            epochs=epochs, batch_size=self.batch_size, learning_rate=s.pretrain_learning_rate,
            momentum=s.momentum, weight_decay=s.alpha, cd_steps=s.cd_steps,
            persistent=s.persistent, seed=(seed, 1, index), slow_worker=s.slow_worker,
            device=s.device,
        )

    def _initial_layer(self, state, index, phase, rng):
        """The starting parameters of layer ``index``: the layer trained so far, or a new
        one (Glorot weights when it will not be pretrained)."""
        if index < len(state.layers):
            return state.layers[index]
        visible_mean = self.data.input_mean if index == 0 else state.layer_means[index - 1]
        n_visible, n_hidden = self.sizes[index], self.sizes[index + 1]
        layer = init_rbm(n_visible, n_hidden, visible_mean, phase.visible_units,
                         self.data.dtype, rng)
        if phase.epochs == 0:
            layer["weights"][...] = _glorot_uniform(n_visible, n_hidden, rng)
        return layer.flat

    # ------------------------------------------------------------------ fine-tuning

    def _finetune(self, state, plan):
        sizes = (*self.sizes, len(self.data.classes))
        if state.network is None:
            state.network = _initial_network(state, sizes).flat
            state.velocity = np.zeros_like(state.network)
        with StageProgress("fine-tuning", "loss", self.data.n_samples,
                           max(0, plan.max_epochs - state.n_iter),
                           self.settings.verbose) as stage:
            while not state.finetune_done and state.n_iter < plan.max_epochs:
                self._finetune_phase(state, sizes, plan, stage)
            if self.data.validation is not None and state.best_network is not None:
                state.network = state.best_network
            stage.close(_finetuning_summary(state))

    def _finetune_phase(self, state, sizes, plan, stage):
        """One phase of fine-tuning epochs, each epoch's figure put to the stopping rule."""
        s, validation = self.settings, self.data.validation
        phase = FinetunePhase(
            layer_sizes=sizes,
            epochs=min(1 if validation else self.engine.epochs_per_phase,
                       plan.max_epochs - state.n_iter),
            batch_size=self.batch_size, learning_rate=s.learning_rate, momentum=s.momentum,
            alpha=s.alpha, seed=(state.seed, 2, state.n_iter), slow_worker=s.slow_worker,
            device=s.device,
        )
        consensus, results = self._run_with_retries(
            phase, PhaseState(state.network, state.velocity), [], stage)
        state.network, state.velocity = consensus.params, consensus.velocity
        losses = _mean_history(results)["loss"][-phase.epochs:]
        stage.phase_done(results, losses, phase.epochs)
        for loss in losses:
            state.loss_curve.append(loss)
            if plan.stopping_rule and not state.finetune_done:
                state.finetune_done = self._should_stop(state, sizes)
                if validation is not None:
                    stage.note(f"validation score {state.validation_scores[-1]:.4f}")
        self._checkpoint(state)

    def _should_stop(self, state, sizes):
        """Record this epoch's figure and say whether fine-tuning should stop."""
        tol = self.settings.tol
        if self.data.validation is not None:
            score = self._validation_score(state, sizes)
            state.validation_scores.append(score)
            improved = score > state.best_validation_score + tol
            if score > state.best_validation_score:
                state.best_validation_score = score
                state.best_network = state.network.copy()
        else:
            loss = state.loss_curve[-1]
            improved = loss < state.best_loss - tol
            state.best_loss = min(state.best_loss, loss)
        state.no_improvement_count = 0 if improved else state.no_improvement_count + 1
        return bool(state.no_improvement_count >= self.settings.n_iter_no_change)

    def _validation_score(self, state, sizes):
        X_val, y_val = self.data.validation
        params = FlatParams(network_layout(list(sizes)), state.network.dtype, state.network)
        dtype = params.flat.dtype
        if self.data.mean is not None:
            X_val = standardize(X_val, self.data.mean.astype(dtype),
                                self.data.scale.astype(dtype))
        probabilities = forward(X_val, params, len(sizes) - 2)[-1]
        return float(np.mean(probabilities.argmax(axis=1) == y_val))


def make_engine(workers, settings):
    """The engine of a ``WorkerPlan``: the only place a fit's engine is made."""
    limits = {} if settings.network_timeout is None else {
        "timeout": float(settings.network_timeout)}
    if workers.kind == "this process":
        return LocalEngine()
    if workers.kind == "processes":
        return ProcessEngine(workers.n_workers, settings.sync, settings.sync_every, **limits)
    from .spark.stages import SparkEngine

    return SparkEngine(workers.placement, settings.sync, settings.sync_every, **limits)


def run_with_retries(engine, phase, state, below, retries, report, monitor=None):
    """``engine.run_phase(phase, state, below, monitor)``, rerun from the same starting state
    when it fails because a worker was lost, at most ``retries`` times.

    ``report(message)`` is told of every retry, and of what ``engine.recover()`` changed
    (fewer workers). Errors that are not a lost worker (bad data, divergence, a bug) are
    raised at once. ``monitor.attempt(n_workers)``, if a monitor is given, is called before
    every try with the number of workers it runs on.

    Returns
    -------
    consensus_state, results, n_retries
    """
    attempt = 0
    while True:
        try:
            if monitor is not None:
                monitor.attempt(engine.phase_workers)
            return (*engine.run_phase(phase, state, below, monitor), attempt)
        except Exception as error:
            reason = engine.lost_worker(error)
            if reason is None:
                raise
            if attempt == retries:
                error.add_note(f"skdbn: {reason}; the phase was tried {attempt + 1} times "
                               f"(phase_retries={retries})")
                raise
            report(f"{reason}; rerunning the phase from its starting state "
                   f"(retry {attempt + 1} of {retries})")
        attempt += 1
        change = engine.recover()
        if change:
            report(change)


def _glorot_uniform(n_in, n_out, rng):
    """Weights drawn with the bound MLPClassifier uses for logistic units (Glorot & Bengio
    2010)."""
    bound = np.sqrt(2.0 / (n_in + n_out))
    return rng.uniform(-bound, bound, size=(n_in, n_out))


def _initial_network(state, sizes):
    """The network to fine-tune: the pretrained layers and a Glorot softmax head."""
    dtype = state.layers[0].dtype if state.layers else np.float64
    params = FlatParams(network_layout(list(sizes)), dtype)
    rng = np.random.default_rng([state.seed, 3])
    n_hidden = len(sizes) - 2
    for i in range(n_hidden):
        layer = FlatParams(rbm_layout(sizes[i], sizes[i + 1]), dtype, state.layers[i])
        params[f"weights_{i}"][...] = layer["weights"]
        params[f"bias_{i}"][...] = layer["hidden_bias"]
    params[f"weights_{n_hidden}"][...] = _glorot_uniform(*sizes[-2:], rng)
    return params


def _record_layer(state, index, params, history, output_mean):
    if index < len(state.layer_means):
        state.layer_means[index] = output_mean
    else:
        state.layer_means.append(output_mean)
    if index < len(state.layers):
        state.layers[index] = params
        merged = {k: list(state.pretraining_history[index].get(k, [])) + list(v)
                  for k, v in history.items()}
        state.pretraining_history[index] = merged
    else:
        state.layers.append(params)
        state.pretraining_history.append({k: list(v) for k, v in history.items()})


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


def _finetuning_summary(state):
    text = f"fine-tuned: {state.n_iter} epochs in all"
    if state.loss_curve:
        text += f": loss {state.loss_curve[-1]:.5f}"
    if state.validation_scores:
        text += f", best validation score {state.best_validation_score:.4f}"
    return text


def _last_figures(history):
    return ", ".join(f"{name} {values[-1]:.4f}" for name, values in history.items() if values)
