"""Restricted Boltzmann machine math on numpy arrays (no Spark here).

Layout conventions: weights are ``(n_visible, n_hidden)``, data rows are samples. Visible units
are Bernoulli (values in [0, 1]) or Gaussian with unit variance (data standardized by the caller);
hidden units are Bernoulli. All functions keep the dtype of their inputs, so float32 data is
trained in float32.
"""

import os
import queue
import threading
import weakref

import numpy as np
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController

from ._flat import FlatParams

BERNOULLI = "bernoulli"
GAUSSIAN = "gaussian"

# Hinton (2010), section 13.2: Gaussian visible units need a 10-100x smaller learning rate.
GAUSSIAN_LEARNING_RATE_FACTOR = 0.1

_MAX_NEGATIVE_EXPONENT = 30.0


def rbm_layout(n_visible, n_hidden):
    """Shapes of an RBM's parameters in their flat storage order."""
    return {
        "weights": (n_visible, n_hidden),
        "hidden_bias": (n_hidden,),
        "visible_bias": (n_visible,),
    }


def init_rbm(n_visible, n_hidden, visible_mean, visible_units, dtype, rng):
    """Initial RBM parameters following Hinton's practical guide.

    Weights are drawn from N(0, 0.01^2), hidden biases are zero and Bernoulli visible biases are
    ``log(p / (1 - p))`` of the data's mean activation ``p``, so that the visible units start
    at the data's marginal distribution.

    Parameters
    ----------
    n_visible, n_hidden : int
        Layer sizes.
    visible_mean : ndarray of shape (n_visible,)
        Mean of the training data seen by this layer.
    visible_units : {"bernoulli", "gaussian"}
        Kind of the visible units.
    dtype : numpy dtype
        Floating point type of the parameters.
    rng : numpy.random.Generator
        Source of the initial weights.

    Returns
    -------
    params : FlatParams
        Views ``weights``, ``hidden_bias`` and ``visible_bias``.
    """
    params = FlatParams(rbm_layout(n_visible, n_hidden), dtype)
    params["weights"][...] = rng.normal(0.0, 0.01, size=(n_visible, n_hidden))
    if visible_units == BERNOULLI:
        p = np.clip(np.asarray(visible_mean, dtype=np.float64), 1e-3, 1 - 1e-3)
        params["visible_bias"][...] = np.log(p / (1 - p))
    else:
        params["visible_bias"][...] = visible_mean
    return params


def sigmoid_(x):
    """Logistic function computed in place; returns ``x``.

    Uses ``1 / (1 + exp(-x))`` with numpy's vectorised ``exp``, about three times faster than
    ``scipy.special.expit`` on float32 here. ``-x`` is capped at 80 so the result never drops
    below 1.8e-35: smaller float32 outputs would be denormal numbers, which make every later
    matrix product on them many times slower on x86 (and ``exp`` would overflow).
    """
    np.negative(x, out=x)
    np.minimum(x, _MAX_NEGATIVE_EXPONENT, out=x)
    np.exp(x, out=x)
    x += 1
    np.reciprocal(x, out=x)
    return x


def _dot(a, b):
    return a @ b if sp.issparse(a) else np.matmul(a, b)


def mean_hidden(v, params):
    """Hidden probabilities ``sigmoid(v W + c)`` of shape (n_samples, n_hidden)."""
    h = np.asarray(_dot(v, params["weights"]))
    h += params["hidden_bias"]
    return sigmoid_(h)


def mean_visible(h, params, visible_units):
    """Visible means given hidden states: sigmoid for Bernoulli, linear for Gaussian units."""
    v = np.matmul(h, params["weights"].T)
    v += params["visible_bias"]
    if visible_units == BERNOULLI:
        sigmoid_(v)
    return v


def free_energy(v, params, visible_units):
    """Free energy of each row of ``v``, shape (n_samples,)."""
    v = v.toarray() if sp.issparse(v) else v
    pre = np.matmul(v, params["weights"])
    pre += params["hidden_bias"]
    hidden_term = _softplus_row_sums(pre)
    if visible_units == BERNOULLI:
        visible_term = v @ params["visible_bias"]
    else:
        visible_term = -0.5 * ((v - params["visible_bias"]) ** 2).sum(axis=1)
    return -visible_term - hidden_term


