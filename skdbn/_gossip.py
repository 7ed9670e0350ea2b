"""Peer-to-peer parameter exchange between workers: wire format, transport, push-sum mixing.

Standard library and numpy only (no Spark here). Messages are raw little-endian arrays behind a
fixed header. Every connection first proves that it comes from a worker of this fit by
answering a fresh challenge under the fit's secret (``_transport``); the frame that follows is
authenticated with HMAC-SHA256 under the same secret and that connection's nonce, so a
captured frame does not verify when sent again. A receiver accepts only the two lengths the
phase allows, checks the tag with ``hmac.compare_digest`` before it parses anything, then checks
phase, sender, sequence, sizes and finiteness. Nothing received is ever unpickled.

Push-sum (Kempe et al. 2003; as in GoSGD, Blot et al. 2016): every worker holds parameters
``x`` and a weight ``w``. To push, it halves ``w`` and sends ``(x, w/2)``; a receiver replaces
its state with the weighted mean and adds the weights. The sum of weights is conserved, so the
weighted average over workers and messages in flight is unbiased.
"""

import contextlib
import itertools
import queue
import socket
import struct
import threading
import time
from dataclasses import dataclass

import numpy as np

from ._transport import (
    LENGTH,
    TAG_SIZE,
    AuthenticatedListener,
    AuthenticationError,
    connect,
    recv_exactly,
    send_frame,
    split_frame,
)

MAGIC = b"SKDB"
WIRE_VERSION = 2
KIND_STATE = 1
KIND_DONE = 2
KIND_READY = 3
KIND_PROGRESS = 4
_HEADER = struct.Struct("<4sBBQHHQQdQ")  # magic, version, kind, phase, sender, n_workers,
#                                           sequence, step, weight, n_values
_SEQUENCE_OFFSET = struct.calcsize("<4sBBQHH")
_ACK = b"\x06"
_RENDEZVOUS = b"rendezvous"


class WireError(ValueError):
    """A received frame that is not a valid message of this phase."""


class PeerLost(ConnectionError):
    """Not every worker of a phase arrived at its rendezvous in time (one was stopped or
    lost); the phase can be run again."""


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
        return _HEADER.size + 8 * self.n_workers + payload + TAG_SIZE

    @property
    def context(self):
        """What a connection to a worker of this phase is for, bound into its handshake."""
        return b"gossip" + struct.pack("<QH", self.phase, self.n_workers)


@dataclass
class Message:
    """A verified message from a peer."""

    kind: int
    sender: int
    sequence: int
    step: int
    weight: float
    progress: np.ndarray
    values: np.ndarray | None
    received: float = 0.0  # time.monotonic() on the receiver when the message was verified


def encode(spec, kind, sender, step, weight, progress, values=None, copy=True):
    """The body of one message, as a list of byte buffers to send in order (the transport
    adds the length before and the tag after, and ``with_sequence`` its sequence number).

    ``values`` is copied unless ``copy=False`` says the caller hands over a private array.
    """
    n_values = 0 if values is None else values.size
    header = _HEADER.pack(MAGIC, WIRE_VERSION, kind, spec.phase, sender, spec.n_workers, 0,
                          step, weight, n_values)
    parts = [header, np.asarray(progress, dtype="<u8").tobytes()]
    if values is not None:
        # A private copy: the caller's buffer keeps training while the frame waits to be sent.
        wire_dtype = np.dtype(spec.dtype).newbyteorder("<")
        snapshot = (np.array(values, dtype=wire_dtype, copy=True) if copy
                    else np.asarray(values, dtype=wire_dtype))
        parts.append(memoryview(snapshot).cast("B"))
    return parts


def with_sequence(parts, sequence):
    """The message ``parts`` with its sender's sequence number set."""
    header = bytearray(parts[0])
    struct.pack_into("<Q", header, _SEQUENCE_OFFSET, sequence)
    return [header, *parts[1:]]


