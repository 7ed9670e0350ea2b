"""Authenticated connections between the workers of a fit, and to its rendezvous.

Standard library only. Every connection authenticates before it may send anything else: the
listening side sends a fresh random nonce, and the connecting side must answer within
``AUTH_TIMEOUT`` with its rank and an HMAC-SHA256 of the nonce under the fit's secret. Only
then does the listener read one length-prefixed frame, of a length its service allows, whose
tag covers the same nonce: a frame is valid on its own connection only, so a captured frame
sent again, later or elsewhere, does not verify.

One thread serves every connection at once (``selectors``), so an idle or slow connection
delays nobody. At most ``MAX_UNAUTHENTICATED`` connections may wait for their answer; a
newcomer beyond that pushes out the oldest, so a flood of idle connections cannot lock the
fit's own peers out.
"""

import contextlib
import hashlib
import hmac
import secrets
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

# Seconds a connection has to answer the challenge: a peer of the fit answers in
# microseconds; anyone slower is not one.
AUTH_TIMEOUT = 2.0
# Connections that may wait for their answer at once (at least twice the ranks that may
# connect, so that a burst of the fit's own peers never pushes each other out).
MAX_UNAUTHENTICATED = 64
# Connections accepted at a time before the waiting ones are read again.
_ACCEPT_BATCH = 16

_CHALLENGE = struct.Struct("<4s16s")  # magic, nonce
_HELLO = struct.Struct("<H32s")  # rank, tag
LENGTH = struct.Struct("<Q")
_MAGIC = b"SKDC"
TAG_SIZE = hashlib.sha256().digest_size


class AuthenticationError(ValueError):
    """A connection or frame that does not prove it comes from a peer of this fit."""


def hello_tag(secret, context, nonce, rank):
    """The answer to a challenge: HMAC(secret, context, nonce, rank)."""
    tag = hmac.new(secret, b"skdbn-hello\0" + context + b"\0" + nonce, hashlib.sha256)
    tag.update(struct.pack("<H", rank))
    return tag.digest()


def frame_tag(secret, nonce, parts):
    """The tag of a frame made of the byte buffers ``parts``, bound to a connection's nonce."""
    tag = hmac.new(secret, b"skdbn-frame\0" + nonce, hashlib.sha256)
    for part in parts:
        tag.update(part)
    return tag.digest()


def split_frame(secret, nonce, frame):
    """The body of a received frame (all but its tag), once its tag verifies."""
    frame = memoryview(frame)
    if len(frame) < TAG_SIZE:
        raise AuthenticationError("frame shorter than its tag")
    body, tag = frame[:-TAG_SIZE], frame[-TAG_SIZE:]
    if not hmac.compare_digest(frame_tag(secret, nonce, [body]), bytes(tag)):
        raise AuthenticationError("authentication tag does not verify")
    return body


