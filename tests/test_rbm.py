"""RBM math: the optimised CD trainer against a plain reference, exact quantities on tiny RBMs."""

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import expit, logsumexp

from skdbn._rbm import (
    BERNOULLI,
    GAUSSIAN,
    ContrastiveDivergence,
    free_energy,
    init_rbm,
    mean_hidden,
    pseudo_likelihood,
    reconstruction_error,
    sigmoid_,
)


def _binary_data(n, n_visible, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    prototypes = rng.random((4, n_visible)) < 0.3
    rows = prototypes[rng.integers(0, 4, n)] ^ (rng.random((n, n_visible)) < 0.05)
    return rows.astype(dtype)


def _reference_cd_step(v0, W, b, c, vel, uniform, lr, momentum, decay, visible_units):
    """CD-1 written out plainly, with the same uniforms for the hidden sample."""
    h0 = expit(v0 @ W + c)
    h_sample = (uniform < h0).astype(v0.dtype)
    v1 = h_sample @ W.T + b
    if visible_units == BERNOULLI:
        v1 = expit(v1)
    h1 = expit(v1 @ W + c)
    n = v0.shape[0]
    grads = [(v0.T @ h0 - v1.T @ h1) / n, (h0 - h1).sum(0) / n, (v0 - v1).sum(0) / n]
    new_vel = [momentum * old + lr * g for old, g in zip(vel, grads, strict=True)]
    W = W * (1 - lr * decay) + new_vel[0]
    return W, c + new_vel[1], b + new_vel[2], new_vel


class _RecordingGenerator:
    """A numpy Generator that remembers the uniforms it hands out."""

    def __init__(self, seed):
        self._rng = np.random.default_rng(seed)
        self.draws = []

    def random(self, out, dtype):
        self._rng.random(out=out, dtype=dtype)
        self.draws.append(out.copy())
        return out


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("visible_units", [BERNOULLI, GAUSSIAN])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cd_step_matches_plain_reference(visible_units, dtype, threaded):
    X = _binary_data(40, 12, dtype=dtype)
    rng = np.random.default_rng(1)
    params = init_rbm(12, 7, X.mean(0), visible_units, dtype, rng)
    params["weights"][...] = rng.normal(0, 0.3, size=(12, 7))
    W, b, c = (params[n].astype(np.float64) for n in ("weights", "visible_bias", "hidden_bias"))
    vel = [np.zeros_like(W), np.zeros_like(c), np.zeros_like(b)]
    recorder = _RecordingGenerator(5)
    trainer = ContrastiveDivergence(params, visible_units, 16, 1, False, 0.1, 0.5, 0.01, recorder,
                                    threaded=threaded)
    assert (trainer._worker is not None) == threaded
    for start in (0, 16, 32):  # the last batch is a partial one
        batch = X[start:start + 16]
        trainer.load_batch(len(batch))[...] = batch
        recorder.draws.clear()
        trainer.step(len(batch))
        # A two-thread step draws the uniforms of its row halves separately, in row order.
        uniform = np.concatenate(recorder.draws).astype(np.float64)
        W, c, b, vel = _reference_cd_step(batch.astype(np.float64), W, b, c, vel, uniform,
                                          0.1, 0.5, 0.01, visible_units)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(params["weights"], W, atol=tol)
    np.testing.assert_allclose(params["hidden_bias"], c, atol=tol)
    np.testing.assert_allclose(params["visible_bias"], b, atol=tol)
    assert params.flat.dtype == dtype


def _exact_log_likelihood(X, params):
    """Average log-likelihood by enumerating every visible configuration (tiny RBMs only)."""
    n_visible = params["weights"].shape[0]
    configs = np.array(list(itertools.product([0, 1], repeat=n_visible)), dtype=np.float64)
    log_z = logsumexp(-free_energy(configs, params, BERNOULLI))
    return float(np.mean(-free_energy(X, params, BERNOULLI) - log_z))


def test_free_energy_matches_enumeration_over_hidden_states():
    rng = np.random.default_rng(0)
    params = init_rbm(5, 3, np.full(5, 0.3), BERNOULLI, np.float64, rng)
    params["weights"][...] = rng.normal(0, 1, (5, 3))
    params["hidden_bias"][...] = rng.normal(0, 1, 3)
    v = (rng.random((6, 5)) < 0.5).astype(np.float64)
    hidden = np.array(list(itertools.product([0, 1], repeat=3)), dtype=np.float64)
    energy = -(v @ params["visible_bias"])[:, None] - hidden @ params["hidden_bias"] \
        - np.einsum("ni,ij,hj->nh", v, params["weights"], hidden)
    np.testing.assert_allclose(free_energy(v, params, BERNOULLI), -logsumexp(-energy, axis=1))


def test_pseudo_likelihood_estimate_matches_exact_value():
    rng = np.random.default_rng(0)
    params = init_rbm(6, 4, np.full(6, 0.4), BERNOULLI, np.float64, rng)
    params["weights"][...] = rng.normal(0, 1, (6, 4))
    v = (rng.random((3, 6)) < 0.5).astype(np.float64)
    exact = []
    for i in range(6):
        flipped = v.copy()
        flipped[:, i] = 1 - flipped[:, i]
        delta = free_energy(flipped, params, BERNOULLI) - free_energy(v, params, BERNOULLI)
        exact.append(-np.logaddexp(0, -delta))
    exact = float(np.mean(exact))
    estimates = [pseudo_likelihood(np.repeat(v, 400, axis=0), params, rng) for _ in range(5)]
    assert abs(np.mean(estimates) - exact) < 0.01


@pytest.mark.parametrize("persistent", [False, True])
def test_training_raises_the_exact_likelihood(persistent):
    X = _binary_data(300, 8, seed=3)
    rng = np.random.default_rng(0)
    params = init_rbm(8, 6, X.mean(0), BERNOULLI, np.float64, rng)
    before = _exact_log_likelihood(X, params)
    trainer = ContrastiveDivergence(params, BERNOULLI, 20, 1, persistent, 0.1, 0.5, 1e-4, rng)
    for _ in range(30):
        for start in range(0, 300, 20):
            trainer.load_batch(20)[...] = X[start:start + 20]
            trainer.step(20)
    after = _exact_log_likelihood(X, params)
    # 4 prototypes with 5% bit noise: the best possible average log-likelihood is about
    # -(log 4 + 8 H(0.05)) = -2.98 nats; the initial model sits near -4.4.
    assert after > before + 0.5, (before, after)


def test_gaussian_visible_units_learn_to_reconstruct():
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(400, 3))
    X = latent @ rng.normal(size=(3, 10)) + 0.1 * rng.normal(size=(400, 10))
    X = (X - X.mean(0)) / X.std(0)
    params = init_rbm(10, 20, X.mean(0), GAUSSIAN, np.float64, rng)
    before = reconstruction_error(X, params, GAUSSIAN)
    trainer = ContrastiveDivergence(params, GAUSSIAN, 20, 1, False, 0.01, 0.9, 0.0, rng)
    for _ in range(30):
        for start in range(0, 400, 20):
            trainer.load_batch(20)[...] = X[start:start + 20]
            trainer.step(20)
    assert reconstruction_error(X, params, GAUSSIAN) < 0.5 * before


