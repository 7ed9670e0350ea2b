"""Phases and their results as raw bytes, for workers that take phase after phase over a
connection (the standing Spark job, ``spark.standing``). No Spark here, and no pickle.

A message is a JSON header followed by raw little-endian arrays whose sizes the header
gives. Its sender and receiver already share an authenticated connection (``_transport``),
whose frame tag covers the whole message; the header's ``seq`` ties a result to its phase,
so a frame replayed on the same connection is refused as out of order.
"""

import dataclasses
import json
import struct

import numpy as np

from ._flat import FlatParams
from ._phase import FinetunePhase, PhaseResult, PhaseState, PretrainPhase
from ._worker import SyncPlan

_HEADER_LENGTH = struct.Struct("<I")
# What a header may hold that does not parse as a message: missing keys, wrong types, values
# out of range, nesting deeper than Python recurses.
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError)
_PHASE_TYPES = {"pretrain": PretrainPhase, "finetune": FinetunePhase}
_TUPLE_FIELDS = {"seed", "slow_worker", "layer_sizes"}
# The SyncPlan fields a phase message carries: the secret never travels (tasks have it
# already), and each task knows its own cores.
PLAN_FIELDS = tuple(f.name for f in dataclasses.fields(SyncPlan)
                    if f.name not in ("secret", "blas_threads"))


class PhaseMessageError(ValueError):
    """A phase or result message that does not parse as what its header says."""


@dataclasses.dataclass
class PhaseOrder:
    """What a worker needs to train one phase: the phase, its starting state, the finished
    layers below, and the phase's synchronisation settings (``PLAN_FIELDS``)."""

    seq: int
    phase: object
    state: PhaseState
    below: list
    plan: dict


def encode_phase(seq, phase, state, below, plan):
    """The byte parts of a phase message (see ``PhaseOrder``)."""
    kind = {cls: name for name, cls in _PHASE_TYPES.items()}[type(phase)]
    arrays = [state.params, state.velocity, *(layer.flat for layer in below)]
    header = {
        "kind": "phase", "seq": seq, "phase_type": kind,
        "phase": dataclasses.asdict(phase),
        "dtype": state.params.dtype.name,
        "sizes": [int(a.size) for a in arrays],
        "below": [layer.shapes for layer in below],
        "plan": {name: plan[name] for name in PLAN_FIELDS},
    }
    return _parts(header, arrays)


def decode_phase(body):
    """The ``PhaseOrder`` of a phase message, or None for a stop message."""
    header, arrays = _split(body, expected_kinds=("phase", "stop"))
    if header["kind"] == "stop":
        return None
    try:
        seq = _count(header["seq"])
        phase_type = _PHASE_TYPES[header["phase_type"]]
        names = {f.name for f in dataclasses.fields(phase_type)}
        fields = header["phase"]
        if set(fields) != names:
            raise PhaseMessageError("phase fields do not match the phase type")
        phase = phase_type(**{name: _tuples(value) if name in _TUPLE_FIELDS else value
                              for name, value in fields.items()})
        plan = {name: header["plan"][name] for name in PLAN_FIELDS}
        if len(arrays) != 2 + len(header["below"]):
            raise PhaseMessageError("a phase message's arrays do not match its layers")
        state = PhaseState(arrays[0], arrays[1])
        below = [FlatParams(shapes, arrays[0].dtype, flat)
                 for shapes, flat in zip(header["below"], arrays[2:], strict=True)]
    except _MALFORMED as exc:
        raise PhaseMessageError(f"malformed phase message: {exc!r}") from exc
    return PhaseOrder(seq, phase, state, below, plan)


def encode_stop(seq):
    """The byte parts of the message that ends a worker's service."""
    return _parts({"kind": "stop", "seq": seq}, [])


