"""The unrolled network used for fine-tuning: sigmoid hidden layers and a softmax head.

Pure numpy (no Spark here). Parameters live in one flat vector (see ``FlatParams``) with all
weight matrices first and all biases after them, so the L2 penalty applies to one contiguous
slice.
"""

from itertools import pairwise

import numpy as np
import scipy.sparse as sp

from ._flat import FlatParams
from ._rbm import sigmoid_


def network_layout(layer_sizes):
    """Shapes of the network parameters for ``layer_sizes = [n_in, h_1, ..., n_out]``."""
    pairs = list(pairwise(layer_sizes))
    shapes = {f"weights_{i}": (n_in, n_out) for i, (n_in, n_out) in enumerate(pairs)}
    shapes.update({f"bias_{i}": (n_out,) for i, (_, n_out) in enumerate(pairs)})
    return shapes


def n_weight_values(layer_sizes):
    """Number of values in the weight matrices, i.e. the length of the penalised prefix."""
    return sum(a * b for a, b in pairwise(layer_sizes))


def network_from_layers(weights, biases, dtype):
    """Pack lists of weight matrices and bias vectors into one ``FlatParams``."""
    sizes = [weights[0].shape[0]] + [w.shape[1] for w in weights]
    params = FlatParams(network_layout(sizes), dtype)
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        params[f"weights_{i}"][...] = w
        params[f"bias_{i}"][...] = b
    return params


def layer_sizes_of(params):
    """``[n_in, h_1, ..., n_out]`` of a network ``FlatParams``."""
    n_layers = len(params.shapes) // 2
    first = params.shapes["weights_0"][0]
    return [first] + [params.shapes[f"weights_{i}"][1] for i in range(n_layers)]


def softmax_(z):
    """Row-wise softmax computed in place; returns ``z``."""
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def forward(x, params, n_hidden_layers):
    """Activations of every layer for input ``x``.

    Parameters
    ----------
    x : {ndarray, sparse matrix} of shape (n_samples, n_in)
        Input rows (already standardized for Gaussian visible units).
    params : FlatParams
        Network parameters.
    n_hidden_layers : int
        Number of sigmoid layers to apply; a softmax head follows when ``params`` has one more
        layer.

    Returns
    -------
    activations : list of ndarray
        ``[x, h_1, ..., h_L]`` and, when the head is present, the class probabilities last.
    """
    activations = [x]
    n_layers = len(params.shapes) // 2
    for i in range(n_layers):
        z = x @ params[f"weights_{i}"] if sp.issparse(x) else np.matmul(x, params[f"weights_{i}"])
        z = np.asarray(z)
        z += params[f"bias_{i}"]
        x = sigmoid_(z) if i < n_hidden_layers else softmax_(z)
        activations.append(x)
    return activations


class Backprop:
    """Minibatch SGD with momentum and L2 on the softmax cross-entropy of the network.

    Parameters
    ----------
    params : FlatParams
        Network parameters (``network_layout``), updated in place.
    learning_rate, momentum, alpha : float
        Step size, momentum and L2 penalty ``0.5 * alpha * ||W||^2`` added to the mean loss.
    """

    def __init__(self, params, learning_rate, momentum, alpha):
        self.params = params
        self.sizes = layer_sizes_of(params)
        self.n_layers = len(self.sizes) - 1
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.alpha = alpha
        self.n_weights = n_weight_values(self.sizes)
        self.velocity = params.like(np.zeros_like(params.flat))
        self.gradient = params.like(np.zeros_like(params.flat))

    def step(self, x, y_onehot):
        """One SGD step on a minibatch; returns the summed cross-entropy of the batch.

        Parameters
        ----------
        x : {ndarray, sparse matrix} of shape (batch, n_in)
        y_onehot : ndarray of shape (batch, n_classes)
        """
        activations = forward(x, self.params, self.n_layers - 1)
        probabilities = activations[-1]
        loss = -float(np.log(np.maximum(probabilities[y_onehot > 0], 1e-12)).sum())
        self._backward(activations, y_onehot)
        self._apply_update()
        return loss

    def _backward(self, activations, y_onehot):
        batch = y_onehot.shape[0]
        delta = activations[-1] - y_onehot
        delta /= batch
        for i in reversed(range(self.n_layers)):
            below = activations[i]
            grad_w = self.gradient[f"weights_{i}"]
            if sp.issparse(below):
                grad_w[...] = below.T @ delta
            else:
                np.matmul(below.T, delta, out=grad_w)
            np.sum(delta, axis=0, out=self.gradient[f"bias_{i}"])
            if i > 0:
                delta = np.matmul(delta, self.params[f"weights_{i}"].T)
                delta *= below
                delta *= 1 - below

    def _apply_update(self):
        params, gradient, velocity = self.params.flat, self.gradient.flat, self.velocity.flat
        weights = slice(0, self.n_weights)
        if self.alpha:
            gradient[weights] += self.alpha * params[weights]
        velocity *= self.momentum
        velocity -= self.learning_rate * gradient
        params += velocity


def penalty(params, alpha):
    """The L2 term ``0.5 * alpha * ||W||^2`` of the loss for a network ``FlatParams``."""
    sizes = layer_sizes_of(params)
    weights = params.flat[: n_weight_values(sizes)]
    return 0.5 * alpha * float(np.dot(weights, weights))
