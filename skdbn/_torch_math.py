"""The updates of ``_rbm.ContrastiveDivergence`` and ``_network.Backprop`` in PyTorch, for
workers that train on a device.

Only workers whose phase names a device import this module (through ``_device_training``):
``import skdbn`` never imports torch. Each trainer computes its numpy counterpart's update
operation for operation (the same capped sigmoid, the same stacked weight gradient, the same
decoupled weight decay and momentum), so that from the same state, minibatches and uniform draws
both give the same parameters up to float32 rounding; ``tests/test_torch_math.py`` holds them to
it. The parameters live in one flat tensor on the device with named views, as ``FlatParams``
does on the host, so a phase moves them between host and device as one copy.
"""

from math import prod

import torch

from ._rbm import _MAX_NEGATIVE_EXPONENT, BERNOULLI


class DeviceParams:
    """Named views into one flat tensor: ``FlatParams`` on a device.

    Parameters
    ----------
    shapes : dict of str to tuple of int
        Name and shape of every array, in storage order (a ``FlatParams``'s ``shapes``).
    flat : torch.Tensor of shape (n_values,)
        The buffer (not copied).
    """

    def __init__(self, shapes, flat):
        self.shapes = dict(shapes)
        self.flat = flat
        self._views = {}
        start = 0
        for name, shape in self.shapes.items():
            stop = start + prod(shape)
            self._views[name] = flat[start:stop].view(shape)
            start = stop

    @classmethod
    def from_host(cls, params, device):
        """A copy of ``params`` (a ``FlatParams``) on ``device``."""
        return cls(params.shapes, torch.from_numpy(params.flat).to(device, copy=True))

    def __getitem__(self, name):
        return self._views[name]

    def zeros_like(self):
        """A zeroed buffer of the same layout on the same device."""
        return DeviceParams(self.shapes, torch.zeros_like(self.flat))

    def to_host(self, params):
        """Copy the values into ``params`` (a ``FlatParams`` of the same layout)."""
        self.copy_to(params.flat)

    def copy_to(self, flat):
        """Copy the values into the host vector ``flat``."""
        flat[...] = self.flat.cpu().numpy()

    def copy_from(self, flat):
        """Take the values of the host vector ``flat``."""
        self.flat.copy_(torch.from_numpy(flat))


def capped_sigmoid_(x):
    """``1 / (1 + exp(min(-x, cap)))`` in place, as ``_rbm.sigmoid_``: the cap keeps float32
    outputs out of the denormal range."""
    torch.neg(x, out=x)
    torch.clamp_(x, max=_MAX_NEGATIVE_EXPONENT)
    torch.exp_(x)
    x += 1
    torch.reciprocal_(x)
    return x


class TorchContrastiveDivergence:
    """CD-k / persistent CD on a device: the update of ``_rbm.ContrastiveDivergence``.

    Parameters
    ----------
    params : DeviceParams
        RBM parameters (``rbm_layout``), updated in place.
    visible_units, batch_size, cd_steps, persistent, learning_rate, momentum, weight_decay
        As for ``ContrastiveDivergence``.
    uniform : callable
        ``uniform(shape) -> tensor`` of uniform draws in [0, 1) on the device, in the
        parameters' dtype: the source of the hidden samples.
    """

    def __init__(self, params, visible_units, batch_size, cd_steps, persistent,
                 learning_rate, momentum, weight_decay, uniform):
        n_visible, n_hidden = params["weights"].shape
        flat = params.flat
        self.params = params
        self.visible_units = visible_units
        self.cd_steps = cd_steps
        self.persistent = persistent
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.uniform = uniform
        self.stacked_visible = flat.new_zeros((2 * batch_size, n_visible))
        self.stacked_hidden = flat.new_zeros((2 * batch_size, n_hidden))
        self.velocity = params.zeros_like()
        self.gradient = params.zeros_like()
        self.chain = flat.new_full((batch_size, n_hidden), 0.5) if persistent else None

    def load_batch(self, batch_size):
        """Buffer of shape (batch_size, n_visible) that the next minibatch must be written to."""
        return self.stacked_visible[:batch_size]

    def step(self, batch_size):
        """One CD update from the minibatch already written into :meth:`load_batch`."""
        params, weights = self.params, self.params["weights"]
        v_pos, v_neg = self.stacked_visible[:batch_size], self.stacked_visible[batch_size:
                                                                               2 * batch_size]
        h_pos, h_neg = self.stacked_hidden[:batch_size], self.stacked_hidden[batch_size:
                                                                              2 * batch_size]
        self._hidden_probabilities(v_pos, h_pos)
        chain = self.chain[:batch_size] if self.persistent else h_pos
        for _ in range(self.cd_steps):
            sample = (self.uniform(h_pos.shape) < chain).to(weights.dtype)
            torch.matmul(sample, weights.T, out=v_neg)
            v_neg += params["visible_bias"]
            if self.visible_units == BERNOULLI:
                capped_sigmoid_(v_neg)
            self._hidden_probabilities(v_neg, h_neg)
            chain = h_neg
        if self.persistent:
            self.chain[:batch_size].copy_(h_neg)
        step = self.learning_rate / batch_size
        h_pos *= step
        h_neg *= -step
        self._update(batch_size, step)

    def _hidden_probabilities(self, v, out):
        torch.matmul(v, self.params["weights"], out=out)
        out += self.params["hidden_bias"]
        capped_sigmoid_(out)

    def _update(self, batch_size, step):
        stacked_v = self.stacked_visible[:2 * batch_size]
        stacked_h = self.stacked_hidden[:2 * batch_size]
        gradient = self.gradient
        torch.matmul(stacked_v.T, stacked_h, out=gradient["weights"])
        torch.sum(stacked_h, dim=0, out=gradient["hidden_bias"])
        torch.sub(stacked_v[:batch_size].sum(dim=0), stacked_v[batch_size:].sum(dim=0),
                  out=gradient["visible_bias"])
        gradient["visible_bias"].mul_(step)
        velocity = self.velocity.flat
        velocity.mul_(self.momentum).add_(gradient.flat)
        if self.weight_decay:
            self.params["weights"].mul_(1.0 - self.learning_rate * self.weight_decay)
        self.params.flat.add_(velocity)


