"""Where a fit's workers train: numpy on the CPU (``device="cpu"``), or PyTorch on a CUDA GPU
(``device="cuda"``).

:func:`check_device` runs when a fit starts, before any data is prepared, and says what to
install or configure; a Spark fit's GPUs are the executors', which ``spark.placement`` checks.
On each worker, :func:`worker_device` (local processes) or :func:`spark_task_device` (a Spark
task) names the device and :func:`torch_device` makes it. torch is imported only by a fit
whose ``device`` is not "cpu", so ``import skdbn`` and numpy-only installs never need it.
"""

import importlib

CPU = "cpu"
CUDA = "cuda"
TENSOR_PREFIX = "torch:"  # a fit on PyTorch tensors trains on their device (_array_api)

INSTALL_HINT = ('install PyTorch with CUDA support (pip install "skdbn[gpu]", or the torch '
                "wheel for your CUDA version from pytorch.org)")


class DeviceOutOfMemory(MemoryError):
    """A worker's device ran out of memory; the message gives the shard and batch sizes. A
    fit's own error (never rerun as a lost worker)."""


def check_device(device, on_spark):
    """Raise what keeps a fit on ``device`` from running here, before any data is prepared.

    Parameters
    ----------
    device : {"cpu", "cuda"}
        The estimator's ``device``.
    on_spark : bool
        Whether the fit's workers are Spark tasks. Their GPUs are the executors', checked
        with the session's task slots (``spark.placement``): this process needs neither torch
        nor a GPU then.
    """
    if device == CPU or on_spark or tensor_device(device) is not None:
        return
    torch = _torch()
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device='cuda' but PyTorch {torch.__version__} sees no CUDA device (torch.cuda."
            "is_available() is False): check CUDA_VISIBLE_DEVICES and the NVIDIA driver, and "
            f"that the torch build has CUDA support; otherwise {INSTALL_HINT}")


def visible_gpus():
    """The CUDA devices this process sees (``CUDA_VISIBLE_DEVICES``)."""
    return _torch().cuda.device_count()


def worker_device(device, rank):
    """The device local worker ``rank`` trains on for the ``device`` setting, as a name
    (``"cuda:1"``), or None for numpy on the CPU: GPU ``rank`` modulo the visible GPUs
    (``CUDA_VISIBLE_DEVICES``), or the tensors' device of a fit on tensors
    (``"torch:cpu"``)."""
    if device == CPU:
        return None
    if tensor_device(device) is not None:
        return device
    return f"{CUDA}:{rank % max(1, visible_gpus())}"


def workers_sharing(device, n_workers):
    """How many of a fit's ``n_workers`` local workers train on each device for the
    ``device`` setting: all of them for tensors' device, else one per visible GPU in turn."""
    if device == CPU:
        return 1
    if tensor_device(device) is not None:
        return n_workers
    return -(-n_workers // max(1, visible_gpus()))


def tensor_device(device):
    """The torch device name of a fit on PyTorch tensors (a ``device`` of ``"torch:cuda:0"``
    from ``_array_api``: every worker trains there), else None."""
    return device.removeprefix(TENSOR_PREFIX) if device.startswith(TENSOR_PREFIX) else None


def spark_task_device(device, resources):
    """The device a Spark task trains on for the ``device`` setting: the GPU Spark assigned
    it (``resources``: ``TaskContext.resources()``), as a name, or None for numpy on the CPU.

    Spark's GPU addresses are the executor's CUDA ordinals (its discovery script's answer),
    as xgboost.spark and TorchDistributor read them.
    """
    if device == CPU:
        return None
    gpu = resources.get("gpu")
    if gpu is None or not gpu.addresses:
        raise RuntimeError(
            "device='cuda' but Spark assigned this task no GPU (TaskContext.resources() has "
            "no 'gpu'): the executors need spark.executor.resource.gpu.amount and a discovery "
            "script (spark.executor.resource.gpu.discoveryScript, or the worker's "
            "spark.worker.resource.gpu.* on a standalone cluster)")
    address = gpu.addresses[0]
    torch = _torch()
    if not address.isdigit() or int(address) >= torch.cuda.device_count():
        raise RuntimeError(
            f"Spark assigned this task GPU {address!r}, but PyTorch {torch.__version__} on "
            f"this executor sees {torch.cuda.device_count()} CUDA device(s): the GPU "
            "discovery script must give the CUDA ordinals the executor sees (check its "
            f"CUDA_VISIBLE_DEVICES); otherwise {INSTALL_HINT}")
    return f"{CUDA}:{address}"


def torch_device(name):
    """The ``torch.device`` of a device name from :func:`worker_device` or
    :func:`spark_task_device` (``"torch:cpu"``, a fit on tensors, is ``"cpu"``)."""
    return _torch().device(tensor_device(name) or name)


def _torch():
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise ImportError(f"device='cuda' needs PyTorch, which is not installed: "
                          f"{INSTALL_HINT}") from exc
