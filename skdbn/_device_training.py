"""The training loops of a worker that trains on a PyTorch device.

``device_math(device)`` is the ``TrainingMath`` that ``_phase.train_phase`` runs for a phase
whose ``device`` is not "cpu": the loops of ``_phase`` (same minibatch order, learning-rate
schedule and per-epoch figures), with the parameters, the shard and the update
(``_torch_math``) on the device. The shard moves to the device once per phase, or a chunk of
each pass at a time when it does not fit the device's budget (``_device_rows``); the hidden
samples are drawn there, from a generator seeded by the worker's stream. The host parameters
are brought up to date at each exchange with peers (``_sync.keep_on_device``), at each epoch's
end (the figures are computed there) and when the phase ends.

Imported only by a worker with such a phase: it imports torch.
"""

import contextlib

import numpy as np
import torch

from ._device_rows import device_rows
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


def device_math(device, sharing=1):
    """The ``TrainingMath`` of a worker training on ``device`` (a ``torch.device``), which
    ``sharing`` workers of the fit train on (its memory budget is split among them)."""

    def train_rbm(phase, x, params, rng, sync, log, delay):
        with _device_phase(device, x, phase.batch_size, params.flat.dtype):
            return _train_rbm(device, sharing, phase, x, params, rng, sync, log, delay)

    def train_network(phase, x, y, params, velocity, rng, sync, log, delay):
        with _device_phase(device, x, phase.batch_size, params.flat.dtype):
            return _train_network(device, sharing, phase, x, y, params, velocity, rng, sync,
                                  log, delay)

    return TrainingMath(train_rbm, train_network)


@contextlib.contextmanager
def _device_phase(device, x, batch_size, dtype):
    """A phase on ``device``: its cached memory is given back when the phase ends (a pooled
    worker process may take another rank, on another GPU, next time), and running out of
    memory is raised as ``DeviceOutOfMemory``, with the sizes to change."""
    said = None
    try:
        # The worker's GPU is the current one for the phase: events, pinned buffers and
        # streams then belong to it, not to GPU 0 (which Spark may have given another task).
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
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


def _train_rbm(device, sharing, phase, x, params, rng, sync, log, delay):
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
    shard = device_rows(x, None, device, params.flat.dtype, batch_size, sharing)

    def train(rows, epoch):
        trainer.momentum = rbm_momentum(phase, epoch)
        trainer.learning_rate = learning_rate * sync.step_scale()
        shard.take(len(rows), out=trainer.load_batch(len(rows)))
        trainer.step(len(rows))

    _run_on_device(on, params, monitor, shard, x.shape[0], batch_size, rng, sync, log,
                   delay, train)
    return trainer.velocity.flat.cpu().numpy(), monitor.history()


def _train_network(device, sharing, phase, x, y, params, velocity, rng, sync, log, delay):
    n_classes = layer_sizes_of(params)[-1]
    on = DeviceParams.from_host(params, device)
    keep_on_device(sync, on)
    trainer = TorchBackprop(on, phase.learning_rate, phase.momentum, phase.alpha)
    trainer.velocity.flat.copy_(torch.from_numpy(np.asarray(velocity)))
    batch_size = min(phase.batch_size, x.shape[0])
    onehot = on.flat.new_zeros((batch_size, n_classes))
    shard = device_rows(x, y, device, params.flat.dtype, batch_size, sharing)
    monitor = LossMonitor(phase, params)

    def train(rows, epoch):
        trainer.learning_rate = phase.learning_rate * sync.step_scale()
        batch, codes = shard.take(len(rows))
        batch_onehot = onehot[:len(rows)]
        batch_onehot.zero_()
        batch_onehot.scatter_(1, codes.unsqueeze(1), 1)
        monitor.add(trainer.step(batch, batch_onehot), len(rows))

    _run_on_device(on, params, monitor, shard, x.shape[0], batch_size, rng, sync, log,
                   delay, train)
    return trainer.velocity.flat.cpu().numpy(), monitor.history()


def _run_on_device(on, params, monitor, shard, n_rows, batch_size, rng, sync, log, delay,
                   train):
    """``run_minibatches`` of a phase whose parameters ``on`` live on a device and whose
    minibatches come from ``shard`` (``_device_rows``): the host parameters ``params`` are
    brought up to date for each epoch's figures (``monitor``) and when the phase ends."""

    def end_epochs(count):
        on.to_host(params)
        return monitor.end_epochs(count)

    run_minibatches(n_rows, batch_size, rng, sync, log, delay, train, end_epochs,
                    shard.new_order)
    on.to_host(params)