def recv_exactly(sock, size):
    """Read exactly ``size`` bytes (the socket's timeout bounds each wait)."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        n = sock.recv_into(view[received:], size - received)
        if n == 0:
            raise ConnectionError("peer closed the connection mid-message")
        received += n
    return buffer


def connect(address, secret, context, rank, timeout):
    """Open a connection to a listener at ``(host, port)`` and answer its challenge.

    Returns
    -------
    conn : socket.socket
        Connected, with ``timeout`` on every operation; the caller closes it.
    nonce : bytes
        The connection's nonce, which the tag of every frame sent on it must cover.
    """
    conn = socket.create_connection(address, timeout=timeout)
    try:
        # Without NODELAY a frame's small last part waits for a delayed ACK.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        magic, nonce = _CHALLENGE.unpack(recv_exactly(conn, _CHALLENGE.size))
        if magic != _MAGIC:
            raise AuthenticationError("the listener is not an skdbn peer")
        conn.sendall(_HELLO.pack(rank, hello_tag(secret, context, nonce, rank)))
    except BaseException:
        conn.close()
        raise
    return conn, nonce


def send_frame(conn, secret, nonce, parts):
    """Send the byte buffers ``parts`` as one frame: length, parts, tag under ``nonce``."""
    tag = frame_tag(secret, nonce, parts)
    conn.sendall(LENGTH.pack(sum(len(part) for part in parts) + TAG_SIZE))
    for part in parts:
        conn.sendall(part)
    conn.sendall(tag)


@dataclass
class _Connection:
    nonce: bytes
    deadline: float
    buffer: bytearray = field(default_factory=lambda: bytearray(_HELLO.size))
    received: int = 0
    stage: str = "hello"  # then "length", then "frame"
    sender: int = -1


class AuthenticatedListener:
    """Listens on ``host``, authenticates every connection, and hands each one's frame over.

    Parameters
    ----------
    secret : bytes
        The fit's secret.
    context : bytes
        What the connections are for (service and phase), bound into the challenge's answer
        so that an answer made for another listener does not verify here.
    n_ranks : int
        Ranks that may connect are ``0 .. n_ranks - 1``.
    accept_size : callable
        ``accept_size(n_bytes)``: whether a frame of that length (tag included) may follow.
    on_frame : callable
        ``on_frame(conn, sender, nonce, frame)`` runs on the listener's thread for every
        frame of an authenticated sender; it owns ``conn`` (blocking, with ``timeout``) from
        then on and must close it. The frame's tag is not checked yet (see ``split_frame``).
    host : str, default="127.0.0.1"
        Address to listen on.
    timeout : float, default=10.0
        Seconds an authenticated connection may take for its frame.
    auth_timeout, max_unauthenticated
        See the module's docstring.
    """

    def __init__(self, secret, context, n_ranks, accept_size, on_frame, host="127.0.0.1",
                 timeout=10.0, auth_timeout=AUTH_TIMEOUT,
                 max_unauthenticated=MAX_UNAUTHENTICATED):
        self.secret = secret
        self.context = context
        self.n_ranks = n_ranks
        self.accept_size = accept_size
        self.on_frame = on_frame
        self.timeout = timeout
        self.auth_timeout = auth_timeout
        self.max_unauthenticated = max(max_unauthenticated, 2 * n_ranks)
        self.rejected = 0  # connections dropped before handing over a frame
        self._server = socket.create_server((host, 0), backlog=256)
        self._server.setblocking(False)
        self.address = f"{host}:{self._server.getsockname()[1]}"
        self._wake_read, self._wake_write = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._connections = {}  # socket -> _Connection, oldest first
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __repr__(self):  # never print the secret
        return f"AuthenticatedListener({self.address!r})"

    def start(self):
        """Serve connections on a background thread."""
        self._selector.register(self._server, selectors.EVENT_READ)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._thread.start()
        return self

    def close(self):
        """Stop serving (bounded wait) and close every connection not handed over."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_write.send(b"\0")
        if self._thread.is_alive():
            self._thread.join(timeout=self.timeout + 1)
        elif self._thread.ident is None:  # never started: nothing else will close these
            self._selector.close()
            self._server.close()
            self._wake_read.close()
        self._wake_write.close()

    # -- the serving thread -----------------------------------------------------------

    def _serve(self):
        try:
            while not self._stopping.is_set():
                for key, _ in self._selector.select(self._next_wait()):
                    self._handle(key.fileobj)
                self._drop_expired()
        finally:
            for conn in list(self._connections):
                self._drop(conn, rejected=False)
            self._selector.close()
            self._server.close()
            self._wake_read.close()

    def _handle(self, source):
        """Serve one ready socket; whatever goes wrong with a connection ends only that
        connection, never the listener."""
        if source is self._server:
            self._accept_some()
        elif source is not self._wake_read and source in self._connections:
            try:
                self._advance(source)
            except Exception:
                if source in self._connections:
                    self._drop(source)

    def _next_wait(self):
        now = time.monotonic()
        deadlines = [state.deadline - now for state in self._connections.values()]
        return max(0.0, min([0.5, *deadlines]))

    def _accept_some(self):
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors: free the oldest waiting one
                if not self._push_out_oldest():
                    time.sleep(0.01)
                return
            self._make_room()
            conn.setblocking(False)
            nonce = secrets.token_bytes(16)
            try:
                # Replies go out as several sends (length, parts, tag): without NODELAY the
                # last ones wait for the peer's delayed ACK, up to 40 ms each time.
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # 20 bytes into a fresh socket's empty buffer: always sent whole.
                conn.send(_CHALLENGE.pack(_MAGIC, nonce))
            except OSError:
                conn.close()
                self.rejected += 1
                continue
            self._connections[conn] = _Connection(nonce, time.monotonic() + self.auth_timeout)
            self._selector.register(conn, selectors.EVENT_READ)

    def _make_room(self):
        """Let a newcomer wait to authenticate: push out the oldest waiting connection if
        there are too many (a peer of the fit answers within a round trip, so it is never the
        oldest unless that many connections arrived in the meantime)."""
        waiting = sum(state.stage == "hello" for state in self._connections.values())
        if waiting >= self.max_unauthenticated:
            self._push_out_oldest()

    def _push_out_oldest(self):
        for conn, state in self._connections.items():  # oldest first
            if state.stage == "hello":
                self._drop(conn)
                return True
        return False

    def _advance(self, conn):
        state = self._connections[conn]
        view = memoryview(state.buffer)[state.received:]
        try:
            n = conn.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if n == 0:
            self._drop(conn)
            return
        state.received += n
        if state.stage != "hello":  # an authenticated peer has time while data keeps coming
            state.deadline = time.monotonic() + self.timeout
        if state.received < len(state.buffer):
            return
        try:
            self._next_stage(conn, state)
        except AuthenticationError:
            self._drop(conn)

    def _next_stage(self, conn, state):
        if state.stage == "hello":
            rank, tag = _HELLO.unpack(state.buffer)
            expected = hello_tag(self.secret, self.context, state.nonce, rank)
            if rank >= self.n_ranks or not hmac.compare_digest(expected, tag):
                raise AuthenticationError("the challenge's answer does not verify")
            state.sender, state.stage = rank, "length"
            state.deadline = time.monotonic() + self.timeout
            state.buffer, state.received = bytearray(LENGTH.size), 0
        elif state.stage == "length":
            (size,) = LENGTH.unpack(state.buffer)
            if not self.accept_size(size):
                raise AuthenticationError(f"a frame of {size} bytes is not allowed")
            state.stage, state.buffer, state.received = "frame", bytearray(size), 0
        else:
            self._hand_over(conn, state)

    def _hand_over(self, conn, state):
        self._selector.unregister(conn)
        del self._connections[conn]
        conn.setblocking(True)
        conn.settimeout(self.timeout)
        try:
            self.on_frame(conn, state.sender, state.nonce, state.buffer)
        except Exception:
            conn.close()
            self.rejected += 1

    def _drop_expired(self):
        now = time.monotonic()
        for conn in [c for c, state in self._connections.items() if state.deadline <= now]:
            self._drop(conn)

    def _drop(self, conn, rejected=True):
        self._selector.unregister(conn)
        del self._connections[conn]
        conn.close()
        if rejected:
            self.rejected += 1
