"""The gossip layer without a JVM: wire format, push-sum, transport, and local worker processes."""

import secrets
import socket
import threading
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skdbn import DistributedDBN
from skdbn._gossip import (
    KIND_DONE,
    KIND_STATE,
    AllGatherClient,
    AllGatherServer,
    GossipNode,
    PushSum,
    WireError,
    WireSpec,
    decode,
    encode,
    parse_address,
    with_sequence,
)
from skdbn._sync import AverageSync, GossipSync, PeersStalled
from skdbn._transport import AuthenticationError, connect, frame_tag, send_frame, split_frame
from skdbn._watch import WorkerLog


def _spec(**changes):
    values = dict(secret=b"k" * 32, phase=7, n_workers=3, n_values=5, dtype="float32")
    return WireSpec(**{**values, **changes})


def _body(parts):
    return b"".join(bytes(part) for part in parts)


def test_message_round_trip():
    spec = _spec()
    values = np.arange(5, dtype=np.float32)
    parts = with_sequence(encode(spec, KIND_STATE, 2, 11, 0.25, [1, 2, 3], values), 9)
    message = decode(spec, _body(parts))
    assert (message.kind, message.sender, message.sequence, message.step, message.weight) == \
        (KIND_STATE, 2, 9, 11, 0.25)
    np.testing.assert_array_equal(message.progress, [1, 2, 3])
    np.testing.assert_array_equal(message.values, values)
    done = decode(spec, _body(encode(spec, KIND_DONE, 0, 3, 1.0, [4, 5, 6])))
    assert done.kind == KIND_DONE and done.values is None


@pytest.mark.parametrize("tamper", [
    lambda frame: frame[:-1] + bytes([frame[-1] ^ 1]),
    lambda frame: frame[:40] + bytes([frame[40] ^ 1]) + frame[41:],
    lambda frame: frame[:-3],
])
def test_tampered_frames_are_rejected_before_parsing(tamper):
    spec, nonce = _spec(), secrets.token_bytes(16)
    body = _body(encode(spec, KIND_STATE, 1, 1, 0.5, [0, 0, 0], np.ones(5, np.float32)))
    frame = body + frame_tag(spec.secret, nonce, [body])
    assert bytes(split_frame(spec.secret, nonce, frame)) == body
    with pytest.raises(AuthenticationError, match="does not verify"):
        split_frame(spec.secret, nonce, tamper(frame))


def test_frames_of_another_connection_fit_or_phase_are_rejected():
    spec, nonce = _spec(), secrets.token_bytes(16)
    body = _body(encode(spec, KIND_STATE, 1, 1, 0.5, [0, 0, 0], np.ones(5, np.float32)))
    frame = body + frame_tag(spec.secret, nonce, [body])
    with pytest.raises(AuthenticationError):  # a frame replayed on another connection
        split_frame(spec.secret, secrets.token_bytes(16), frame)
    with pytest.raises(AuthenticationError):  # another fit's secret
        split_frame(b"x" * 32, nonce, frame)
    other_phase = _body(encode(_spec(phase=8), KIND_STATE, 1, 1, 0.5, [0, 0, 0],
                               np.ones(5, np.float32)))
    with pytest.raises(WireError, match="phase 8"):
        decode(spec, other_phase)


def test_authenticated_but_invalid_content_is_rejected():
    spec = _spec()
    nan_values = np.array([0, np.nan, 0, 0, 0], np.float32)
    with pytest.raises(WireError, match="not finite"):
        decode(spec, _body(encode(spec, KIND_STATE, 1, 1, 0.5, [0, 0, 0], nan_values)))
    with pytest.raises(WireError, match="weight"):
        decode(spec, _body(encode(spec, KIND_STATE, 1, 1, -1.0, [0, 0, 0],
                                  np.ones(5, np.float32))))
    with pytest.raises(WireError, match="sender 5"):
        decode(spec, _body(encode(spec, KIND_STATE, 5, 1, 0.5, [0, 0, 0],
                                  np.ones(5, np.float32))))
    with pytest.raises(WireError, match="not a message of this phase"):
        decode(spec, _body(encode(spec, KIND_STATE, 1, 1, 0.5, [0, 0, 0],
                                  np.ones(5, np.float32)))[:-4])


def test_secret_is_never_in_reprs():
    spec = _spec(secret=b"SECRET-SECRET-SECRET-SECRET-1234")
    assert "SECRET" not in repr(spec)
    assert "SECRET" not in repr(AllGatherClient("127.0.0.1:1", spec.secret, 1.0, 3))