def test_cd_k_and_persistent_chain_state():
    X = _binary_data(64, 10)
    rng = np.random.default_rng(0)
    params = init_rbm(10, 5, X.mean(0), BERNOULLI, np.float64, rng)
    trainer = ContrastiveDivergence(params, BERNOULLI, 32, 3, True, 0.05, 0.5, 0.0, rng)
    chain_before = trainer.chain.copy()
    trainer.load_batch(32)[...] = X[:32]
    trainer.step(32)
    assert not np.allclose(trainer.chain, chain_before)
    assert np.all((trainer.chain > 0) & (trainer.chain < 1))


def test_sparse_and_dense_input_give_the_same_features():
    X = _binary_data(30, 9)
    params = init_rbm(9, 4, X.mean(0), BERNOULLI, np.float64, np.random.default_rng(0))
    np.testing.assert_allclose(mean_hidden(sp.csr_matrix(X), params), mean_hidden(X, params))


def test_sigmoid_is_exact_and_never_denormal_in_float32():
    x = np.array([-1000.0, -50.0, -5.0, 0.0, 5.0, 50.0, 1000.0], dtype=np.float32)
    result = sigmoid_(x.copy())
    np.testing.assert_allclose(result[2:5], expit(x[2:5]), rtol=1e-6)
    assert result[0] >= np.finfo(np.float32).tiny and result[0] < 1e-12
    assert result[-1] == 1.0
