"""A set of named arrays stored back to back in one contiguous vector.

Training state lives in one flat buffer so that averaging, checkpointing and (later) shipping
parameters between workers are single vector operations, while the math code still sees
ordinary matrices through named views.
"""

from math import prod

import numpy as np


class FlatParams:
    """Named array views into one contiguous 1-D buffer.

    Parameters
    ----------
    shapes : dict of str to tuple of int
        Name and shape of every array, in storage order.
    dtype : numpy dtype
        Floating point type of the buffer.
    flat : ndarray of shape (n_values,), default=None
        Existing buffer to wrap (not copied). A zeroed buffer is allocated when omitted.
    """

    def __init__(self, shapes, dtype, flat=None):
        self.shapes = {name: tuple(shape) for name, shape in shapes.items()}
        size = sum(prod(shape) for shape in self.shapes.values())
        if flat is None:
            flat = np.zeros(size, dtype=dtype)
        elif flat.shape != (size,) or flat.dtype != np.dtype(dtype):
            raise ValueError(
                f"flat buffer has shape {flat.shape} and dtype {flat.dtype}; "
                f"expected ({size},) and {np.dtype(dtype)}"
            )
        self.flat = flat
        self._views = {}
        start = 0
        for name, shape in self.shapes.items():
            stop = start + prod(shape)
            self._views[name] = flat[start:stop].reshape(shape)
            start = stop

    def __getitem__(self, name):
        return self._views[name]

    def names(self):
        """Names of the arrays, in storage order."""
        return list(self.shapes)

    def slice_of(self, name):
        """Position of one array inside the flat buffer, as a ``slice``."""
        start = 0
        for other, shape in self.shapes.items():
            stop = start + prod(shape)
            if other == name:
                return slice(start, stop)
            start = stop
        raise KeyError(name)

    def copy(self):
        """A new ``FlatParams`` with the same layout and a copy of the values."""
        return FlatParams(self.shapes, self.flat.dtype, self.flat.copy())

    def like(self, flat):
        """Wrap another buffer with this layout."""
        return FlatParams(self.shapes, self.flat.dtype, flat)
