"""Digests of arrays by their content: the names of shared training data and the
fingerprints of checkpoints."""

import numpy as np


def described_bytes(array):
    """``(header, content)`` to hash for ``array``: its shape and dtype as bytes, and its
    values as a flat uint8 view (no copy when it is contiguous; the repr of its items for an
    object array)."""
    array = np.ascontiguousarray(array)
    header = str((array.shape, array.dtype.str)).encode()
    if array.dtype == object:
        return header, repr(array.tolist()).encode()
    return header, array.reshape(-1).view(np.uint8)


def digest_arrays(digest, parts):
    """``digest`` (a hashlib object) updated with each array's shape, dtype and values."""
    for part in parts:
        header, content = described_bytes(part)
        digest.update(header)
        digest.update(content)
    return digest
