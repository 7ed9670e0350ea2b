"""One phase of DBN training on one worker's shard (no Spark here).

A *phase* is either the pretraining of one RBM layer or a round of fine-tuning epochs. A worker
receives the phase description, its shard of the data, the starting state (identical on every
worker) and the finished layers below, trains (``train_phase``), and returns its state and
history; ``consensus`` averages the workers' states. Engines decide where workers run
(``_worker.run_worker`` is what each of them does); the schedule decides which phases run.
"""

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ._flat import FlatParams
from ._network import Backprop, layer_sizes_of, network_layout, penalty
from ._rbm import (
    BERNOULLI,
    GAUSSIAN_LEARNING_RATE_FACTOR,
    ContrastiveDivergence,
    mean_hidden,
    pseudo_likelihood,
    rbm_layout,
    reconstruction_error,
)
from ._sync import LocalBudget
from ._watch import WorkerLog

# Rows of the shard used for the per-epoch monitoring figures; enough for a stable estimate at
# a few percent of the cost of an epoch. On small data, at most an eighth of the rows (and no
# fewer than MONITOR_ROWS_SMALL), so that watching an epoch never costs a large share of it.
MONITOR_ROWS = 512
MONITOR_ROWS_SMALL = 64

# Rows of a worker's shard, drawn at random, whose mean hidden activation starts the next
# layer's visible biases: its standard error is below 0.011 per unit, which an initial bias
# does not feel, where the whole shard cost a tenth of a 2-epoch phase.
HIDDEN_MEAN_ROWS = 2048


@dataclass(frozen=True)
class PretrainPhase:
    """Pretraining of RBM layer ``layer`` with contrastive divergence."""

    layer: int
    n_visible: int
    n_hidden: int
    visible_units: str
    epochs: int
    batch_size: int
    learning_rate: float
    momentum: float
    weight_decay: float
    cd_steps: int
    persistent: bool
    seed: tuple
    slow_worker: tuple | None = None
    device: str = "cpu"

    def layout(self):
        """Shapes of the parameters this phase trains."""
        return rbm_layout(self.n_visible, self.n_hidden)


@dataclass(frozen=True)
class FinetunePhase:
    """Backprop epochs over the whole network with a softmax head."""

    layer_sizes: tuple
    epochs: int
    batch_size: int
    learning_rate: float
    momentum: float
    alpha: float
    seed: tuple
    slow_worker: tuple | None = None
    device: str = "cpu"

    def layout(self):
        """Shapes of the parameters this phase trains."""
        return network_layout(list(self.layer_sizes))


@dataclass
class Shard:
    """A worker's part of the training data.

    ``X`` is the validated input, ``y`` class codes in ``range(n_classes)`` or None, and
    ``mean``/``scale`` the standardization of Gaussian visible units (None for Bernoulli).
    """

    X: object
    y: np.ndarray | None = None
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    @property
    def n_samples(self):
        """Number of rows in the shard."""
        return self.X.shape[0]


@dataclass
class PhaseState:
    """Parameters and optimizer velocity of a phase, each one flat vector."""

    params: np.ndarray
    velocity: np.ndarray


@dataclass
class PhaseResult:
    """What a worker returns at the end of a phase."""

    state: PhaseState
    weight: float
    n_samples: int
    history: dict = field(default_factory=dict)
    hidden_mean: np.ndarray | None = None
    samples_trained: int = 0
    seconds: dict = field(default_factory=dict)  # wall time by step, where the engine measures
    diagnostics: dict = field(default_factory=dict)  # WorkerLog.summary()


def standardize(X, mean, scale):
    """Dense ``(X - mean) / scale`` in the dtype of ``X``; sparse input is densified."""
    X = X.toarray() if sp.issparse(X) else np.array(X, copy=True)
    X -= mean
    X /= scale
    return X


def layer_input(shard, below):
    """The shard pushed through the finished layers ``below`` (list of RBM ``FlatParams``)."""
    x = shard.X if shard.mean is None else standardize(shard.X, shard.mean, shard.scale)
    for params in below:
        x = mean_hidden(x, params)
    return x