def _softplus_row_sums(x):
    """Row sums of ``log(1 + exp(x))``, overwriting ``x``: ``max(x, 0) + log1p(exp(-|x|))``
    is as stable as ``np.logaddexp(0, x)`` and takes half its time."""
    positive = np.maximum(x, 0)
    np.abs(x, out=x)
    np.negative(x, out=x)
    np.exp(x, out=x)
    np.log1p(x, out=x)
    x += positive
    return x.sum(axis=1)


def reconstruction_error(v, params, visible_units):
    """Mean squared error of the one-step mean-field reconstruction ``v -> h -> v``."""
    v = v.toarray() if sp.issparse(v) else v
    recon = mean_visible(mean_hidden(v, params), params, visible_units)
    recon -= v
    return float(np.vdot(recon, recon)) / v.size


def pseudo_likelihood(v, params, rng):
    """Mean pseudo-log-likelihood per visible unit of Bernoulli data (stochastic estimate).

    For each row one randomly chosen visible unit ``i`` is flipped and the estimate is
    ``log sigmoid(F(v_flipped) - F(v))``, an unbiased estimate of the pseudo-log-likelihood
    divided by the number of visible units (Besag 1975; as in scikit-learn's ``BernoulliRBM``).
    """
    v = v.toarray() if sp.issparse(v) else np.array(v)
    rows = np.arange(v.shape[0])
    flip = rng.integers(0, v.shape[1], size=v.shape[0])
    energy = free_energy(v, params, BERNOULLI)
    v[rows, flip] = 1 - v[rows, flip]
    energy_flipped = free_energy(v, params, BERNOULLI)
    return float(-np.logaddexp(0, -(energy_flipped - energy)).mean())


def _blas_controllers():
    """threadpoolctl handles of numpy's BLAS (scanned once, on first use).

    Wheels bundle numpy's OpenBLAS under ``numpy.libs`` (``numpy/.dylibs`` on macOS); scipy's copy
    is left alone. If numpy's library cannot be told apart, every loaded BLAS is limited.
    """
    global _BLAS
    if _BLAS is None:
        blas = ThreadpoolController().select(user_api="blas").lib_controllers
        numpy_dir = os.path.dirname(os.path.realpath(np.__file__))
        own = [lib for lib in blas
               if os.path.realpath(lib.filepath).startswith((numpy_dir + os.sep,
                                                            numpy_dir + ".libs" + os.sep))]
        _BLAS = own or blas
    return _BLAS


_BLAS = None

# Multiply-adds of one product below which the two-thread step costs more than it saves
# (measured: a 100 x 784 x 500 step gains ~20%, the 16-unit RBMs of the sklearn checks lose).
_MIN_THREADED_WORK = 2_000_000


class _Worker:
    """One helper thread running closures handed over by :meth:`run_pair`."""

    def __init__(self):
        self._todo = queue.SimpleQueue()
        self._done = queue.SimpleQueue()
        threading.Thread(target=self._loop, args=(self._todo, self._done), daemon=True).start()

    @staticmethod
    def _loop(todo, done):
        # Holds only the queues, so the trainer can be garbage collected; None stops the thread.
        while (task := todo.get()) is not None:
            try:
                task()
                done.put(None)
            except BaseException as error:  # re-raised in the calling thread
                done.put(error)

    def run_pair(self, mine, theirs):
        """Run ``theirs`` on the helper thread while ``mine`` runs here; wait for both."""
        self._todo.put(theirs)
        try:
            mine()
        finally:
            error = self._done.get()
        if error is not None:
            raise error

    def close(self):
        self._todo.put(None)


