"""Connections that are not the fit's own: idle, garbage, forged, replayed, reordered.

Every hostile connection here is a real TCP connection to a real listener on 127.0.0.1, and
every one is closed by the test that opens it.
"""

import contextlib
import secrets
import socket
import threading
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skdbn import DistributedDBN
from skdbn._gossip import KIND_STATE, AllGatherServer, GossipNode, WireSpec, encode, parse_address
from skdbn._transport import AUTH_TIMEOUT, connect, send_frame

VALUES = np.arange(5, dtype=np.float32)


def _spec():
    return WireSpec(secrets.token_bytes(32), phase=3, n_workers=2, n_values=5, dtype="float32")


def _start(nodes, peer_lists):
    threads = [threading.Thread(target=node.start, args=(peers,))
               for node, peers in zip(nodes, peer_lists, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)


@contextlib.contextmanager
def _pair(spec, timeout=5.0):
    nodes = [GossipNode(spec, rank, "127.0.0.1", timeout) for rank in range(2)]
    try:
        _start(nodes, [[n.address for n in nodes]] * 2)
        yield nodes
    finally:
        for node in nodes:
            node.close()


@contextlib.contextmanager
def _idle_connections(address, count):
    """``count`` TCP connections to ``address`` that never send a byte."""
    conns = []
    try:
        for _ in range(count):
            conns.append(socket.create_connection(parse_address(address), timeout=5))
        yield conns
    finally:
        for conn in conns:
            conn.close()


def _send_and_wait(nodes, values=VALUES):
    delivered = threading.Event()
    failed = threading.Event()
    nodes[0].send(1, encode(nodes[0].spec, KIND_STATE, 0, 1, 0.5, [1, 0], values),
                  on_failure=failed.set)
    started = time.monotonic()
    assert nodes[0].flush(10.0) and not failed.is_set()
    assert nodes[1].wait_for(bool, 5.0)
    delivered.set()
    (message,) = nodes[1].drain()
    np.testing.assert_array_equal(message.values, values)
    return time.monotonic() - started


def _refused(conn):
    """Whether the listener closed ``conn`` without acknowledging anything."""
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:  # closed with our bytes unread
        return True


def _wait_until(condition, timeout):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


@pytest.mark.parametrize("n_idle", [3, 200])
def test_messages_arrive_while_idle_connections_are_open(n_idle):
    spec = _spec()
    with _pair(spec) as nodes, _idle_connections(nodes[1].address, n_idle):
        # The message is served beside the idle connections, not after their timeouts.
        assert _send_and_wait(nodes) < AUTH_TIMEOUT
        # Every idle connection is dropped once its time to authenticate has passed.
        assert _wait_until(lambda: nodes[1].rejected >= n_idle, AUTH_TIMEOUT + 3)
        assert nodes[1].accepted == 1


def test_garbage_forgeries_and_oversized_frames_are_dropped_and_counted():
    spec = _spec()
    with _pair(spec) as nodes:
        address = parse_address(nodes[1].address)
        with socket.create_connection(address, timeout=5) as garbage:
            garbage.sendall(secrets.token_bytes(4096))
        with contextlib.suppress(OSError):  # the wrong secret: the answer does not verify
            forged, _ = connect(address, secrets.token_bytes(32), spec.context, 0, 5)
            forged.close()
        with connect(address, spec.secret, spec.context, 0, 5)[0] as oversized:
            oversized.sendall((2**40).to_bytes(8, "little") + b"x" * 64)
        conn, nonce = connect(address, spec.secret, spec.context, 0, 5)
        with conn:  # a frame under a tag made without the secret
            parts = encode(spec, KIND_STATE, 0, 1, 0.5, [1, 0], VALUES)
            send_frame(conn, secrets.token_bytes(32), nonce, parts)
            assert _refused(conn)
        assert _wait_until(lambda: nodes[1].rejected >= 4, 5)
        assert nodes[1].accepted == 0 and nodes[1].drain() == []
        _send_and_wait(nodes)
        assert nodes[1].accepted == 1


class _RecordingProxy:
    """Forwards connections to ``target`` and records what each client sent."""

    def __init__(self, target):
        self.target = parse_address(target)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.recorded = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stopping.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sent = bytearray()
            self.recorded.append(sent)
            upstream = socket.create_connection(self.target, timeout=5)
            client.settimeout(5)
            threading.Thread(target=self._pipe, args=(client, upstream, sent), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    @staticmethod
    def _pipe(source, sink, record):
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if record is not None:
                    record += chunk
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self):
        self._stopping.set()
        self.server.close()
        self._thread.join(5)


def test_replayed_and_reordered_frames_are_not_merged():
    spec = _spec()
    nodes = [GossipNode(spec, rank, "127.0.0.1", 5.0) for rank in range(2)]
    proxy = _RecordingProxy(nodes[1].address)
    try:
        # Worker 0 reaches worker 1 through the proxy, which records everything it sends.
        _start(nodes, [[nodes[0].address, proxy.address], [n.address for n in nodes]])
        _send_and_wait(nodes)
        assert nodes[1].accepted == 1
        captured = bytes(proxy.recorded[-1])  # answer to a challenge, then the frame
        with socket.create_connection(parse_address(nodes[1].address), timeout=5) as replay:
            replay.recv(20)  # a fresh challenge, which the captured answer does not fit
            replay.sendall(captured)
            assert _refused(replay)
        # An old frame made with the secret itself (as a reordered delivery would arrive)
        # is dropped too: its sequence number is not above the last one taken from worker 0.
        conn, nonce = connect(parse_address(nodes[1].address), spec.secret, spec.context, 0, 5)
        with conn:
            old = encode(spec, KIND_STATE, 0, 1, 0.5, [1, 0], VALUES)
            send_frame(conn, spec.secret, nonce, old)  # sequence 0
            assert _refused(conn)
        assert _wait_until(lambda: nodes[1].rejected >= 2, 5)
        assert nodes[1].accepted == 1 and nodes[1].drain() == []
    finally:
        proxy.close()
        for node in nodes:
            node.close()


def test_the_rendezvous_serves_its_workers_beside_idle_connections():
    from skdbn._gossip import AllGatherClient

    secret = secrets.token_bytes(32)
    server = AllGatherServer(secret, 2, timeout=5.0).start()
    try:
        with _idle_connections(server.address, 200):
            client = AllGatherClient(server.address, secret, 5.0, 2)
            results = {}
            threads = [threading.Thread(target=lambda r=r: results.update({r: client(r, f"h:{r}")}))
                       for r in (0, 1)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            assert time.monotonic() - started < AUTH_TIMEOUT
        assert results == {0: ["h:0", "h:1"], 1: ["h:0", "h:1"]}
    finally:
        server.close()


class _HostileRendezvous(AllGatherServer):
    """The engine's rendezvous, with an attacker that holds idle connections to it and,
    once the workers' addresses are known, to every worker, and sends them garbage."""

    attacks = []

    def start(self):
        attack = {"idle": [], "garbage_sent": 0}
        self.attacks.append(attack)
        for _ in range(50):
            attack["idle"].append(socket.create_connection(parse_address(self.address), 5))
        return super().start()

    def _reply_to_all(self):
        addresses = [entry[2] for _, entry in sorted(self._arrived.items())]
        attack = self.attacks[-1]
        for address in addresses:
            for _ in range(50):
                attack["idle"].append(socket.create_connection(parse_address(address), 5))
            with socket.create_connection(parse_address(address), 5) as garbage:
                garbage.sendall(secrets.token_bytes(1000))
                attack["garbage_sent"] += 1
        super()._reply_to_all()

    def close(self):
        super().close()
        for conn in self.attacks[-1]["idle"]:
            conn.close()


def test_a_local_fit_completes_beside_hostile_connections(monkeypatch):
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, random_state=0, stratify=y)
    import skdbn._processes

    monkeypatch.setattr(skdbn._processes, "AllGatherServer", _HostileRendezvous)
    _HostileRendezvous.attacks.clear()
    started = time.monotonic()
    model = DistributedDBN(hidden_layer_sizes=(64,), pretrain_epochs=5, max_iter=10,
                           n_workers=2, backend="local", random_state=0).fit(X_train, y_train)
    seconds = time.monotonic() - started
    assert _HostileRendezvous.attacks and all(a["garbage_sent"] == 2
                                              for a in _HostileRendezvous.attacks)
    assert model.score(X_test, y_test) > 0.9
    # Not a speed figure: a stalled fit would have waited out a 30 s network timeout.
    assert seconds < 30


def test_the_listener_survives_connections_pushed_out_while_they_speak():
    # At the limit of waiting connections a newcomer pushes out the oldest; when the oldest
    # speaks in the same instant, the listener must drop it quietly, not die.
    from skdbn._transport import AuthenticatedListener

    received = []

    def on_frame(conn, sender, nonce, frame):
        received.append(sender)
        conn.close()

    listener = AuthenticatedListener(b"s" * 32, b"test", 4, lambda size: size < 1000,
                                     on_frame, max_unauthenticated=8).start()
    address = parse_address(listener.address)
    waiting = []
    try:
        for _ in range(200):
            while len(waiting) < 8:
                waiting.append(socket.create_connection(address, timeout=5))
            time.sleep(0.005)
            newcomer = socket.create_connection(address, timeout=5)
            waiting[0].send(b"x")
            waiting.pop(0).close()
            waiting.append(newcomer)
        assert listener._thread.is_alive()
        conn, nonce = connect(address, b"s" * 32, b"test", 3, 5)
        with conn:
            send_frame(conn, b"s" * 32, nonce, [b"hello"])
        assert _wait_until(lambda: received == [3], 5)
    finally:
        for conn in waiting:
            conn.close()
        listener.close()


def test_a_burst_of_many_workers_meets_at_the_rendezvous():
    from skdbn._gossip import AllGatherClient

    n = 150  # more workers than connections may wait to authenticate by default
    secret = secrets.token_bytes(32)
    server = AllGatherServer(secret, n, timeout=10.0).start()
    client = AllGatherClient(server.address, secret, 10.0, n)
    results, errors = {}, []
    go = threading.Event()

    def arrive(rank):
        go.wait()
        try:
            results[rank] = client(rank, f"127.0.0.{rank % 250 + 1}:1")
        except Exception as error:
            errors.append(repr(error))

    threads = [threading.Thread(target=arrive, args=(rank,)) for rank in range(n)]
    try:
        for thread in threads:
            thread.start()
        go.set()
        for thread in threads:
            thread.join(30)
    finally:
        server.close()
    assert not errors and len(results) == n and server.rounds == 1


def test_a_dead_worker_waiting_at_the_rendezvous_is_replaced_by_its_retry():
    from skdbn._gossip import AllGatherClient

    secret = secrets.token_bytes(32)
    server = AllGatherServer(secret, 2, timeout=5.0).start()
    client = AllGatherClient(server.address, secret, 5.0, 2)
    try:
        dead, nonce = connect(parse_address(server.address), secret, b"rendezvous", 1, 5.0)
        send_frame(dead, secret, nonce, [b"1 stale:1"])
        dead.close()
        time.sleep(0.2)
        results = {}
        first = threading.Thread(target=lambda: results.update({0: client(0, "new:0")}))
        first.start()  # rank 0 completes the round with the dead rank 1's entry...
        time.sleep(0.3)
        results[1] = client(1, "new:1")  # ...unless that entry is dropped as dead
        first.join(10)
    finally:
        server.close()
    assert results == {0: ["new:0", "new:1"], 1: ["new:0", "new:1"]}
