"""Where a fit's workers train: numpy on the CPU (``device="cpu"``), or PyTorch on a CUDA GPU
(``device="cuda"``).

:func:`check_device` runs when a fit starts, before any data is prepared, and says what to
install or configure; :func:`worker_device` runs on each worker. torch is imported only by a
fit whose ``device`` is not "cpu", so ``import skdbn`` and numpy-only installs never need it.
"""

import importlib

CPU = "cpu"
CUDA = "cuda"

INSTALL_HINT = ('install PyTorch with CUDA support (pip install "skdbn[gpu]", or the torch '
                "wheel for your CUDA version from pytorch.org)")


class DeviceOutOfMemory(MemoryError):
    """A worker's device ran out of memory; the message gives the shard and batch sizes. A
    fit's own error (never rerun as a lost worker)."""


def check_device(device, backend, spark_input):
    """Raise what keeps a fit on ``device`` from running here, before any data is prepared.

    Parameters
    ----------
    device : {"cpu", "cuda"}
        The estimator's ``device``.
    backend : {"auto", "local", "spark"}
        The estimator's ``backend`` (with ``device="cuda"``, ``"auto"`` trains arrays here).
    spark_input : bool
        Whether the fit's input is a Spark DataFrame.
    """
    if device == CPU:
        return
    torch = _torch()
    if backend == "spark" or spark_input:
        raise NotImplementedError(
            "device='cuda' trains on this machine's GPUs in this version; Spark GPU executors "
            "are not supported yet: use backend='local', or device='cpu' on Spark")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device='cuda' but PyTorch {torch.__version__} sees no CUDA device (torch.cuda."
            "is_available() is False): check CUDA_VISIBLE_DEVICES and the NVIDIA driver, and "
            f"that the torch build has CUDA support; otherwise {INSTALL_HINT}")


def visible_gpus():
    """The CUDA devices this process sees (``CUDA_VISIBLE_DEVICES``)."""
    return _torch().cuda.device_count()


def worker_device(device, rank):
    """The ``torch.device`` worker ``rank`` trains on for the ``device`` setting, or None for
    numpy on the CPU: GPU ``rank`` modulo the visible GPUs (``CUDA_VISIBLE_DEVICES``)."""
    if device == CPU:
        return None
    torch = _torch()
    return torch.device(CUDA, rank % max(1, torch.cuda.device_count()))


def _torch():
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise ImportError(f"device='cuda' needs PyTorch, which is not installed: "
                          f"{INSTALL_HINT}") from exc
