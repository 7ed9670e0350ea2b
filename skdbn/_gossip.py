"""Peer-to-peer parameter exchange between workers: wire format, transport, push-sum mixing.

Standard library and numpy only (no Spark here). Messages are raw little-endian arrays behind a
fixed header, authenticated with HMAC-SHA256 under a secret that is fresh for every fit. A
receiver learns the frame length first and accepts only the two lengths the phase allows, reads
the frame, checks the tag with ``hmac.compare_digest`` before it parses anything, then checks
phase, sender, sizes and finiteness. Nothing received is ever unpickled.

Push-sum (Kempe et al. 2003; as in GoSGD, Blot et al. 2016): every worker holds parameters
``x`` and a weight ``w``. To push, it halves ``w`` and sends ``(x, w/2)``; a receiver replaces
its state with the weighted mean and adds the weights. The sum of weights is conserved, so the
weighted average over workers and messages in flight is unbiased.
"""

import contextlib
import hashlib
import hmac
import queue
import socket
import struct
import threading
import time
from dataclasses import dataclass

import numpy as np

MAGIC = b"SKDB"
WIRE_VERSION = 1
KIND_STATE = 1
KIND_DONE = 2
KIND_READY = 3
KIND_PROGRESS = 4
_LENGTH = struct.Struct("<Q")
_HEADER = struct.Struct("<4sBBQHHQdQ")  # magic, version, kind, phase, sender, n_workers,
#                                         step, weight, n_values
_TAG_SIZE = hashlib.sha256().digest_size
_ACK = b"\x06"


class WireError(ValueError):
    """A received frame that is not a valid message of this phase."""


@dataclass(frozen=True)
class WireSpec:
    """What every worker of a phase agrees on: secret, phase key, sizes and dtype."""

    secret: bytes
    phase: int
    n_workers: int
    n_values: int
    dtype: str

    def __repr__(self):  # never print the secret
        return (f"WireSpec(phase={self.phase}, n_workers={self.n_workers}, "
                f"n_values={self.n_values}, dtype={self.dtype})")

    @property
    def itemsize(self):
        """Bytes per parameter value."""
        return np.dtype(self.dtype).itemsize

    def frame_size(self, kind):
        """Length of a frame of ``kind``: header, progress vector, payload and tag (only
        state messages carry a payload)."""
        payload = self.n_values * self.itemsize if kind == KIND_STATE else 0
        return _HEADER.size + 8 * self.n_workers + payload + _TAG_SIZE


@dataclass
class Message:
    """A verified message from a peer."""

    kind: int
    sender: int
    step: int
    weight: float
    progress: np.ndarray
    values: np.ndarray | None
    received: float = 0.0  # time.monotonic() on the receiver when the message was verified


def encode(spec, kind, sender, step, weight, progress, values=None, copy=True):
    """The frame for one message, as a list of byte buffers to send in order.

    ``values`` is copied unless ``copy=False`` says the caller hands over a private array.
    """
    n_values = 0 if values is None else values.size
    header = _HEADER.pack(MAGIC, WIRE_VERSION, kind, spec.phase, sender, spec.n_workers, step,
                          weight, n_values)
    parts = [header, np.asarray(progress, dtype="<u8").tobytes()]
    if values is not None:
        # A private copy: the caller's buffer keeps training while the frame waits to be sent.
        wire_dtype = np.dtype(spec.dtype).newbyteorder("<")
        snapshot = (np.array(values, dtype=wire_dtype, copy=True) if copy
                    else np.asarray(values, dtype=wire_dtype))
        parts.append(memoryview(snapshot).cast("B"))
    tag = hmac.new(spec.secret, digestmod=hashlib.sha256)
    for part in parts:
        tag.update(part)
    body_size = sum(len(p) for p in parts) + _TAG_SIZE
    return [_LENGTH.pack(body_size), *parts, tag.digest()]