def train_phase(phase, shard, state, below, sync=None, rank=0, log=None, math=None):
    """Train ``phase`` on ``shard`` from ``state``; dispatches on the phase type.

    Parameters
    ----------
    phase : PretrainPhase or FinetunePhase
    shard : Shard
    state : PhaseState
        Starting parameters and velocity; not modified.
    below : list of FlatParams
        Finished RBM layers under the one being pretrained (empty for fine-tuning).
    sync : synchronizer, default=None
        Exchange policy and work budget (see ``_sync``); None trains ``phase.epochs`` passes
        over the shard alone.
    rank : int, default=0
        This worker's index (selects its random stream).
    log : WorkerLog, default=None
        Where the worker records its progress while it trains (read by a reporter thread);
        None: a log of its own. Its summary is the result's ``diagnostics``.
    math : TrainingMath, default=None
        The training loops of the two phase types: numpy's (None), or a device's
        (``_device_training``).

    Returns
    -------
    result : PhaseResult
    """
    math = NUMPY_MATH if math is None else math
    rng = np.random.default_rng([*phase.seed, rank])
    params = FlatParams(phase.layout(), state.params.dtype, state.params.copy())
    if sync is None:
        sync = LocalBudget(phase.epochs, shard.n_samples)
    log = WorkerLog() if log is None else log
    sync.begin(params.flat, float(shard.n_samples), log)
    delay = phase.slow_worker[1] if phase.slow_worker and phase.slow_worker[0] == rank else 0
    # A diverging run overflows; it is reported once, below, by the finiteness check.
    hidden_mean = None
    with np.errstate(over="ignore", invalid="ignore"):
        if isinstance(phase, PretrainPhase):
            x = layer_input(shard, below)
            velocity, history = math.train_rbm(phase, x, params, rng, sync, log, delay)
            hidden_mean = estimated_hidden_mean(x, params, np.random.default_rng(
                [*phase.seed, rank, 1]))
        else:
            x = layer_input(shard, [])
            velocity, history = math.train_network(phase, x, shard.y, params, state.velocity,
                                                   rng, sync, log, delay)
    weight = sync.finish()
    if not np.all(np.isfinite(params.flat)):
        raise FloatingPointError(
            f"training diverged in {type(phase).__name__} (parameters are no longer finite); "
            "lower the learning rate"
        )
    final = PhaseState(params.flat, velocity)
    return PhaseResult(final, weight=weight, n_samples=shard.n_samples, history=history,
                       hidden_mean=hidden_mean, samples_trained=log.samples,
                       diagnostics=log.summary())


def estimated_hidden_mean(x, params, rng):
    """The mean hidden activation of the RBM ``params`` over the rows ``x``, estimated from
    at most ``HIDDEN_MEAN_ROWS`` of them drawn by ``rng``: the data the next layer will see,
    whose visible biases start from it."""
    if x.shape[0] > HIDDEN_MEAN_ROWS:
        x = x[np.sort(rng.choice(x.shape[0], HIDDEN_MEAN_ROWS, replace=False))]
    return mean_hidden(x, params).mean(axis=0)


def run_minibatches(n_samples, batch_size, rng, sync, log, delay, train, end_epochs,
                    new_order=None):
    """Train minibatches over reshuffled passes of the shard until the budget is used.

    ``train(rows, epoch)`` trains one minibatch; ``end_epochs(count)`` is called whenever
    ``count`` more epochs of the phase have ended by the synchronizer's count, and returns the
    figure of the last of them, which goes to ``log`` with the count (for one worker
    a pass over its shard, for gossip the whole training set over all workers, so a fast and a
    slow worker report the same number of epochs). ``delay`` (seconds per minibatch) slows this
    worker down for straggler experiments. ``new_order(order)``, if given, hears each pass's
    permutation before its first minibatch, whose ``rows`` then come from it in turn.
    """
    epoch = 0
    while sync.keep_going():
        order = rng.permutation(n_samples)
        if new_order is not None:
            new_order(order)
        for start in range(0, n_samples, batch_size):
            if not sync.keep_going():
                break
            rows = order[start:start + batch_size]
            train(rows, epoch)
            if delay:
                time.sleep(delay)
            sync.after_minibatch(len(rows))
            log.trained(len(rows))
            epoch = _end_finished_epochs(sync, log, epoch, end_epochs)
    # Peers' final counts can complete the budget between two minibatches of this worker.
    _end_finished_epochs(sync, log, epoch, end_epochs)


def _end_finished_epochs(sync, log, epoch, end_epochs):
    finished = sync.epochs_done()
    if finished > epoch:
        log.ended_epochs(finished, end_epochs(finished - epoch))
    return max(epoch, finished)


def _gather_rows(x, rows, out):
    if sp.issparse(x):
        out[...] = x[rows].toarray()
    else:
        np.take(x, rows, axis=0, out=out)