def encode_result(seq, rank, result):
    """The byte parts of a worker's ``PhaseResult`` for phase ``seq``."""
    hidden_mean = ([] if result.hidden_mean is None
                   else [np.asarray(result.hidden_mean, dtype=np.float64)])
    arrays = [result.state.params, result.state.velocity, *hidden_mean]
    header = {
        "kind": "result", "seq": seq, "rank": rank, "dtype": result.state.params.dtype.name,
        "sizes": [int(a.size) for a in arrays], "weight": result.weight,
        "n_samples": result.n_samples, "samples_trained": result.samples_trained,
        "history": {name: [float(v) for v in values] for name, values in result.history.items()},
        "seconds": result.seconds, "diagnostics": result.diagnostics,
    }
    return _parts(header, arrays)


def decode_result(body, seq, rank, params_size, dtype):
    """The ``PhaseResult`` of a result message, checked against the phase it answers
    (``seq``), the worker it came from and the size and dtype of the parameters sent."""
    header, arrays = _split(body, expected_kinds=("result",))
    if header.get("seq") != seq or header.get("rank") != rank:
        raise PhaseMessageError(f"a result of phase {header.get('seq')!r} from rank "
                                f"{header.get('rank')!r}, expected phase {seq} from rank {rank}")
    if (len(arrays) not in (2, 3) or arrays[0].dtype != np.dtype(dtype)
            or not arrays[0].size == arrays[1].size == params_size):
        raise PhaseMessageError("a result's parameters do not match its phase's")
    try:
        return PhaseResult(
            state=PhaseState(arrays[0], arrays[1]), weight=float(header["weight"]),
            n_samples=int(header["n_samples"]), history=dict(header["history"]),
            hidden_mean=arrays[2] if len(arrays) == 3 else None,
            samples_trained=int(header["samples_trained"]),
            seconds=dict(header["seconds"]), diagnostics=dict(header["diagnostics"]))
    except _MALFORMED as exc:
        raise PhaseMessageError(f"malformed result message: {exc!r}") from exc


def _parts(header, arrays):
    encoded = json.dumps(header, default=_plain).encode()
    little = [np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")) for a in arrays]
    return [_HEADER_LENGTH.pack(len(encoded)), encoded, *(memoryview(a).cast("B")
                                                        for a in little)]


def _split(body, expected_kinds):
    """``(header, arrays)`` of a message body; the arrays are copies in native byte order."""
    body = memoryview(body)
    try:
        (length,) = _HEADER_LENGTH.unpack(body[:_HEADER_LENGTH.size])
        end = _HEADER_LENGTH.size + length
        header = json.loads(bytes(body[_HEADER_LENGTH.size:end])) if end <= len(body) else None
    except (struct.error, *_MALFORMED) as exc:
        raise PhaseMessageError(f"malformed message header: {exc!r}") from exc
    if not isinstance(header, dict) or header.get("kind") not in expected_kinds:
        raise PhaseMessageError(f"expected a {' or '.join(expected_kinds)} message")
    if header["kind"] == "stop":
        return header, []
    try:
        sizes = [_count(size) for size in header["sizes"]]
        dtypes = [np.dtype(header["dtype"])] * len(sizes)
        if header["kind"] == "result" and len(dtypes) == 3:
            dtypes[2] = np.dtype(np.float64)  # the hidden mean
    except _MALFORMED as exc:
        raise PhaseMessageError(f"malformed message header: {exc!r}") from exc
    if any(dtype.kind != "f" for dtype in dtypes):
        raise PhaseMessageError("message arrays must be floating point")
    arrays = []
    for size, dtype in zip(sizes, dtypes, strict=True):
        stop = end + size * dtype.itemsize
        if stop > len(body):
            raise PhaseMessageError("message shorter than its arrays")
        wire = np.frombuffer(body[end:stop], dtype=dtype.newbyteorder("<"))
        arrays.append(wire.astype(dtype.newbyteorder("=")))
        end = stop
    if end != len(body):
        raise PhaseMessageError("message longer than its arrays")
    return header, arrays


def _count(value):
    """``value`` if it is a non-negative integer (JSON's, not a bool), else ValueError."""
    if type(value) is not int or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value


def _plain(value):
    """JSON for numpy's scalars, which scikit-learn's checks let into the settings."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _tuples(value):
    """JSON's lists back to the tuples a phase holds (nested, as in a seed)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
