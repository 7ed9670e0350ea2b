"""scikit-learn's Array API convention for PyTorch tensors.

With ``sklearn.set_config(array_api_dispatch=True)``, ``fit`` on PyTorch tensors trains in
PyTorch on the tensors' device, and the fitted arrays and the predictions come back as
tensors on that device, as scikit-learn's Array API estimators do. Any other input (numpy,
sparse, a DataFrame, or tensors without dispatch) gives numpy, whatever the ``device``
setting, so such a model pickles and predicts where torch is absent.

The training and inference code stays numpy and torch as it is: tensors are taken to the
host on the way in and the results put on the tensors' device on the way out. torch is never
imported here unless the input is a tensor (``"torch" in sys.modules`` first).
"""

import dataclasses
import functools
import sys

import numpy as np
from sklearn import get_config

from ._devices import TENSOR_PREFIX

# The fitted arrays that follow the namespace of the fit's input (lists of arrays, or arrays).
ARRAY_ATTRIBUTES = ("coefs_", "intercepts_", "visible_intercepts_", "mean_", "scale_",
                    "classes_")


class TensorInput:
    """The device of a PyTorch tensor input, and the moves between it and the host."""

    def __init__(self, tensor):
        self.torch = sys.modules["torch"]
        self.device = tensor.device

    @property
    def device_setting(self):
        """The ``device`` a fit on these tensors trains on (``"torch:cuda:0"``: that torch
        device; see ``_devices.worker_device``)."""
        return f"{TENSOR_PREFIX}{self.device}"

    def to_host(self, value):
        """``value`` as numpy when it is a tensor, else as it is."""
        return _as_numpy(value)

    def labels_to_host(self, y):
        """Labels ``y`` (a tensor, array-like or None) as numpy; refused before any training
        when they could not come back as tensors (``classes_``): strings or objects."""
        y = self.to_host(y)
        if y is not None and np.asarray(y).dtype.kind not in "biuf":
            raise TypeError(
                f"a fit on PyTorch tensors needs numeric labels, whose classes_ can be a "
                f"tensor; got {np.asarray(y).dtype} (use integer class codes, or fit on numpy "
                "arrays)")
        return y

    def to_device(self, value):
        """A numeric numpy array (or a list of them) as tensors on the input's device;
        anything else (None, numbers) as it is. Labels that could not be tensors were
        refused by :meth:`labels_to_host` before the fit."""
        if isinstance(value, list):
            return [self.to_device(v) for v in value]
        if not isinstance(value, np.ndarray):
            return value
        return self.torch.from_numpy(np.ascontiguousarray(value)).to(self.device)


def tensor_input(X):
    """A ``TensorInput`` for ``X`` when it is a PyTorch tensor and scikit-learn's
    ``array_api_dispatch`` is on; else None (the input is taken as numpy takes it)."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(X, torch.Tensor):
        return None
    if not get_config().get("array_api_dispatch", False):
        return None
    return TensorInput(X)


def host_attributes(estimator):
    """Turn ``estimator``'s fitted tensors into numpy arrays, in place (a fit that continues
    the model starts from them)."""
    for name in ARRAY_ATTRIBUTES:
        value = estimator.__dict__.get(name)
        if value is not None:
            estimator.__dict__[name] = _as_numpy(value)


def on_host(estimator):
    """``estimator`` itself when its fitted arrays are numpy, else a shallow copy whose are."""
    if not any(_holds_tensors(estimator.__dict__.get(name)) for name in ARRAY_ATTRIBUTES):
        return estimator
    copy = object.__new__(type(estimator))
    copy.__dict__.update(estimator.__dict__)
    host_attributes(copy)
    return copy


def attributes_to(estimator, tensors):
    """Put ``estimator``'s fitted arrays on the device of ``tensors`` (a ``TensorInput``)."""
    for name in ARRAY_ATTRIBUTES:
        if name in estimator.__dict__:
            estimator.__dict__[name] = tensors.to_device(estimator.__dict__[name])


def in_input_namespace(method):
    """Decorate an inference method ``method(self, X, ...)``: it computes on the host with
    numpy fitted arrays, and answers tensors on ``X``'s device when ``X`` is a tensor under
    ``array_api_dispatch``."""

    @functools.wraps(method)
    def inference(self, X, *args, **kwargs):
        tensors = tensor_input(X)
        model = on_host(self)
        if tensors is None:
            return method(model, X, *args, **kwargs)
        return tensors.to_device(method(model, tensors.to_host(X), *args, **kwargs))

    return inference


def fit_settings(settings, tensors):
    """The ``Settings`` of a fit on ``tensors`` (a ``TensorInput``): trained on their device
    by workers of this machine."""
    if settings.backend == "spark":
        raise ValueError(
            "PyTorch tensors train on their own device under array_api_dispatch, on this "
            "machine; backend='spark' takes numpy arrays or Spark DataFrames")
    return dataclasses.replace(settings, device=tensors.device_setting, backend="local")


def numpy_dtype(dtype):
    """A fitted array's dtype as numpy's (``torch.float32`` is ``float32``)."""
    if isinstance(dtype, np.dtype):
        return dtype
    return np.dtype(str(dtype).removeprefix("torch."))


def _holds_tensors(value):
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    if isinstance(value, list):
        return any(isinstance(v, torch.Tensor) for v in value)
    return isinstance(value, torch.Tensor)


def _as_numpy(value):
    if isinstance(value, list):
        return [_as_numpy(v) for v in value]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value