def monitor_rows(shard_rows, n_workers):
    """Rows of a worker's shard that its per-epoch figures watch. The workers' figures are
    averaged: together they watch ``MONITOR_ROWS`` rows (an eighth of the data, at least
    ``MONITOR_ROWS_SMALL``, on small data), each its share."""
    watched = min(MONITOR_ROWS, max(MONITOR_ROWS_SMALL, shard_rows * n_workers // 8))
    return -(-watched // n_workers)


def _train_rbm(phase, x, params, rng, sync, log, delay):
    learning_rate = rbm_learning_rate(phase)
    batch_size = min(phase.batch_size, x.shape[0])
    trainer = ContrastiveDivergence(
        params, phase.visible_units, batch_size, phase.cd_steps, phase.persistent,
        learning_rate, phase.momentum, phase.weight_decay, rng,
    )
    monitor = RbmMonitor(phase, x, params, rng, sync)

    def train(rows, epoch):
        trainer.momentum = rbm_momentum(phase, epoch)
        trainer.learning_rate = learning_rate * sync.step_scale()
        _gather_rows(x, rows, trainer.load_batch(len(rows)))
        trainer.step(len(rows))

    run_minibatches(x.shape[0], batch_size, rng, sync, log, delay, train, monitor.end_epochs)
    return trainer.velocity.flat, monitor.history()


def rbm_learning_rate(phase):
    """The pretraining step size of ``phase``: smaller for Gaussian visible units."""
    if phase.visible_units != BERNOULLI:
        return phase.learning_rate * GAUSSIAN_LEARNING_RATE_FACTOR
    return phase.learning_rate


def rbm_momentum(phase, epoch):
    """Pretraining momentum in ``epoch``: at most 0.5 over the first epochs (up to five, at
    most half of the phase's), then the phase's."""
    warmup_epochs = min(5, phase.epochs // 2)
    return min(0.5, phase.momentum) if epoch < warmup_epochs else phase.momentum


class RbmMonitor:
    """The per-epoch figures of a pretraining phase (reconstruction error, and for Bernoulli
    units the pseudo-likelihood) on the first rows of the worker's input ``x``, from the host
    parameters ``params``.

    Its random stream is drawn from ``rng`` once, here: what a fit learns must not depend on
    how many rows watch it.
    """

    def __init__(self, phase, x, params, rng, sync):
        self.phase = phase
        self.params = params
        self.rows = x[:monitor_rows(x.shape[0], getattr(sync, "n_workers", 1))]
        self.rng = np.random.default_rng(rng.integers(2**63))
        self.figures = {"reconstruction_error": [], "pseudo_likelihood": []}

    def end_epochs(self, count):
        """Record the figures of ``count`` more ended epochs; returns the error."""
        units = self.phase.visible_units
        error = reconstruction_error(self.rows, self.params, units)
        self.figures["reconstruction_error"] += [error] * count
        if units == BERNOULLI:
            self.figures["pseudo_likelihood"] += [
                pseudo_likelihood(self.rows, self.params, self.rng)] * count
        return error

    def history(self):
        """The figures by name (no pseudo-likelihood for Gaussian units)."""
        if self.phase.visible_units != BERNOULLI:
            del self.figures["pseudo_likelihood"]
        return self.figures


def _train_network(phase, x, y, params, velocity, rng, sync, log, delay):
    n_classes = layer_sizes_of(params)[-1]
    trainer = Backprop(params, phase.learning_rate, phase.momentum, phase.alpha)
    trainer.velocity.flat[...] = velocity
    batch_size = min(phase.batch_size, x.shape[0])
    onehot = np.zeros((batch_size, n_classes), dtype=params.flat.dtype)
    monitor = LossMonitor(phase, params)

    def train(rows, epoch):
        trainer.learning_rate = phase.learning_rate * sync.step_scale()
        batch_onehot = onehot[: len(rows)]
        batch_onehot[...] = 0
        batch_onehot[np.arange(len(rows)), y[rows]] = 1
        monitor.add(trainer.step(x[rows], batch_onehot), len(rows))

    run_minibatches(x.shape[0], batch_size, rng, sync, log, delay, train, monitor.end_epochs)
    return trainer.velocity.flat, monitor.history()


class LossMonitor:
    """The per-epoch loss of a fine-tuning phase: the mean cross-entropy of the epoch's
    minibatches plus the L2 term of the host parameters ``params``."""

    def __init__(self, phase, params):
        self.alpha = phase.alpha
        self.params = params
        self.losses = []
        self._total, self._seen = 0.0, 0

    def add(self, summed_loss, n_rows):
        """Count a minibatch of ``n_rows`` rows whose losses sum to ``summed_loss`` (a number,
        or a 0-d tensor left on its device until the epoch ends)."""
        self._total += summed_loss
        self._seen += n_rows

    def end_epochs(self, count):
        """Record the loss of ``count`` more ended epochs, and return it."""
        loss = float(self._total) / max(self._seen, 1) + penalty(self.params, self.alpha)
        self.losses += [loss] * count
        self._total, self._seen = 0.0, 0
        return loss

    def history(self):
        """The per-epoch losses, as a phase's history."""
        return {"loss": self.losses}


@dataclass(frozen=True)
class TrainingMath:
    """The training loops of a phase, by phase type: ``train_rbm(phase, x, params, rng, sync,
    log, delay)`` and ``train_network(phase, x, y, params, velocity, rng, sync, log, delay)``,
    each training ``params`` (a host ``FlatParams``) in place and returning ``(velocity,
    history)`` with the final velocity as a host vector."""

    train_rbm: object
    train_network: object


NUMPY_MATH = TrainingMath(_train_rbm, _train_network)


def consensus(results):
    """Weighted average of the workers' states (weights as carried by push-sum).

    Parameters
    ----------
    results : list of PhaseResult

    Returns
    -------
    state : PhaseState
    """
    weights = np.array([r.weight for r in results], dtype=np.float64)
    weights /= weights.sum()
    dtype = results[0].state.params.dtype

    def average(vectors):
        return sum(w * v.astype(np.float64) for w, v in zip(weights, vectors, strict=True))

    params = average([r.state.params for r in results])
    velocity = average([r.state.velocity for r in results])
    return PhaseState(params.astype(dtype), velocity.astype(dtype))