def decode(spec, frame):
    """Verify and parse one frame body (everything after the length prefix).

    Raises
    ------
    WireError
        If the tag does not verify, or the message does not belong to this phase.
    """
    frame = memoryview(frame)
    if len(frame) not in (spec.frame_size(KIND_STATE), spec.frame_size(KIND_DONE)):
        raise WireError(f"frame of {len(frame)} bytes is not a message of this phase")
    body, tag = frame[:-_TAG_SIZE], frame[-_TAG_SIZE:]
    expected = hmac.new(spec.secret, body, digestmod=hashlib.sha256).digest()
    if not hmac.compare_digest(expected, bytes(tag)):
        raise WireError("authentication tag does not verify")
    magic, version, kind, phase, sender, n_workers, step, weight, n_values = \
        _HEADER.unpack_from(body)
    if magic != MAGIC or version != WIRE_VERSION:
        raise WireError("not an skdbn message of this wire version")
    if kind not in (KIND_STATE, KIND_DONE, KIND_READY, KIND_PROGRESS):
        raise WireError(f"unknown message kind {kind}")
    if phase != spec.phase:
        raise WireError(f"message of phase {phase}, expected {spec.phase}")
    if n_workers != spec.n_workers or not 0 <= sender < n_workers:
        raise WireError(f"sender {sender} of {n_workers} workers does not fit this phase")
    if len(frame) != spec.frame_size(kind) or n_values not in (0, spec.n_values) or \
            (kind == KIND_STATE) != (n_values == spec.n_values):
        raise WireError("message size does not match its kind")
    if not (np.isfinite(weight) and weight > 0):
        raise WireError("push-sum weight must be positive and finite")
    offset = _HEADER.size
    progress = np.frombuffer(body, dtype="<u8", count=n_workers, offset=offset).copy()
    values = None
    if kind == KIND_STATE:
        values = np.frombuffer(body, dtype=np.dtype(spec.dtype).newbyteorder("<"),
                               count=n_values, offset=offset + 8 * n_workers)
        # The frame's buffer belongs to this message alone, so the values can stay a view.
        values = values.astype(np.dtype(spec.dtype), copy=False)
        if not np.all(np.isfinite(values)):
            raise WireError("parameter values are not finite")
    return Message(kind, sender, step, weight, progress, values)


class PushSum:
    """Push-sum state of one worker: parameters ``x`` (updated in place) and weight ``w``."""

    def __init__(self, params, weight):
        self.params = params
        self.weight = float(weight)

    def split(self):
        """Halve the weight and return ``(snapshot of x, w / 2)`` to send to a peer."""
        self.weight /= 2
        return self.params.copy(), self.weight

    def merge(self, incoming):
        """Mix ``[(values, weight), ...]`` into the state: weighted mean, weights added."""
        if not incoming:
            return
        total = self.weight + sum(w for _, w in incoming)
        self.params *= self.weight / total
        for values, weight in incoming:
            self.params += (weight / total) * values
        self.weight = total


def _wake(server):
    """Connect to a listening socket so that a thread in its ``accept()`` returns now rather
    than at its next poll: a phase ends with closing its listeners, and a fit has many."""
    with contextlib.suppress(OSError):
        socket.create_connection(server.getsockname()[:2], timeout=1.0).close()


def _recv_exactly(sock, size):
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        n = sock.recv_into(view[received:], size - received)
        if n == 0:
            raise ConnectionError("peer closed the connection mid-message")
        received += n
    return buffer