class ContrastiveDivergence:
    """Minibatch CD-k / persistent CD trainer for one RBM, updating its parameters in place.

    The positive and negative phases share stacked buffers ``(2 * batch, n_visible)`` and
    ``(2 * batch, n_hidden)`` so that the weight gradient ``v0' h0 - vk' hk`` is a single GEMM.
    Nothing is allocated per minibatch, and only numpy's BLAS is called: scipy ships a second
    OpenBLAS whose thread pool fights numpy's for the cores (measured 3x slower on 2 cores).

    On a machine with two or more cores each step runs on two Python threads with single-threaded
    BLAS calls (set with threadpoolctl for the duration of the step): the Gibbs chain is split by
    minibatch rows and the gradient and update by rows of the weight matrix. Two concurrent
    single-threaded GEMMs beat one two-threaded GEMM on these small matrices, and the elementwise
    work (sigmoids, sampling, the update) is shared by both cores instead of leaving one idle. The
    hidden-state uniforms are drawn in the same order as in a serial run (first half of the rows,
    then the second half), so the random stream, and hence the result, is that of the serial
    computation up to float32 rounding of the matrix products.

    Parameters
    ----------
    params : FlatParams
        RBM parameters (``rbm_layout``), updated in place.
    visible_units : {"bernoulli", "gaussian"}
        Kind of the visible units.
    batch_size : int
        Largest minibatch that will be passed to :meth:`step`.
    cd_steps : int
        Number of Gibbs steps ``k``.
    persistent : bool
        Keep the negative chain between minibatches (PCD, Tieleman 2008).
    learning_rate, momentum, weight_decay : float
        SGD hyper-parameters; the gradient is the minibatch mean. Weight decay shrinks the
        weights directly, ``W *= 1 - learning_rate * weight_decay`` (decoupled, as in SGDW):
        this step's new weights equal those of an L2 term in the gradient, without feeding the
        decay through the momentum, and it saves two passes over the weights per minibatch.
    rng : numpy.random.Generator
        Source of the hidden samples.
    threaded : bool or None, default=None
        Use the two-thread step; ``None`` means when one product has at least two million
        multiply-adds and numpy's BLAS is allowed at least two threads at construction time.
    """

    def __init__(self, params, visible_units, batch_size, cd_steps, persistent,
                 learning_rate, momentum, weight_decay, rng, threaded=None):
        n_visible, n_hidden = params["weights"].shape
        dtype = params.flat.dtype
        self.params = params
        self.visible_units = visible_units
        self.cd_steps = cd_steps
        self.persistent = persistent
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.rng = rng
        self.stacked_visible = np.zeros((2 * batch_size, n_visible), dtype=dtype)
        self.stacked_hidden = np.zeros((2 * batch_size, n_hidden), dtype=dtype)
        self.hidden_sample = np.empty((batch_size, n_hidden), dtype=dtype)
        self.uniform = np.empty((batch_size, n_hidden), dtype=dtype)
        self.phase_signs = np.empty(2 * batch_size, dtype=dtype)
        self.velocity = params.like(np.zeros_like(params.flat))
        self.gradient = params.like(np.zeros_like(params.flat))
        self.chain = None
        if persistent:
            self.chain = np.full((batch_size, n_hidden), 0.5, dtype=dtype)
        # sigmoid(x + bias) is computed as 1 / (1 + exp(min(-bias - x, cap))): one subtraction
        # replaces the bias add and the negation (bitwise equal), and the cap is a vector because
        # numpy's minimum against a broadcast scalar is not vectorised (4x slower).
        self.negated_hidden_bias = np.empty(n_hidden, dtype=dtype)
        self.negated_visible_bias = np.empty(n_visible, dtype=dtype)
        self.hidden_cap = np.full(n_hidden, _MAX_NEGATIVE_EXPONENT, dtype=dtype)
        self.visible_cap = np.full(n_visible, _MAX_NEGATIVE_EXPONENT, dtype=dtype)
        self._worker = None
        self._blas = _blas_controllers() if threaded is not False else []
        if threaded is None:
            # Two threads only for steps big enough to repay the hand-offs, and only where BLAS
            # may use two cores now: a worker task limited to one core stays serial.
            threaded = (batch_size * n_visible * n_hidden >= _MIN_THREADED_WORK
                        and bool(self._blas) and min(b.num_threads for b in self._blas) >= 2)
        if threaded and self._blas:  # without a controllable BLAS two threads oversubscribe
            self._worker = _Worker()
            weakref.finalize(self, self._worker.close)
        self._turn = threading.Condition()
        self._next_draw = 0

    def load_batch(self, batch_size):
        """Buffer of shape (batch_size, n_visible) that the next minibatch must be written to."""
        return self.stacked_visible[:batch_size]

    def step(self, batch_size):
        """One CD update from the minibatch already written into :meth:`load_batch`."""
        np.negative(self.params["hidden_bias"], out=self.negated_hidden_bias)
        np.negative(self.params["visible_bias"], out=self.negated_visible_bias)
        if self._worker is None or batch_size < 2:
            self._chain_rows(slice(0, batch_size), batch_size, 0, 1)
            self._update_rows(slice(0, self.params["weights"].shape[0]), batch_size, True)
            return
        saved = [blas.num_threads for blas in self._blas]
        for blas in self._blas:
            blas.set_num_threads(1)
        try:
            self._next_draw = 0
            half = batch_size // 2
            self._worker.run_pair(
                lambda: self._chain_rows(slice(0, half), batch_size, 0, 2),
                lambda: self._chain_rows(slice(half, batch_size), batch_size, 1, 2),
            )
            n_visible = self.params["weights"].shape[0]
            split = n_visible // 2
            self._worker.run_pair(
                lambda: self._update_rows(slice(0, split), batch_size, False),
                lambda: self._update_rows(slice(split, n_visible), batch_size, True),
            )
        finally:
            for blas, n_threads in zip(self._blas, saved, strict=True):
                blas.set_num_threads(n_threads)

    def _sigmoid_with_bias(self, x, negated_bias, cap):
        np.subtract(negated_bias, x, out=x)
        np.minimum(x, cap, out=x)
        np.exp(x, out=x)
        x += 1
        np.reciprocal(x, out=x)

    def _hidden_probabilities(self, v, out):
        np.matmul(v, self.params["weights"], out=out)
        self._sigmoid_with_bias(out, self.negated_hidden_bias, self.hidden_cap)

    def _draw_uniform(self, out, part, n_parts):
        """Fill ``out`` from the rng once the previous row blocks of this Gibbs step have drawn,
        so that the stream is consumed exactly as by one full-batch draw."""
        if n_parts == 1:
            self.rng.random(out=out, dtype=out.dtype)
            return
        with self._turn:
            self._turn.wait_for(lambda: self._next_draw % n_parts == part)
            self.rng.random(out=out, dtype=out.dtype)
            self._next_draw += 1
            self._turn.notify_all()

    def _chain_rows(self, rows, batch_size, part, n_parts):
        """Positive phase and Gibbs chain for one block of minibatch rows."""
        neg = slice(batch_size + rows.start, batch_size + rows.stop)
        v_pos, h_pos = self.stacked_visible[rows], self.stacked_hidden[rows]
        v_neg, h_neg = self.stacked_visible[neg], self.stacked_hidden[neg]
        weights = self.params["weights"]
        sample, uniform = self.hidden_sample[rows], self.uniform[rows]
        self._hidden_probabilities(v_pos, h_pos)
        chain = self.chain[rows] if self.persistent else h_pos
        for _ in range(self.cd_steps):
            self._draw_uniform(uniform, part, n_parts)
            np.less(uniform, chain, out=sample, casting="unsafe")
            np.matmul(sample, weights.T, out=v_neg)
            if self.visible_units == BERNOULLI:
                self._sigmoid_with_bias(v_neg, self.negated_visible_bias, self.visible_cap)
            else:
                v_neg += self.params["visible_bias"]
            self._hidden_probabilities(v_neg, h_neg)
            chain = h_neg
        if self.persistent:
            np.copyto(self.chain[rows], h_neg)
        # Scaling the small hidden block (2b x H) is cheaper than scaling the V x H gradient;
        # negating its lower half turns v0'h0 - vk'hk into the single product stacked_v' stacked_h.
        step = self.learning_rate / batch_size
        h_pos *= step
        h_neg *= -step

    def _update_rows(self, visible_rows, batch_size, with_biases):
        """Gradient and SGD update of a block of weight rows (and of the biases if asked)."""
        params, velocity, gradient = self.params, self.velocity, self.gradient
        stacked_v = self.stacked_visible[:2 * batch_size]
        stacked_h = self.stacked_hidden[:2 * batch_size]
        np.matmul(stacked_v[:, visible_rows].T, stacked_h,
                  out=gradient["weights"][visible_rows])
        n_hidden = stacked_h.shape[1]
        lo, hi = visible_rows.start * n_hidden, visible_rows.stop * n_hidden
        if with_biases:  # the biases follow the weights in the flat buffer
            step = self.learning_rate / batch_size
            signs = self.phase_signs[:2 * batch_size]
            signs[:batch_size] = step
            signs[batch_size:] = -step
            np.sum(stacked_h, axis=0, out=gradient["hidden_bias"])
            np.matmul(signs, stacked_v, out=gradient["visible_bias"])
            hi = params.flat.size
        block = velocity.flat[lo:hi]
        block *= self.momentum
        block += gradient.flat[lo:hi]
        if self.weight_decay:
            weights = params["weights"][visible_rows]
            weights *= 1.0 - self.learning_rate * self.weight_decay
        params.flat[lo:hi] += block
