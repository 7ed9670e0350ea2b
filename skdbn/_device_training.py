"""The training loops of a worker that trains on a PyTorch device.

``device_math(device)`` is the ``TrainingMath`` that ``_phase.train_phase`` runs for a phase
whose ``device`` is not "cpu": the loops of ``_phase`` (same minibatch order, learning-rate
schedule and per-epoch figures), with the parameters, the shard and the update
(``_torch_math``) on the device. The shard moves to the device once per phase; the hidden
samples are drawn there, from a generator seeded by the worker's stream. The host parameters
are brought up to date at each exchange with peers (``_sync.keep_on_device``), at each epoch's
end (the figures are computed there) and when the phase ends.

Imported only by a worker with such a phase: it imports torch.
"""

import contextlib

import numpy as np
import scipy.sparse as sp
import torch

from ._devices import DeviceOutOfMemory
from ._network import layer_sizes_of
from ._phase import (
    LossMonitor,
    RbmMonitor,
    TrainingMath,
    rbm_learning_rate,
    rbm_momentum,
    run_minibatches,
)
from ._sync import keep_on_device
from ._torch_math import DeviceParams, TorchBackprop, TorchContrastiveDivergence


def device_math(device):
    """The ``TrainingMath`` of a worker training on ``device`` (a ``torch.device``)."""

    def train_rbm(phase, x, params, rng, sync, log, delay):
        with _device_phase(device, x, phase.batch_size, params.flat.dtype):
            return _train_rbm(device, phase, x, params, rng, sync, log, delay)

    def train_network(phase, x, y, params, velocity, rng, sync, log, delay):
        with _device_phase(device, x, phase.batch_size, params.flat.dtype):
            return _train_network(device, phase, x, y, params, velocity, rng, sync, log,
                                  delay)

    return TrainingMath(train_rbm, train_network)


@contextlib.contextmanager
def _device_phase(device, x, batch_size, dtype):
    """A phase on ``device``: its cached memory is given back when the phase ends (a pooled
    worker process may take another rank, on another GPU, next time), and running out of
    memory is raised as ``DeviceOutOfMemory``, with the sizes to change."""
    said = None
    try:
        yield
    except torch.cuda.OutOfMemoryError as error:
        said = str(error)  # not the error: its traceback holds the phase's tensors
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if said is not None:
        n_rows, n_features = x.shape
        mib = n_rows * n_features * np.dtype(dtype).itemsize / 2**20
        raise DeviceOutOfMemory(
            f"{device} ran out of memory training a shard of {n_rows} rows x {n_features} "
            f"features ({mib:,.0f} MiB in {np.dtype(dtype).name} on the device) at batch size "
            f"{batch_size}: lower batch_size or the layer sizes, or give the fit a device "
            f"with more free memory ({said})")


class DeviceIndices:
    """Each pass's permutation on the device, uploaded once, handed out a minibatch at a time:
    no host-to-device copy (which waits for the device) per minibatch."""

    def __init__(self, device):
        self.device = device
        self._order = None
        self._next = 0

    def new_order(self, order):
        """Take the permutation of a new pass (``run_minibatches``'s ``new_order``)."""
        self._order = torch.from_numpy(order).to(self.device)
        self._next = 0

    def take(self, n_rows):
        """The indices of the next minibatch of ``n_rows`` rows, on the device."""
        rows = self._order[self._next:self._next + n_rows]
        self._next += n_rows
        return rows


def on_device(x, device, dtype, block_bytes=64 * 2**20):
    """The rows ``x`` (an array, possibly read-only, or a sparse matrix) as a dense tensor on
    ``device``, copied a block of rows at a time: the host never holds more than a block
    beyond ``x`` (sparse rows are densified a block at a time)."""
    n_rows, n_features = x.shape
    out = torch.empty((n_rows, n_features), dtype=_torch_dtype(dtype), device=device)
    step = max(1, block_bytes // max(1, n_features * np.dtype(dtype).itemsize))
    for start in range(0, n_rows, step):
        block = x[start:start + step]
        block = block.toarray() if sp.issparse(block) else block
        out[start:start + step].copy_(torch.tensor(np.asarray(block, dtype=dtype)))
    return out


def _torch_dtype(dtype):
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[
        np.dtype(dtype)]


def _train_rbm(device, phase, x, params, rng, sync, log, delay):
    learning_rate = rbm_learning_rate(phase)
    batch_size = min(phase.batch_size, x.shape[0])
    on = DeviceParams.from_host(params, device)
    keep_on_device(sync, on)
    monitor = RbmMonitor(phase, x, params, rng, sync)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(rng.integers(2**63)))
    dtype = on.flat.dtype
    trainer = TorchContrastiveDivergence(
        on, phase.visible_units, batch_size, phase.cd_steps, phase.persistent, learning_rate,
        phase.momentum, phase.weight_decay,
        lambda shape: torch.rand(shape, generator=generator, device=device, dtype=dtype))
    rows_on_device = on_device(x, device, params.flat.dtype)
    indices = DeviceIndices(device)

    def train(rows, epoch):
        trainer.momentum = rbm_momentum(phase, epoch)
        trainer.learning_rate = learning_rate * sync.step_scale()
        torch.index_select(rows_on_device, 0, indices.take(len(rows)),
                           out=trainer.load_batch(len(rows)))
        trainer.step(len(rows))

    _run_on_device(on, params, monitor, indices, x.shape[0], batch_size, rng, sync, log,
                   delay, train)
    return trainer.velocity.flat.cpu().numpy(), monitor.history()


def _train_network(device, phase, x, y, params, velocity, rng, sync, log, delay):
    n_classes = layer_sizes_of(params)[-1]
    on = DeviceParams.from_host(params, device)
    keep_on_device(sync, on)
    trainer = TorchBackprop(on, phase.learning_rate, phase.momentum, phase.alpha)
    trainer.velocity.flat.copy_(torch.from_numpy(np.asarray(velocity)))
    batch_size = min(phase.batch_size, x.shape[0])
    onehot = on.flat.new_zeros((batch_size, n_classes))
    rows_on_device = on_device(x, device, params.flat.dtype)
    codes_on_device = torch.tensor(np.asarray(y, dtype=np.int64), device=device)
    monitor = LossMonitor(phase, params)
    indices = DeviceIndices(device)

    def train(rows, epoch):
        trainer.learning_rate = phase.learning_rate * sync.step_scale()
        index = indices.take(len(rows))
        batch_onehot = onehot[:len(rows)]
        batch_onehot.zero_()
        batch_onehot.scatter_(1, codes_on_device[index].unsqueeze(1), 1)
        monitor.add(trainer.step(rows_on_device[index], batch_onehot), len(rows))

    _run_on_device(on, params, monitor, indices, x.shape[0], batch_size, rng, sync, log,
                   delay, train)
    return trainer.velocity.flat.cpu().numpy(), monitor.history()


def _run_on_device(on, params, monitor, indices, n_rows, batch_size, rng, sync, log, delay,
                   train):
    """``run_minibatches`` of a phase whose parameters ``on`` live on a device: the host
    parameters ``params`` are brought up to date for each epoch's figures (``monitor``) and
    when the phase ends."""

    def end_epochs(count):
        on.to_host(params)
        return monitor.end_epochs(count)

    run_minibatches(n_rows, batch_size, rng, sync, log, delay, train, end_epochs,
                    indices.new_order)
    on.to_host(params)
