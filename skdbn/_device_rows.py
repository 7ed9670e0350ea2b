"""A worker's shard as a device trains on it: uploaded once per phase when it fits the
device's memory budget, else streamed a chunk of each pass at a time from pinned host memory.

Both hand out the minibatches of ``run_minibatches`` in the same order (each pass's
permutation, a minibatch after another), so a streamed phase trains exactly as a resident one
does. Imported only by a worker that trains on a device: it imports torch.
"""

import numpy as np
import scipy.sparse as sp
import torch

# Share of a CUDA device's free memory that the shards of the workers on it may take; a
# larger shard is streamed. The rest is the parameters', the minibatch buffers' and the
# allocator's.
SHARD_SHARE = 0.5
# A streamed chunk's most bytes: its staging buffer is pinned host memory, which counts
# against an executor's memory, and a chunk's copy does not overlap training anyway.
CHUNK_BYTES = 256 * 2**20


def shard_budget(device, sharing=1):
    """Bytes of ``device``'s memory a shard may take when ``sharing`` workers train on it:
    their part of ``SHARD_SHARE`` of a CUDA device's free memory now; None (no limit)
    elsewhere, where the device's memory is the host's."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free * SHARD_SHARE / max(1, sharing))


def device_rows(x, codes, device, dtype, batch_size, sharing=1):
    """The shard ``x`` (rows; ``codes``: class codes or None) for training on ``device`` in
    ``dtype``, which ``sharing`` workers train on: ``ResidentRows`` when it fits
    :func:`shard_budget`, else ``StreamedRows`` in chunks of whole minibatches that fit half
    of it (at most ``CHUNK_BYTES``)."""
    row_bytes = x.shape[1] * np.dtype(dtype).itemsize + (0 if codes is None else 8)
    budget = shard_budget(device, sharing)
    if budget is None or x.shape[0] * row_bytes <= budget:
        return ResidentRows(x, codes, device, dtype)
    batches = max(1, min(budget // 2, CHUNK_BYTES) // (row_bytes * batch_size))
    return StreamedRows(x, codes, device, dtype, batches * batch_size)


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


class ResidentRows:
    """The whole shard on the device, uploaded once; a pass's minibatches are gathered there
    by the pass's permutation (``DeviceIndices``)."""

    def __init__(self, x, codes, device, dtype):
        self.x = on_device(x, device, dtype)
        self.codes = (None if codes is None
                      else torch.tensor(np.asarray(codes, dtype=np.int64), device=device))
        self._indices = DeviceIndices(device)

    def new_order(self, order):
        """Take the permutation of a new pass."""
        self._indices.new_order(order)

    def take(self, n_rows, out=None):
        """``(rows, codes)`` of the next minibatch of ``n_rows`` on the device (the rows
        written into ``out`` if given; codes None without labels)."""
        index = self._indices.take(n_rows)
        rows = self.x[index] if out is None else torch.index_select(self.x, 0, index, out=out)
        return rows, None if self.codes is None else self.codes[index]


class StreamedRows:
    """The shard on the host, sent to the device ``chunk_rows`` rows of each pass's order at
    a time (a whole number of minibatches): gathered in that order into a staging buffer
    (pinned for a CUDA device, so the copy does not go through a pageable bounce) and copied
    into the device's chunk, which the chunk's minibatches then read in turn."""

    def __init__(self, x, codes, device, dtype, chunk_rows):
        self.x, self.codes, self.chunk_rows = x, codes, chunk_rows
        pinned = device.type == "cuda"
        torch_dtype = torch_dtype_of(dtype)
        self._staging = torch.empty((chunk_rows, x.shape[1]), dtype=torch_dtype,
                                    pin_memory=pinned)
        self._chunk = torch.empty((chunk_rows, x.shape[1]), dtype=torch_dtype, device=device)
        self._staging_codes = self._chunk_codes = None
        if codes is not None:
            self._staging_codes = torch.empty(chunk_rows, dtype=torch.int64,
                                              pin_memory=pinned)
            self._chunk_codes = torch.empty(chunk_rows, dtype=torch.int64, device=device)
        self._copied = torch.cuda.Event() if pinned else None
        self._order, self._next, self._in_chunk, self._chunk_length = None, 0, 0, 0

    def new_order(self, order):
        """Take the permutation of a new pass."""
        self._order, self._next, self._in_chunk, self._chunk_length = order, 0, 0, 0

    def take(self, n_rows, out=None):
        """As ``ResidentRows.take``; a minibatch never spans two chunks."""
        if self._in_chunk >= self._chunk_length:
            self._send_next_chunk()
        start, self._in_chunk = self._in_chunk, self._in_chunk + n_rows
        rows = self._chunk[start:start + n_rows]
        if out is not None:
            rows = out.copy_(rows)
        codes = None if self.codes is None else self._chunk_codes[start:start + n_rows]
        return rows, codes

    def _send_next_chunk(self):
        order = self._order[self._next:self._next + self.chunk_rows]
        self._next += len(order)
        if self._copied is not None:
            self._copied.synchronize()  # the staging buffer's last copy has left it
        _gather(self.x, order, self._staging[:len(order)].numpy())
        self._chunk[:len(order)].copy_(self._staging[:len(order)], non_blocking=True)
        if self.codes is not None:
            self._staging_codes[:len(order)].numpy()[...] = np.asarray(self.codes)[order]
            self._chunk_codes[:len(order)].copy_(self._staging_codes[:len(order)],
                                                 non_blocking=True)
        if self._copied is not None:
            self._copied.record(torch.cuda.current_stream(self._chunk.device))
        self._in_chunk, self._chunk_length = 0, len(order)


def on_device(x, device, dtype, block_bytes=64 * 2**20):
    """The rows ``x`` (an array, possibly read-only, or a sparse matrix) as a dense tensor on
    ``device``, copied a block of rows at a time: the host never holds more than a block
    beyond ``x`` (sparse rows are densified a block at a time)."""
    n_rows, n_features = x.shape
    out = torch.empty((n_rows, n_features), dtype=torch_dtype_of(dtype), device=device)
    step = max(1, block_bytes // max(1, n_features * np.dtype(dtype).itemsize))
    for start in range(0, n_rows, step):
        block = x[start:start + step]
        block = block.toarray() if sp.issparse(block) else block
        out[start:start + step].copy_(torch.tensor(np.asarray(block, dtype=dtype)))
    return out


def torch_dtype_of(dtype):
    """torch's float32 or float64 for numpy's."""
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[
        np.dtype(dtype)]


def _gather(x, order, out):
    if sp.issparse(x):
        out[...] = x[order].toarray()
    elif x.dtype == out.dtype:
        np.take(x, order, axis=0, out=out)
    else:
        out[...] = x[order]