def parse_address(address):
    """``"host:port"`` to ``(host, port)``."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class GossipNode:
    """One worker's listener and background sender for a phase.

    The receiving thread accepts one connection per message, verifies it and puts it in the
    mailbox; the sending thread delivers queued messages and waits (bounded) for the
    receiver's one-byte acknowledgement, which it sends only after the message is in its
    mailbox. The training thread only enqueues and drains, never touching a socket.

    Parameters
    ----------
    spec : WireSpec
        The phase's agreement.
    rank : int
        This worker's index.
    host : str
        Address to listen on (the task's own host; 127.0.0.1 on one machine).
    timeout : float
        Seconds any single network operation may take before the peer is skipped.
    """

    def __init__(self, spec, rank, host="127.0.0.1", timeout=10.0):
        self.spec = spec
        self.rank = rank
        self.timeout = timeout
        self._server = socket.create_server((host, 0))
        self._server.settimeout(0.2)
        self.address = f"{host}:{self._server.getsockname()[1]}"
        self.peers = []
        self._mailbox = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._outbox = queue.Queue()
        self._stopping = threading.Event()
        self._ready = set()
        self.rejected = 0
        self.failed_sends = 0
        self._threads = [threading.Thread(target=self._receive_loop, daemon=True),
                         threading.Thread(target=self._send_loop, daemon=True)]

    def start(self, peer_addresses):
        """Begin exchanging with the workers at ``peer_addresses`` (indexed by rank), once
        every peer is listening too (bounded wait).

        Rendezvous services release their tasks up to a second apart (Spark's barrier polls);
        without this handshake an early worker would spend a small phase's budget alone.
        """
        self.peers = list(peer_addresses)
        for thread in self._threads:
            thread.start()
        ready = encode(self.spec, KIND_READY, self.rank, 0, 1.0,
                       np.zeros(self.spec.n_workers, dtype=np.uint64))
        for peer in range(len(self.peers)):
            if peer != self.rank:
                self.send(peer, ready)
        others = set(range(len(self.peers))) - {self.rank}
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            with self._lock:
                if others <= self._ready:
                    break
            time.sleep(0.001)


    # -- receiving --------------------------------------------------------------------

    def _receive_loop(self):
        while not self._stopping.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                if self._stopping.is_set():  # the wake-up connection of close()
                    return
                conn.settimeout(self.timeout)
                self._receive_one(conn)

    def _receive_one(self, conn):
        try:
            (size,) = _LENGTH.unpack(_recv_exactly(conn, _LENGTH.size))
            if size not in (self.spec.frame_size(KIND_STATE), self.spec.frame_size(KIND_DONE)):
                raise WireError(f"announced frame of {size} bytes is not allowed")
            message = decode(self.spec, _recv_exactly(conn, size))
        except (OSError, ConnectionError, WireError):
            with self._lock:
                self.rejected += 1
            return
        message.received = time.monotonic()
        with self._arrived:
            if message.kind == KIND_READY:
                self._ready.add(message.sender)
            else:
                self._mailbox.append(message)
            self._arrived.notify_all()
        # If the acknowledgement is lost the sender takes its weight back although the
        # message was merged here: a rare double count, never a loss of the model.
        with contextlib.suppress(OSError):
            conn.sendall(_ACK)

    def has_mail(self):
        """Whether messages are waiting (a lock-free hint for the training thread)."""
        return bool(self._mailbox)

    def drain(self):
        """All messages received since the last call."""
        with self._lock:
            messages, self._mailbox = self._mailbox, []
        return messages

    def wait_for(self, predicate, timeout):
        """Wait until ``predicate(mailbox)`` holds or ``timeout`` passes; returns its value."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while not predicate(self._mailbox):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._arrived.wait(remaining)
            return True

    # -- sending ----------------------------------------------------------------------

    def send(self, peer, frame, on_failure=None):
        """Queue ``frame`` for ``peer``; ``on_failure()`` runs on the sender thread if it is
        not delivered and acknowledged in time."""
        self._outbox.put((peer, frame, on_failure))

    def pending(self):
        """Number of queued or in-flight sends."""
        return self._outbox.unfinished_tasks

    def flush(self, timeout):
        """Wait (bounded) until every queued message is delivered or given up."""
        deadline = time.monotonic() + timeout
        while self._outbox.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.002)
        return self._outbox.unfinished_tasks == 0

    def _send_loop(self):
        while True:
            item = self._outbox.get()
            if item is None:
                self._outbox.task_done()
                return
            peer, frame, on_failure = item
            if not self._deliver(peer, frame):
                self.failed_sends += 1
                if on_failure is not None:
                    on_failure()
            self._outbox.task_done()

    def _deliver(self, peer, frame):
        try:
            with socket.create_connection(parse_address(self.peers[peer]),
                                          timeout=self.timeout) as conn:
                # Without NODELAY the 32-byte tag after the payload waits for a delayed ACK.
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for part in frame:
                    conn.sendall(part)
                return conn.recv(1) == _ACK
        except OSError:
            return False

    def close(self):
        """Stop both threads (bounded) and the listener."""
        self._stopping.set()
        self._outbox.put(None)
        _wake(self._server)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=self.timeout + 1)
        self._server.close()


