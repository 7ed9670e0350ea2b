"""Phases and results as raw bytes (``_phase_wire``), and the standing Spark job's channel
beside connections that are not the fit's own."""

import contextlib
import json
import secrets
import socket
import struct

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skdbn import DistributedDBN
from skdbn._flat import FlatParams
from skdbn._gossip import parse_address
from skdbn._phase import FinetunePhase, PhaseResult, PhaseState, PretrainPhase
from skdbn._phase_wire import (
    PLAN_FIELDS,
    PhaseMessageError,
    decode_phase,
    decode_result,
    encode_phase,
    encode_result,
    encode_stop,
)
from skdbn._rbm import rbm_layout
from skdbn._transport import connect, send_frame

PLAN = {"mode": "gossip", "n_workers": 2, "sync_every": 4, "phase_key": 2**62 + 3,
        "total_samples": 1000, "timeout": 30.0, "progress_address": None,
        "watch_peers": False}


def _body(parts):
    return b"".join(bytes(part) for part in parts)


def _state(size, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return PhaseState(rng.standard_normal(size).astype(dtype),
                      rng.standard_normal(size).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_pretraining_phase_arrives_as_it_was_sent(dtype):
    phase = PretrainPhase(layer=1, n_visible=6, n_hidden=4, visible_units="bernoulli",
                          epochs=3, batch_size=10, learning_rate=0.1, momentum=0.5,
                          weight_decay=1e-4, cd_steps=2, persistent=True, seed=(7, 0, 1),
                          slow_worker=(1, 0.5))
    below = [FlatParams(rbm_layout(8, 6), dtype)]
    below[0].flat[:] = np.linspace(-1, 1, below[0].flat.size)
    state = _state(sum(int(np.prod(s)) for s in rbm_layout(6, 4).values()), dtype)
    order = decode_phase(_body(encode_phase(5, phase, state, below, PLAN)))
    assert order.seq == 5 and order.phase == phase and order.plan == PLAN
    assert order.state.params.dtype == dtype
    np.testing.assert_array_equal(order.state.params, state.params)
    np.testing.assert_array_equal(order.state.velocity, state.velocity)
    assert order.below[0].shapes == below[0].shapes
    np.testing.assert_array_equal(order.below[0].flat, below[0].flat)


def test_a_finetuning_phase_and_its_result_arrive_as_they_were_sent():
    phase = FinetunePhase(layer_sizes=(6, 4, 3), epochs=10, batch_size=20, learning_rate=0.1,
                          momentum=0.9, alpha=1e-4, seed=(3, 1))
    state = _state(6 * 4 + 4 + 4 * 3 + 3, np.float32)
    order = decode_phase(_body(encode_phase(1, phase, state, [], PLAN)))
    assert order.phase == phase and order.below == []
    result = PhaseResult(state=_state(state.params.size, np.float32, seed=1), weight=0.5,
                         n_samples=100, history={"loss": [1.5, 0.25]},
                         hidden_mean=np.array([0.1, 0.2]), samples_trained=1000,
                         seconds={"train": 1.25, "started": 1.7e9},
                         diagnostics={"merged": 3})
    back = decode_result(_body(encode_result(1, 0, result)), 1, 0, state.params.size,
                         np.float32)
    np.testing.assert_array_equal(back.state.params, result.state.params)
    np.testing.assert_array_equal(back.hidden_mean, result.hidden_mean)
    assert (back.weight, back.n_samples, back.samples_trained) == (0.5, 100, 1000)
    assert back.history == result.history and back.seconds == result.seconds
    assert back.diagnostics == result.diagnostics


def _message(header, payload=b""):
    encoded = json.dumps(header).encode()
    return struct.pack("<I", len(encoded)) + encoded + payload


GOOD_HEADER = {"kind": "result", "seq": 1, "rank": 0, "dtype": "float32", "sizes": [2, 2],
               "weight": 1.0, "n_samples": 1, "samples_trained": 1, "history": {},
               "seconds": {}, "diagnostics": {}}


@pytest.mark.parametrize("body", [
    b"", b"\x00\x00", struct.pack("<I", 1000) + b"{}",
    _message({"kind": "phase"}),  # a phase where a result is awaited
    _message(dict(GOOD_HEADER, seq=2), bytes(16)),  # answers another phase
    _message(dict(GOOD_HEADER, rank=1), bytes(16)),  # from another worker
    _message(dict(GOOD_HEADER, dtype="object"), bytes(16)),
    _message(dict(GOOD_HEADER, dtype="float64"), bytes(32)),  # not the phase's dtype
    _message(dict(GOOD_HEADER, sizes=[3, 3]), bytes(24)),  # not the phase's parameters
    _message(GOOD_HEADER, bytes(15)),  # shorter than its arrays
    _message(GOOD_HEADER, bytes(17)),  # longer than its arrays
    _message(dict(GOOD_HEADER, sizes=[-2, 2]), bytes(16)),
    _message({k: v for k, v in GOOD_HEADER.items() if k != "weight"}, bytes(16)),
])
def test_malformed_results_are_refused(body):
    with pytest.raises(PhaseMessageError):
        decode_result(body, 1, 0, 2, np.float32)


def test_malformed_phases_are_refused_and_stop_is_understood():
    assert decode_phase(_body(encode_stop(3))) is None
    phase = FinetunePhase(layer_sizes=(2, 2), epochs=1, batch_size=1, learning_rate=0.1,
                          momentum=0.0, alpha=0.0, seed=(1,))
    parts = encode_phase(1, phase, _state(6, np.float32), [], PLAN)
    header = json.loads(bytes(parts[1]))
    for change in ({"phase_type": "other"}, {"phase": {**header["phase"], "extra": 1}},
                   {"plan": {k: v for k, v in PLAN.items() if k != "mode"}},
                   {"below": [{"weights": [1, 1]}]}):
        with pytest.raises(PhaseMessageError):
            decode_phase(_message({**header, **change}, b"".join(map(bytes, parts[2:]))))
    assert set(PLAN) == set(PLAN_FIELDS)


@pytest.fixture(scope="module")
def digits_split():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


@pytest.mark.spark
def test_a_spark_fit_completes_beside_hostile_connections_to_its_phase_channel(
        spark, digits_split, monkeypatch):
    # Idle connections, garbage, and a ready message under a wrong secret reach the standing
    # job's channel before its tasks do; none of them may take a task's place.
    from skdbn.spark import standing

    X_train, X_test, y_train, y_test = digits_split
    attacks = []
    original = standing.StandingJob.start

    def start(job):
        address = parse_address(job._listener.address)
        job._listener.start()
        opened = [socket.create_connection(address, 5) for _ in range(20)]
        with socket.create_connection(address, 5) as garbage:
            garbage.sendall(secrets.token_bytes(500))
        with contextlib.suppress(OSError):  # refused at once, or while it writes
            forged, nonce = connect(address, secrets.token_bytes(32), b"skdbn-phases", 0, 5)
            with forged:
                send_frame(forged, secrets.token_bytes(32), nonce, [b'{"kind": "ready"}'])
        attacks.append(opened)
        job._listener.start = lambda: None
        return original(job)

    monkeypatch.setattr(standing.StandingJob, "start", start)
    try:
        model = DistributedDBN(hidden_layer_sizes=(32,), pretrain_epochs=2, max_iter=4,
                               n_workers=2, random_state=0).fit(X_train, y_train)
    finally:
        for opened in attacks:
            for conn in opened:
                conn.close()
    assert attacks, "the fit ran no standing job"
    assert model.score(X_test, y_test) > 0.85


def test_a_task_that_cannot_reach_the_phase_channel_says_what_to_set():
    from skdbn.spark.standing import PhaseChannel, _connect_to_driver

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    channel = PhaseChannel(f"127.0.0.1:{port}", secrets.token_bytes(32), 1.0)
    with pytest.raises(ConnectionError, match=r"spark\.skdbn\.rendezvous=barrier"):
        _connect_to_driver(channel, 0)
    assert channel.secret.hex() not in repr(channel)


def test_numpy_scalars_in_the_settings_travel_as_plain_numbers():
    # scikit-learn's checks let np.int64 and np.float32 (a grid from np.arange) through.
    phase = FinetunePhase(layer_sizes=(np.int64(2), 2), epochs=np.int64(3), batch_size=5,
                          learning_rate=np.float32(0.5), momentum=0.0, alpha=0.0,
                          seed=(np.int64(1),))
    plan = dict(PLAN, sync_every=np.int64(4), timeout=np.float64(30.0))
    order = decode_phase(_body(encode_phase(1, phase, _state(6, np.float32), [], plan)))
    assert order.phase.epochs == 3 and order.phase.learning_rate == 0.5
    assert order.phase.layer_sizes == (2, 2) and order.plan["sync_every"] == 4


@pytest.mark.parametrize("change", [
    {"sizes": [None, 2]}, {"sizes": ["2", 2]}, {"sizes": [2.0, 2]}, {"sizes": [True, 2]},
    {"sizes": 7}, {"seq": None}, {"rank": "0"}, {"history": [1, 2]}, {"dtype": ["f4"]},
])
def test_results_with_wrong_types_are_refused(change):
    with pytest.raises(PhaseMessageError):
        decode_result(_message({**GOOD_HEADER, **change}, bytes(16)), 1, 0, 2, np.float32)


def test_deeply_nested_or_mistyped_phase_headers_are_refused():
    nested = (b"[" * 100_000) + (b"]" * 100_000)
    with pytest.raises(PhaseMessageError):
        decode_phase(struct.pack("<I", len(nested)) + nested)
    phase = FinetunePhase(layer_sizes=(2, 2), epochs=1, batch_size=1, learning_rate=0.1,
                          momentum=0.0, alpha=0.0, seed=(1,))
    parts = encode_phase(1, phase, _state(6, np.float32), [], PLAN)
    header = json.loads(bytes(parts[1]))
    arrays = b"".join(map(bytes, parts[2:]))
    for change in ({"phase": list(header["phase"])}, {"below": [[1, 2]], "sizes": [6, 6, 0]},
                   {"plan": ["mode"]}, {"seq": -1}, {"seq": "1"}):
        with pytest.raises(PhaseMessageError):
            decode_phase(_message({**header, **change}, arrays))


def _task_end(secret):
    """A connected socket pair, as a task's end and the driver's, with a shared nonce."""
    driver, task = socket.socketpair()
    for end in (driver, task):
        end.settimeout(5)
    return driver, task, secrets.token_bytes(16)


def test_a_task_believes_only_a_driver_that_holds_the_secret():
    from skdbn.spark.standing import PhaseChannel, _check_welcome, _welcome

    secret = secrets.token_bytes(32)
    channel = PhaseChannel("127.0.0.1:1", secret, 5.0)
    for forged in ([secrets.token_bytes(32), _welcome(0)], [secret, _welcome(1)]):
        driver, task, nonce = _task_end(secret)
        with driver, task:
            send_frame(driver, forged[0], nonce, [forged[1]])
            with pytest.raises(ConnectionError):
                _check_welcome(task, nonce, channel, 0)
    driver, task, nonce = _task_end(secret)
    with driver, task:  # a huge length is refused before anything is allocated for it
        driver.sendall(struct.pack("<Q", 1 << 40))
        with pytest.raises(ConnectionError, match="welcome"):
            _check_welcome(task, nonce, channel, 0)
    driver, task, nonce = _task_end(secret)
    with driver, task:
        send_frame(driver, secret, nonce, [_welcome(0)])
        _check_welcome(task, nonce, channel, 0)


def test_a_task_refuses_a_phase_sent_again():
    from skdbn.spark.standing import PhaseChannel, _next_order

    secret = secrets.token_bytes(32)
    channel = PhaseChannel("127.0.0.1:1", secret, 5.0)
    phase = FinetunePhase(layer_sizes=(2, 2), epochs=1, batch_size=1, learning_rate=0.1,
                          momentum=0.0, alpha=0.0, seed=(1,))
    driver, task, nonce = _task_end(secret)
    with driver, task:
        parts = encode_phase(3, phase, _state(6, np.float32), [], PLAN)
        send_frame(driver, secret, nonce, parts)
        assert _next_order(task, nonce, channel, 2).seq == 3
        send_frame(driver, secret, nonce, parts)  # the same frame again
        with pytest.raises(ConnectionError, match="sent again"):
            _next_order(task, nonce, channel, 3)
        send_frame(driver, secret, nonce, encode_stop(4))
        assert _next_order(task, nonce, channel, 3) is None