def decode(spec, body):
    """Parse and check one message body (a frame without its tag, which has verified).

    Raises
    ------
    WireError
        If the message does not belong to this phase.
    """
    body = memoryview(body)
    if len(body) + TAG_SIZE not in (spec.frame_size(KIND_STATE), spec.frame_size(KIND_DONE)):
        raise WireError(f"frame of {len(body) + TAG_SIZE} bytes is not a message of this phase")
    magic, version, kind, phase, sender, n_workers, sequence, step, weight, n_values = \
        _HEADER.unpack_from(body)
    if magic != MAGIC or version != WIRE_VERSION:
        raise WireError("not an skdbn message of this wire version")
    if kind not in (KIND_STATE, KIND_DONE, KIND_READY, KIND_PROGRESS):
        raise WireError(f"unknown message kind {kind}")
    if phase != spec.phase:
        raise WireError(f"message of phase {phase}, expected {spec.phase}")
    if n_workers != spec.n_workers or not 0 <= sender < n_workers:
        raise WireError(f"sender {sender} of {n_workers} workers does not fit this phase")
    if len(body) + TAG_SIZE != spec.frame_size(kind) or n_values not in (0, spec.n_values) or \
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
    return Message(kind, sender, sequence, step, weight, progress, values)


class PushSum:
    """Push-sum state of one worker: parameters ``x`` (updated in place) and weight ``w``.

    ``params`` is a host vector. A worker whose parameters live on a device sets ``device``
    (an object with ``copy_to(host)`` and ``copy_from(host)``, see
    ``_torch_math.DeviceParams``): the state then reads the device's values before it sends
    or mixes (:meth:`current`) and hands what it changed back (:meth:`changed`), so the
    parameters cross to the host only at exchanges.
    """

    def __init__(self, params, weight):
        self.params = params
        self.weight = float(weight)
        self.device = None

    def current(self):
        """The host parameters, brought up to date from the device first."""
        if self.device is not None:
            self.device.copy_to(self.params)
        return self.params

    def changed(self):
        """Say that the host parameters changed: the device takes them."""
        if self.device is not None:
            self.device.copy_from(self.params)

    def split(self):
        """Halve the weight and return ``(snapshot of x, w / 2)`` to send to a peer."""
        self.weight /= 2
        return self.current().copy(), self.weight

    def merge(self, incoming):
        """Mix ``[(values, weight), ...]`` into the state: weighted mean, weights added."""
        if not incoming:
            return
        params = self.current()
        total = self.weight + sum(w for _, w in incoming)
        params *= self.weight / total
        for values, weight in incoming:
            params += (weight / total) * values
        self.weight = total
        self.changed()