class AllGatherServer:
    """Driver-side rendezvous: each worker sends its rank and address, and once all
    ``n_workers`` have arrived every one of them gets the full list. Requests and replies are
    authenticated with the fit's secret.

    Rounds repeat until ``close()``, so a stage that Spark retries after a lost task meets
    again; a rank that arrives twice in a round (its first task died) replaces its old entry,
    and a request that does not verify is dropped without disturbing the round. The server
    itself waits only until ``close()``; each worker bounds its own wait by ``timeout``.
    """

    def __init__(self, secret, n_workers, timeout, host="127.0.0.1"):
        self.secret = secret
        self.n_workers = n_workers
        self.timeout = timeout
        self._server = socket.create_server((host, 0))
        self._server.settimeout(0.2)
        self.address = f"{host}:{self._server.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._stopping = threading.Event()
        self.rounds = 0
        self.rejected = 0

    def start(self):
        """Serve rounds of rendezvous in a background thread."""
        self._thread.start()
        return self

    def _serve(self):
        try:
            while not self._stopping.is_set():
                self._serve_round()
        finally:
            self._server.close()

    def _serve_round(self):
        arrived = {}  # rank -> (connection, address)
        try:
            while len(arrived) < self.n_workers:
                if self._stopping.is_set():
                    return
                request = self._accept_request()
                if request is not None:
                    rank, conn, address = request
                    if rank in arrived:
                        arrived[rank][0].close()
                    arrived[rank] = (conn, address)
            reply = "\n".join(arrived[rank][1] for rank in range(self.n_workers))
            for conn, _ in arrived.values():
                with contextlib.suppress(OSError):
                    _write_signed(conn, self.secret, reply)
            self.rounds += 1
        finally:
            for conn, _ in arrived.values():
                conn.close()

    def _accept_request(self):
        """``(rank, connection, address)`` of the next valid request, or None."""
        try:
            conn, _ = self._server.accept()
        except (TimeoutError, OSError):
            return None
        if self._stopping.is_set():  # the wake-up connection of close()
            conn.close()
            return None
        conn.settimeout(self.timeout)
        try:
            rank, address = _read_signed(conn, self.secret).split(" ", 1)
            rank = int(rank)
            if not 0 <= rank < self.n_workers:
                raise WireError(f"rank {rank} out of range")
        except (OSError, ValueError, WireError):
            conn.close()
            self.rejected += 1
            return None
        return rank, conn, address

    def close(self):
        """Stop serving (bounded wait)."""
        self._stopping.set()
        _wake(self._server)
        if self._thread.is_alive():
            self._thread.join(timeout=self.timeout + 1)
        self._server.close()


class AllGatherClient:
    """Picklable worker side of ``AllGatherServer``: ``client(rank, address)`` returns the
    addresses of all workers, by rank."""

    def __init__(self, server_address, secret, timeout):
        self.server_address = server_address
        self.secret = secret
        self.timeout = timeout

    def __repr__(self):  # never print the secret
        return f"AllGatherClient({self.server_address!r})"

    def __call__(self, rank, address):
        with socket.create_connection(parse_address(self.server_address),
                                      timeout=self.timeout) as conn:
            _write_signed(conn, self.secret, f"{rank} {address}")
            return _read_signed(conn, self.secret).split("\n")


_MAX_TEXT = 1 << 16


def _write_signed(conn, secret, text):
    data = text.encode()
    tag = hmac.new(secret, data, digestmod=hashlib.sha256).digest()
    conn.sendall(_LENGTH.pack(len(data)) + data + tag)


def _read_signed(conn, secret):
    (size,) = _LENGTH.unpack(_recv_exactly(conn, _LENGTH.size))
    if size > _MAX_TEXT:
        raise WireError("rendezvous message too long")
    frame = _recv_exactly(conn, size + _TAG_SIZE)
    data, tag = bytes(frame[:size]), bytes(frame[size:])
    if not hmac.compare_digest(hmac.new(secret, data, digestmod=hashlib.sha256).digest(), tag):
        raise WireError("rendezvous message does not verify")
    return data.decode()
