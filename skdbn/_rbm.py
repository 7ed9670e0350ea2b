"""Restricted Boltzmann machine math on numpy arrays (no Spark here).

Layout conventions: weights are ``(n_visible, n_hidden)``, data rows are samples. Visible units
are Bernoulli (values in [0, 1]) or Gaussian with unit variance (data standardized by the caller);
hidden units are Bernoulli. All functions keep the dtype of their inputs, so float32 data is
trained in float32.
"""

import numpy as np
import scipy.sparse as sp

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
    hidden_term = np.logaddexp(0, pre).sum(axis=1)
    if visible_units == BERNOULLI:
        visible_term = v @ params["visible_bias"]
    else:
        visible_term = -0.5 * ((v - params["visible_bias"]) ** 2).sum(axis=1)
    return -visible_term - hidden_term


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


class ContrastiveDivergence:
    """Minibatch CD-k / persistent CD trainer for one RBM, updating its parameters in place.

    The positive and negative phases share stacked buffers ``(2 * batch, n_visible)`` and
    ``(2 * batch, n_hidden)`` so that the weight gradient ``v0' h0 - vk' hk`` is a single GEMM.
    Nothing is allocated per minibatch, and only numpy's BLAS is called: scipy ships a second
    OpenBLAS whose thread pool fights numpy's for the cores (measured 3x slower on 2 cores).

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
    """

    def __init__(self, params, visible_units, batch_size, cd_steps, persistent,
                 learning_rate, momentum, weight_decay, rng):
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

    def load_batch(self, batch_size):
        """Buffer of shape (batch_size, n_visible) that the next minibatch must be written to."""
        return self.stacked_visible[:batch_size]

    def step(self, batch_size):
        """One CD update from the minibatch already written into :meth:`load_batch`."""
        v_pos, v_neg = self._views(self.stacked_visible, batch_size)
        h_pos, h_neg = self._views(self.stacked_hidden, batch_size)
        self._hidden_probabilities(v_pos, h_pos)
        chain = self.chain[:batch_size] if self.persistent else h_pos
        for _ in range(self.cd_steps):
            self._gibbs_step(chain, v_neg, h_neg, batch_size)
            chain = h_neg
        if self.persistent:
            np.copyto(self.chain[:batch_size], h_neg)
        self._apply_update(batch_size)

    @staticmethod
    def _views(stacked, batch_size):
        return stacked[:batch_size], stacked[batch_size:2 * batch_size]

    def _hidden_probabilities(self, v, out):
        np.matmul(v, self.params["weights"], out=out)
        out += self.params["hidden_bias"]
        sigmoid_(out)

    def _gibbs_step(self, hidden_probs, v_neg, h_neg, batch_size):
        sample = self.hidden_sample[:batch_size]
        uniform = self.uniform[:batch_size]
        self.rng.random(out=uniform, dtype=uniform.dtype)
        np.less(uniform, hidden_probs, out=sample, casting="unsafe")
        np.matmul(sample, self.params["weights"].T, out=v_neg)
        v_neg += self.params["visible_bias"]
        if self.visible_units == BERNOULLI:
            sigmoid_(v_neg)
        self._hidden_probabilities(v_neg, h_neg)

    def _apply_update(self, batch_size):
        params, velocity = self.params, self.velocity
        stacked_v = self.stacked_visible[:2 * batch_size]
        stacked_h = self.stacked_hidden[:2 * batch_size]
        # Scaling the small hidden block (2b x H) is cheaper than scaling the V x H gradient;
        # negating its lower half turns v0'h0 - vk'hk into the single product stacked_v' stacked_h.
        step = self.learning_rate / batch_size
        stacked_h[:batch_size] *= step
        stacked_h[batch_size:] *= -step
        signs = self.phase_signs[:2 * batch_size]
        signs[:batch_size] = step
        signs[batch_size:] = -step
        gradient = self.gradient
        np.matmul(stacked_v.T, stacked_h, out=gradient["weights"])
        np.sum(stacked_h, axis=0, out=gradient["hidden_bias"])
        np.matmul(signs, stacked_v, out=gradient["visible_bias"])
        velocity.flat *= self.momentum
        velocity.flat += gradient.flat
        if self.weight_decay:
            weights = params["weights"]
            weights *= 1.0 - self.learning_rate * self.weight_decay
        params.flat += velocity.flat