def parse_address(address):
    """``"host:port"`` to ``(host, port)``."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class GossipNode:
    """One worker's listener and background sender for a phase.

    The listener serves every connection at once, authenticates it, verifies its one message
    and puts it in the mailbox; the sending thread delivers queued messages and waits
    (bounded) for the receiver's one-byte acknowledgement, which it sends only after the
    message is in its mailbox. A message whose sequence number is not above the last one
    taken from its sender (a replay, or an old message that lost a race with a newer one) is
    dropped unacknowledged, so its sender takes its push-sum weight back. The training thread
    only enqueues and drains, never touching a socket.

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
        self._listener = AuthenticatedListener(
            spec.secret, spec.context, spec.n_workers, self._allowed_size, self._receive,
            host=host, timeout=timeout)
        self.address = self._listener.address
        self.peers = []
        self._mailbox = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        # One queue and one sending thread per peer: a peer that stops answering delays only
        # the messages meant for it.
        self._outboxes = [queue.Queue() for _ in range(spec.n_workers)]
        self._senders = {}
        self._ready = set()
        self._last_sequence = [0] * spec.n_workers  # of the messages taken from each sender
        self._sequences = itertools.count(1)  # of the messages this worker sends
        self.push_seconds = None  # recent wall time of delivering a parameter push
        self.accepted = 0
        self.failed_sends = 0
        self._rejected = 0

    @property
    def rejected(self):
        """Connections and messages refused: unauthenticated, invalid, replayed or late."""
        return self._rejected + self._listener.rejected

    def start(self, peer_addresses):
        """Begin exchanging with the workers at ``peer_addresses`` (indexed by rank), once
        every peer is listening too (bounded wait).

        Rendezvous services release their tasks up to a second apart (Spark's barrier polls);
        without this handshake an early worker would spend a small phase's budget alone.
        """
        self.peers = list(peer_addresses)
        self._listener.start()
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

    # -- receiving (on the listener's thread) ------------------------------------------

    def _allowed_size(self, size):
        return size in (self.spec.frame_size(KIND_STATE), self.spec.frame_size(KIND_DONE))

    def _receive(self, conn, sender, nonce, frame):
        with conn:
            try:
                message = decode(self.spec, split_frame(self.spec.secret, nonce, frame))
                if message.sender != sender:
                    raise WireError(f"sender {sender} sent a message of {message.sender}")
            except (WireError, AuthenticationError):
                self._rejected += 1
                return
            message.received = time.monotonic()
            with self._arrived:
                if message.sequence <= self._last_sequence[sender]:
                    self._rejected += 1
                    return
                self._last_sequence[sender] = message.sequence
                if message.kind == KIND_READY:
                    self._ready.add(message.sender)
                else:
                    self._mailbox.append(message)
                    self.accepted += 1
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

    def send(self, peer, message, on_failure=None):
        """Queue ``message`` (``encode``'s parts) for ``peer``; ``on_failure()`` runs on a
        sending thread if it is not delivered and acknowledged in time."""
        with self._lock:
            if peer not in self._senders:
                sender = threading.Thread(target=self._send_loop, args=(peer,), daemon=True)
                self._senders[peer] = sender
                sender.start()
        self._outboxes[peer].put((message, on_failure))

    def pending(self):
        """Number of queued or in-flight sends."""
        return sum(outbox.unfinished_tasks for outbox in self._outboxes)

    def flush(self, timeout):
        """Wait (bounded) until every queued message is delivered or given up."""
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.002)
        return self.pending() == 0

    def _send_loop(self, peer):
        outbox = self._outboxes[peer]
        while True:
            item = outbox.get()
            if item is None:
                outbox.task_done()
                return
            message, on_failure = item
            started = time.perf_counter()
            if self._deliver(peer, message):
                self._time_delivery(message, time.perf_counter() - started)
            else:
                self.failed_sends += 1
                if on_failure is not None:
                    on_failure()
            outbox.task_done()

    def _time_delivery(self, message, seconds):
        # Only parameter pushes: their cost (hashing, copying, merging on both sides, all
        # within this wall time) is what spacing the exchanges keeps small.
        if sum(len(part) for part in message) < self.spec.frame_size(KIND_STATE) // 2:
            return
        previous = self.push_seconds
        self.push_seconds = seconds if previous is None else 0.7 * previous + 0.3 * seconds

    def _deliver(self, peer, message):
        # Taken when sent: every receiver sees this worker's numbers increase.
        message = with_sequence(message, next(self._sequences))
        try:
            conn, nonce = connect(parse_address(self.peers[peer]), self.spec.secret,
                                  self.spec.context, self.rank, self.timeout)
            with conn:
                send_frame(conn, self.spec.secret, nonce, message)
                return conn.recv(1) == _ACK
        except (OSError, AuthenticationError):
            return False

    def close(self):
        """Stop the senders and the listener (bounded waits); messages still queued are
        dropped (the phase is over)."""
        for outbox in self._outboxes:
            while True:
                try:
                    outbox.get_nowait()
                except queue.Empty:
                    break
                outbox.task_done()
        with self._lock:
            senders = dict(self._senders)
        for peer in senders:
            self._outboxes[peer].put(None)
        deadline = time.monotonic() + self.timeout + 1
        for sender in senders.values():
            sender.join(timeout=max(0.0, deadline - time.monotonic()))
        self._listener.close()


