"""Fine-tuning math: backprop gradients against finite differences, consensus averaging."""

import numpy as np
import scipy.sparse as sp

from skdbn._flat import FlatParams
from skdbn._network import Backprop, forward, network_layout, penalty
from skdbn._phase import PhaseResult, PhaseState, consensus


def _loss(params, x, onehot, alpha):
    probabilities = forward(x, params, len(params.shapes) // 2 - 1)[-1]
    return -np.log(probabilities[onehot > 0]).mean() + penalty(params, alpha)


def test_backprop_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    sizes = [5, 4, 3, 3]
    params = FlatParams(network_layout(sizes), np.float64)
    params.flat[...] = rng.normal(0, 0.5, params.flat.size)
    x = rng.random((7, 5))
    onehot = np.eye(3)[rng.integers(0, 3, 7)]
    alpha = 0.01
    trainer = Backprop(params, learning_rate=1.0, momentum=0.0, alpha=alpha)
    start = params.flat.copy()
    trainer.step(x, onehot)
    analytic = start - params.flat  # one step with lr=1 and no momentum is the gradient
    numeric = np.empty_like(start)
    for i in range(start.size):
        params.flat[...] = start
        params.flat[i] += 1e-6
        loss_plus = _loss(params, x, onehot, alpha)
        params.flat[i] -= 2e-6
        numeric[i] = (loss_plus - _loss(params, x, onehot, alpha)) / 2e-6
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_sparse_input_trains_like_dense():
    rng = np.random.default_rng(0)
    params_dense = FlatParams(network_layout([6, 4, 2]), np.float64)
    params_dense.flat[...] = rng.normal(0, 0.3, params_dense.flat.size)
    params_sparse = params_dense.copy()
    x = (rng.random((10, 6)) < 0.3).astype(np.float64)
    onehot = np.eye(2)[rng.integers(0, 2, 10)]
    loss_dense = Backprop(params_dense, 0.1, 0.9, 1e-3).step(x, onehot)
    loss_sparse = Backprop(params_sparse, 0.1, 0.9, 1e-3).step(sp.csr_matrix(x), onehot)
    assert np.isclose(loss_dense, loss_sparse)
    np.testing.assert_allclose(params_dense.flat, params_sparse.flat)


def test_consensus_is_the_weighted_average():
    a = PhaseResult(PhaseState(np.array([0.0, 2.0]), np.array([1.0, 1.0])), 1.0, 10)
    b = PhaseResult(PhaseState(np.array([3.0, 5.0]), np.array([4.0, 4.0])), 2.0, 20)
    merged = consensus([a, b])
    np.testing.assert_allclose(merged.params, [2.0, 4.0])
    np.testing.assert_allclose(merged.velocity, [3.0, 3.0])
