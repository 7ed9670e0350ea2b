"""The PyTorch trainers compute the numpy trainers' updates (issue 20, item 4).

Both run from the same state on the same minibatches, the RBM trainers with the same uniform
draws, here on the CPU device (CI installs the CPU-only torch wheel); the parameters must agree
to float32 (or float64) rounding after every step of every variant.
"""

import numpy as np
import pytest

from skdbn._flat import FlatParams
from skdbn._network import Backprop, network_layout
from skdbn._rbm import BERNOULLI, GAUSSIAN, ContrastiveDivergence, init_rbm

torch = pytest.importorskip("torch")
from skdbn._torch_math import (  # noqa: E402  (torch is optional)
    DeviceParams,
    TorchBackprop,
    TorchContrastiveDivergence,
)

CPU = torch.device("cpu")
TOLERANCE = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}
RBM_VARIANTS = {
    "CD-1": dict(visible_units=BERNOULLI, cd_steps=1, persistent=False, weight_decay=0.0),
    "CD-3, weight decay": dict(visible_units=BERNOULLI, cd_steps=3, persistent=False,
                               weight_decay=1e-3),
    "PCD": dict(visible_units=BERNOULLI, cd_steps=1, persistent=True, weight_decay=0.0),
    "Gaussian CD-2": dict(visible_units=GAUSSIAN, cd_steps=2, persistent=False,
                          weight_decay=1e-4),
}


def _minibatches(rng, n_visible, sizes, visible_units, dtype):
    for size in sizes:
        if visible_units == BERNOULLI:
            yield (rng.random((size, n_visible)) < 0.3).astype(dtype)
        else:
            yield rng.standard_normal((size, n_visible)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", list(RBM_VARIANTS))
def test_the_torch_rbm_update_is_the_numpy_update(variant, dtype):
    settings = RBM_VARIANTS[variant]
    n_visible, n_hidden, batch_size = 30, 20, 16
    rng = np.random.default_rng(0)
    host = init_rbm(n_visible, n_hidden, np.full(n_visible, 0.3), settings["visible_units"],
                    dtype, rng)
    device = DeviceParams.from_host(host, CPU)
    common = dict(visible_units=settings["visible_units"], batch_size=batch_size,
                  cd_steps=settings["cd_steps"], persistent=settings["persistent"],
                  learning_rate=0.05, momentum=0.5, weight_decay=settings["weight_decay"])
    reference = ContrastiveDivergence(host, rng=np.random.default_rng(7), threaded=False,
                                      **common)
    draws = np.random.default_rng(7)  # the same stream, handed over as tensors
    trainer = TorchContrastiveDivergence(
        device, uniform=lambda shape: torch.from_numpy(draws.random(shape, dtype=dtype)),
        **common)
    checked = FlatParams(host.shapes, dtype)
    # A short last minibatch too: the trainers' buffers are cut to it.
    for batch in _minibatches(rng, n_visible, [16, 16, 9, 16, 16, 16, 5, 16],
                              settings["visible_units"], dtype):
        reference.load_batch(len(batch))[...] = batch
        reference.step(len(batch))
        trainer.load_batch(len(batch)).copy_(torch.from_numpy(batch))
        trainer.step(len(batch))
        device.to_host(checked)
        np.testing.assert_allclose(checked.flat, host.flat, **TOLERANCE[dtype])
    np.testing.assert_allclose(trainer.velocity.flat.numpy(), reference.velocity.flat,
                               **TOLERANCE[dtype])
    assert not np.array_equal(host.flat, init_rbm(n_visible, n_hidden, np.full(n_visible, 0.3),
                                                  settings["visible_units"], dtype,
                                                  np.random.default_rng(0)).flat)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alpha", [0.0, 1e-3])
def test_the_torch_network_update_is_the_numpy_update(alpha, dtype):
    sizes = [30, 20, 15, 4]
    rng = np.random.default_rng(1)
    host = FlatParams(network_layout(sizes), dtype)
    host.flat[...] = rng.normal(0, 0.3, host.flat.size)
    device = DeviceParams.from_host(host, CPU)
    reference = Backprop(host, learning_rate=0.1, momentum=0.9, alpha=alpha)
    trainer = TorchBackprop(device, learning_rate=0.1, momentum=0.9, alpha=alpha)
    checked = FlatParams(host.shapes, dtype)
    for size in [16, 16, 7, 16, 16]:
        x = rng.random((size, sizes[0])).astype(dtype)
        onehot = np.eye(sizes[-1], dtype=dtype)[rng.integers(0, sizes[-1], size)]
        loss = reference.step(x, onehot)
        device_loss = trainer.step(torch.from_numpy(x), torch.from_numpy(onehot))
        assert float(device_loss) == pytest.approx(loss, rel=1e-5)
        device.to_host(checked)
        np.testing.assert_allclose(checked.flat, host.flat, **TOLERANCE[dtype])


def test_device_parameters_keep_the_host_layout():
    host = FlatParams({"weights": (3, 2), "bias": (2,)}, np.float32)
    host.flat[...] = np.arange(8)
    device = DeviceParams.from_host(host, CPU)
    np.testing.assert_array_equal(device["weights"].numpy(), host["weights"])
    np.testing.assert_array_equal(device["bias"].numpy(), host["bias"])
    device["bias"].add_(1)
    assert host["bias"].tolist() == [6, 7]  # a copy, not a view of the host buffer
    back = FlatParams(host.shapes, np.float32)
    device.to_host(back)
    assert back["bias"].tolist() == [7, 8]