class AllGatherServer:
    """Driver-side rendezvous: each worker sends its rank and address, and once all
    ``n_workers`` have arrived every one of them gets the full list. Connections authenticate
    first and requests and replies are tagged under the fit's secret and the connection's
    nonce (``_transport``).

    Rounds repeat until ``close()``, so a stage that Spark retries after a lost task meets
    again; a rank that arrives twice in a round (its first task died) replaces its old entry,
    and a connection or request that does not verify is dropped without disturbing the
    round. The server itself waits only until ``close()``; each worker bounds its own wait by
    ``timeout``.
    """

    def __init__(self, secret, n_workers, timeout, host="127.0.0.1"):
        self.secret = secret
        self.n_workers = n_workers
        self.timeout = timeout
        self._listener = AuthenticatedListener(
            secret, _RENDEZVOUS, n_workers,
            lambda size: TAG_SIZE < size <= rendezvous_frame_limit(n_workers),
            self._receive, host=host, timeout=timeout)
        self.address = self._listener.address
        self._arrived = {}  # rank -> (connection, nonce, address) of this round
        self.rounds = 0
        self._rejected = 0

    @property
    def rejected(self):
        """Connections and requests refused."""
        return self._rejected + self._listener.rejected

    def start(self):
        """Serve rounds of rendezvous in a background thread."""
        self._listener.start()
        return self

    def _receive(self, conn, rank, nonce, frame):
        try:
            claimed, address = bytes(split_frame(self.secret, nonce, frame)).decode().split(" ", 1)
            if int(claimed) != rank:
                raise WireError(f"rank {rank} asked for rank {claimed}")
        except (AuthenticationError, WireError, ValueError):
            conn.close()
            self._rejected += 1
            return
        if rank in self._arrived:
            self._arrived[rank][0].close()
        self._arrived[rank] = (conn, nonce, address)
        if len(self._arrived) == self.n_workers:
            self._forget_the_dead()
        if len(self._arrived) == self.n_workers:
            self._reply_to_all()

    def _forget_the_dead(self):
        """Drop the entries of workers whose connection has closed (a task that died while
        it waited): their rank's next task will arrive in their place."""
        for rank, (conn, _, _) in list(self._arrived.items()):
            conn.setblocking(False)  # a socket with a timeout would wait for data first
            try:
                closed = conn.recv(1, socket.MSG_PEEK) == b""
            except BlockingIOError:
                closed = False  # alive and silent, as a waiting worker is
            except OSError:
                closed = True
            finally:
                conn.settimeout(self.timeout)
            if closed:
                conn.close()
                del self._arrived[rank]

    def _reply_to_all(self):
        arrived, self._arrived = self._arrived, {}
        reply = "\n".join(arrived[rank][2] for rank in range(self.n_workers)).encode()
        for conn, nonce, _ in arrived.values():
            with conn, contextlib.suppress(OSError):
                send_frame(conn, self.secret, nonce, [reply])
        self.rounds += 1

    def close(self):
        """Stop serving (bounded wait)."""
        self._listener.close()
        for conn, _, _ in list(self._arrived.values()):
            conn.close()


class AllGatherClient:
    """Picklable worker side of ``AllGatherServer``: ``client(rank, address)`` returns the
    addresses of all workers, by rank."""

    def __init__(self, server_address, secret, timeout, n_workers):
        self.server_address = server_address
        self.secret = secret
        self.timeout = timeout
        self.n_workers = n_workers

    def __repr__(self):  # never print the secret
        return f"AllGatherClient({self.server_address!r})"

    def __call__(self, rank, address):
        conn, nonce = self._connect(rank)
        with conn:
            send_frame(conn, self.secret, nonce, [f"{rank} {address}".encode()])
            try:
                (size,) = LENGTH.unpack(recv_exactly(conn, LENGTH.size))
            except OSError as exc:
                raise PeerLost(
                    f"worker {rank} waited {self.timeout:g} s at the rendezvous, and not every "
                    "worker arrived (one was stopped or lost)"
                ) from exc
            if not TAG_SIZE < size <= rendezvous_frame_limit(self.n_workers):
                raise WireError("rendezvous reply of a wrong length")
            reply = split_frame(self.secret, nonce, recv_exactly(conn, size))
            return bytes(reply).decode().split("\n")

    def _connect(self, rank):
        return connect(parse_address(self.server_address), self.secret, _RENDEZVOUS, rank,
                       self.timeout)


def rendezvous_frame_limit(n_workers):
    """Bytes a rendezvous request or reply may have, tag included: room for every worker's
    address (a host name may be 253 characters)."""
    return (1 << 16) + 300 * n_workers + TAG_SIZE