class TorchBackprop:
    """Minibatch SGD with momentum and L2 on a device: the update of ``_network.Backprop``.

    Parameters
    ----------
    params : DeviceParams
        Network parameters (``network_layout``), updated in place.
    learning_rate, momentum, alpha : float
        As for ``Backprop``.
    """

    def __init__(self, params, learning_rate, momentum, alpha):
        self.params = params
        self.n_layers = len(params.shapes) // 2
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.alpha = alpha
        self.n_weights = sum(prod(params.shapes[f"weights_{i}"])
                             for i in range(self.n_layers))
        self.velocity = params.zeros_like()
        self.gradient = params.zeros_like()

    def step(self, x, y_onehot):
        """One SGD step on a minibatch; returns the summed cross-entropy of the batch as a
        0-d tensor on the device (reading it would wait for the device: sum them first).

        Parameters
        ----------
        x : torch.Tensor of shape (batch, n_in)
        y_onehot : torch.Tensor of shape (batch, n_classes)
        """
        activations = self.forward(x)
        # A product with the one-hot rows, not a boolean index: an index would wait for the
        # device to say how many rows it selects.
        loss = -(torch.log(torch.clamp(activations[-1], min=1e-12)) * y_onehot).sum()
        self._backward(activations, y_onehot)
        self._apply_update()
        return loss

    def forward(self, x):
        """``[x, h_1, ..., h_L, class probabilities]``, as ``_network.forward``."""
        activations = [x]
        for i in range(self.n_layers):
            z = torch.matmul(x, self.params[f"weights_{i}"])
            z += self.params[f"bias_{i}"]
            if i < self.n_layers - 1:
                x = capped_sigmoid_(z)
            else:
                z -= z.max(dim=1, keepdim=True).values
                torch.exp_(z)
                z /= z.sum(dim=1, keepdim=True)
                x = z
            activations.append(x)
        return activations

    def _backward(self, activations, y_onehot):
        delta = (activations[-1] - y_onehot) / y_onehot.shape[0]
        for i in reversed(range(self.n_layers)):
            below = activations[i]
            torch.matmul(below.T, delta, out=self.gradient[f"weights_{i}"])
            torch.sum(delta, dim=0, out=self.gradient[f"bias_{i}"])
            if i > 0:
                delta = torch.matmul(delta, self.params[f"weights_{i}"].T)
                delta *= below
                delta *= 1 - below

    def _apply_update(self):
        params, gradient = self.params.flat, self.gradient.flat
        if self.alpha:
            gradient[:self.n_weights].add_(params[:self.n_weights], alpha=self.alpha)
        self.velocity.flat.mul_(self.momentum).sub_(gradient, alpha=self.learning_rate)
        params.add_(self.velocity.flat)