def test_push_sum_conserves_weight_and_the_weighted_average():
    rng = np.random.default_rng(0)
    states = [PushSum(rng.normal(size=4), weight) for weight in (1.0, 2.0, 3.0)]
    average = sum(s.weight * s.params for s in states) / 6.0
    for _ in range(200):
        sender, receiver = rng.choice(3, size=2, replace=False)
        values, weight = states[sender].split()
        states[receiver].merge([(values, weight)])
    assert np.isclose(sum(s.weight for s in states), 6.0)
    np.testing.assert_allclose(sum(s.weight * s.params for s in states) / 6.0, average)
    for state in states:  # mixing alone drives every worker to the average
        np.testing.assert_allclose(state.params, average, atol=1e-6)


def _nodes(n_workers, timeout=5.0):
    spec = _spec(n_workers=n_workers, secret=secrets.token_bytes(32))
    nodes = [GossipNode(spec, rank, "127.0.0.1", timeout) for rank in range(n_workers)]
    addresses = [n.address for n in nodes]
    # Workers start concurrently; start() waits (bounded) for every peer's handshake.
    starters = [threading.Thread(target=node.start, args=(addresses,)) for node in nodes]
    for starter in starters:
        starter.start()
    for starter in starters:
        starter.join(timeout + 1)
    return spec, nodes


def test_nodes_deliver_and_acknowledge_over_loopback():
    spec, nodes = _nodes(2)
    try:
        failures = []
        values = np.arange(5, dtype=np.float32)
        nodes[0].send(1, encode(spec, KIND_STATE, 0, 1, 0.5, [3, 0], values),
                      on_failure=lambda: failures.append(1))
        assert nodes[0].flush(5.0) and not failures
        assert nodes[1].wait_for(bool, 5.0)
        (message,) = nodes[1].drain()
        np.testing.assert_array_equal(message.values, values)
    finally:
        for node in nodes:
            node.close()


def test_garbage_from_a_stranger_is_dropped_and_counted():
    _, nodes = _nodes(1)
    try:
        with socket.create_connection(("127.0.0.1", int(nodes[0].address.split(":")[1])),
                                      timeout=5) as conn:
            conn.sendall((2**40).to_bytes(8, "little") + b"x" * 100)
        deadline = time.monotonic() + 5
        while nodes[0].rejected == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert nodes[0].rejected == 1 and nodes[0].drain() == []
    finally:
        nodes[0].close()


def test_a_silent_peer_is_skipped_after_the_timeout():
    # A listener that accepts connections but never reads or answers.
    silent = socket.create_server(("127.0.0.1", 0))
    spec = _spec(n_workers=2)
    node = GossipNode(spec, 0, "127.0.0.1", timeout=0.5)
    node.start([node.address, f"127.0.0.1:{silent.getsockname()[1]}"])
    try:
        failed = threading.Event()
        start = time.monotonic()
        node.send(1, encode(spec, KIND_STATE, 0, 1, 0.5, [0, 0], np.ones(5, np.float32)),
                  on_failure=failed.set)
        assert failed.wait(5.0)
        assert time.monotonic() - start < 3.0
        assert node.failed_sends == 2  # the start-up handshake and this message
    finally:
        node.close()
        silent.close()


def test_rendezvous_gathers_addresses_and_times_out():
    secret = secrets.token_bytes(32)
    server = AllGatherServer(secret, 2, timeout=5.0).start()
    client = AllGatherClient(server.address, secret, 5.0, 2)
    results = {}
    threads = [threading.Thread(target=lambda r=r: results.update({r: client(r, f"h:{r}")}))
               for r in (1, 0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    server.close()
    assert results == {0: ["h:0", "h:1"], 1: ["h:0", "h:1"]}

    lonely = AllGatherServer(secret, 2, timeout=0.5).start()
    start = time.monotonic()
    with pytest.raises(OSError):
        AllGatherClient(lonely.address, secret, 1.0, 2)(0, "h:0")
    assert time.monotonic() - start < 5
    lonely.close()
    assert not lonely._listener._thread.is_alive()


def _gather_in_threads(client, requests):
    results = {}
    threads = [threading.Thread(target=lambda r=r, a=a: results.update({r: client(r, a)}))
               for r, a in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


def test_rendezvous_survives_forged_requests_and_serves_a_retried_stage():
    secret = secrets.token_bytes(32)
    server = AllGatherServer(secret, 2, timeout=5.0).start()
    try:
        forged = AllGatherClient(server.address, secrets.token_bytes(32), 1.0, 2)
        with pytest.raises((OSError, ValueError)):
            forged(0, "evil:1")
        client = AllGatherClient(server.address, secret, 5.0, 2)
        # Rank 0 of a first attempt arrives and dies; the retried stage's rank 0 replaces it.
        dead, nonce = connect(parse_address(server.address), secret, b"rendezvous", 0, 5.0)
        send_frame(dead, secret, nonce, [b"0 stale:1"])
        dead.close()
        first = _gather_in_threads(client, [(0, "a:0"), (1, "a:1")])
        second = _gather_in_threads(client, [(1, "b:1"), (0, "b:0")])
    finally:
        server.close()
    assert first == {0: ["a:0", "a:1"], 1: ["a:0", "a:1"]}
    assert second == {0: ["b:0", "b:1"], 1: ["b:0", "b:1"]}
    assert server.rejected >= 1 and server.rounds == 2


@pytest.fixture(scope="module")
def digits_split():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


@pytest.mark.parametrize("sync", ["gossip", "average", "none"])
def test_two_local_worker_processes_learn(digits_split, sync):
    X_train, X_test, y_train, y_test = digits_split
    params = dict(hidden_layer_sizes=(64,), pretrain_epochs=5, max_iter=10, random_state=0)
    model = DistributedDBN(backend="local", n_workers=2, sync=sync, **params)
    model.fit(X_train, y_train)
    assert model.n_workers_ == 2
    assert model.score(X_test, y_test) > 0.9


def test_average_mode_is_deterministic(digits_split):
    X_train, _, y_train, _ = digits_split
    params = dict(hidden_layer_sizes=(32,), pretrain_epochs=2, max_iter=2, n_workers=2,
                  sync="average", random_state=3, backend="local")
    first = DistributedDBN(**params).fit(X_train, y_train)
    second = DistributedDBN(**params).fit(X_train, y_train)
    for a, b in zip(first.coefs_, second.coefs_, strict=True):
        np.testing.assert_array_equal(a, b)


def _synchronizers(kind, nodes, watch_peers):
    watch_since = time.monotonic() if watch_peers else None
    params = [np.zeros(5, dtype=np.float32) for _ in nodes]
    syncs = []
    for node, values in zip(nodes, params, strict=True):
        if kind == "gossip":
            sync = GossipSync(node, epochs=1, epoch_samples=20, sync_every=1, batch_size=5,
                              timeout=node.timeout, watch_since=watch_since)
        else:
            sync = AverageSync(node, epochs=1, n_minibatches=1, sync_every=1,
                               timeout=node.timeout, watch_since=watch_since)
        sync.begin(values, 1.0, WorkerLog())
        syncs.append(sync)
    return syncs


@pytest.mark.parametrize("kind", ["gossip", "average"])
def test_a_watching_worker_raises_when_a_peer_never_finishes(kind):
    # Worker 1 begins its phase and then stops for good; worker 0 trains its share and
    # finishes. Watching, it raises once the straggler allowance has passed; not watching,
    # it ends the phase without its peer after the timeout (the driver watches then).
    for watch_peers in (True, False):
        _, nodes = _nodes(2, timeout=0.5)
        try:
            fast, _stopped = _synchronizers(kind, nodes, watch_peers)
            while fast.keep_going():
                fast.after_minibatch(5)
            began = time.monotonic()
            if watch_peers:
                with pytest.raises(PeersStalled, match=r"worker\(s\) \[1\] had not finished"):
                    fast.finish()
            else:
                fast.finish()
            assert time.monotonic() - began < 5.0
        finally:
            for node in nodes:
                node.close()


@pytest.mark.parametrize("kind", ["gossip", "average"])
def test_watching_workers_that_all_finish_end_their_phase_together(kind):
    _, nodes = _nodes(2, timeout=5.0)
    try:
        syncs = _synchronizers(kind, nodes, watch_peers=True)

        def run(sync, weights):
            while sync.keep_going():
                sync.after_minibatch(5)
            weights.append(sync.finish())

        weights = []
        threads = [threading.Thread(target=run, args=(sync, weights)) for sync in syncs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert len(weights) == 2 and np.isclose(sum(weights), 2.0)
    finally:
        for node in nodes:
            node.close()
