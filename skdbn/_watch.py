"""What a worker records of its phase, and how it tells the driver while the phase runs.

Standard library and numpy only (no Spark, no display). A worker keeps a ``WorkerLog``: its
counters (samples trained, epochs ended, messages sent and merged, seconds spent waiting for
peers), the latest per-epoch figure, and a trace of its progress and of its drift from the
states it merged, sampled in time. The log's summary comes back in the worker's result; while
the phase runs a ``ProgressReporter`` thread sends snapshots of it, either to a function in the
same process or, over an authenticated connection, to the driver's ``ProgressListener``.

Progress is best effort: a snapshot that cannot be delivered is dropped, and a reporter that
cannot reach the driver stops trying. Training never waits for it.
"""

import math
import threading
import time

import numpy as np

from ._gossip import parse_address
from ._transport import TAG_SIZE, AuthenticatedListener, connect, send_frame, split_frame

# Order of the values in a snapshot (float64 each).
SNAPSHOT_FIELDS = ("samples", "epochs", "figure", "messages_sent", "messages_merged",
                   "seconds_waiting", "drift")
# Seconds between two points of a worker's trace, and between two drift measurements: a
# drift costs two passes over the parameters, so it is measured at most this often.
TRACE_SECONDS = 0.2
# Points a worker's trace keeps per phase; beyond it every other point is dropped and the
# spacing doubles, so a long phase keeps an even picture of its whole length.
MAX_TRACE_POINTS = 256
# Seconds between two snapshots sent to the driver (an epoch's end sends one at once, but
# never sooner than MIN_REPORT_SECONDS after the last: tiny epochs must not flood the driver).
REPORT_SECONDS = 0.5
MIN_REPORT_SECONDS = 0.1


class WorkerLog:
    """Counters and trace of one worker's phase, written by its training thread.

    Attributes
    ----------
    samples : int
        Samples trained so far.
    ended : tuple of (int, float)
        Epochs of the phase ended so far, as the worker's synchronizer counts them, and the
        training figure of the last of them (NaN before the first); replaced whole.
    messages_sent, messages_merged : int
        Parameter states sent to peers and merged from them.
    seconds_waiting : float
        Time spent waiting for peers (synchronous averages, the end of the phase).
    trace : list of tuple
        ``(seconds since the phase began, samples, drift)``: a point at most every
        ``TRACE_SECONDS`` while training (drift NaN), and one at every drift measurement.
    """

    def __init__(self):
        self.started = time.monotonic()
        self.samples = 0
        self.ended = (0, math.nan)
        self.messages_sent = 0
        self.messages_merged = 0
        self.seconds_waiting = 0.0
        self.drift = math.nan
        self.trace = []
        self.epoch_ended = threading.Event()
        self._trace_spacing = TRACE_SECONDS
        self._next_point = self.started
        self._next_drift = self.started

    def trained(self, n_rows):
        """Count a minibatch of ``n_rows`` samples."""
        self.samples += n_rows
        now = time.monotonic()
        if now >= self._next_point:
            self._add_point(now)

    def ended_epochs(self, epochs, figure):
        """The synchronizer's epoch count reached ``epochs``; ``figure`` is the last one's."""
        self.ended = (epochs, float(figure))
        self.epoch_ended.set()

    def sent(self, n_messages=1):
        """Count parameter states sent to peers."""
        self.messages_sent += n_messages

    def merged(self, n_messages):
        """Count parameter states merged from peers."""
        self.messages_merged += n_messages

    def waited(self, seconds):
        """Count time spent waiting for peers."""
        self.seconds_waiting += seconds

    def drift_is_due(self):
        """Whether the next exchange should measure the drift (at most once per spacing of
        the trace, ``TRACE_SECONDS`` at first)."""
        return time.monotonic() >= self._next_drift

    def record_drift(self, own, others):
        """Record the relative distance between this worker's parameters ``own`` and
        ``others``, the mean of the states it merges (the consensus, for synchronous
        averaging): ``||own - others|| / ||others||``."""
        scale = float(np.linalg.norm(others))
        self.drift = float(np.linalg.norm(own - others)) / scale if scale > 0 else math.nan
        now = time.monotonic()
        self._next_drift = now + self._trace_spacing
        self._add_point(now, self.drift)

    def snapshot(self):
        """The values of ``SNAPSHOT_FIELDS`` as a float64 array."""
        epochs, figure = self.ended
        return np.array([self.samples, epochs, figure, self.messages_sent,
                         self.messages_merged, self.seconds_waiting, self.drift],
                        dtype=np.float64)

    def summary(self):
        """The exchange counters and the trace, as plain Python numbers (drift NaN where none
        was measured: Python's json and pickle carry it); the samples travel as the result's
        ``samples_trained``."""
        return {
            "messages_sent": int(self.messages_sent),
            "messages_merged": int(self.messages_merged),
            "seconds_waiting": float(self.seconds_waiting),
            "trace": [[float(t), int(n), float(d)] for t, n, d in self.trace],
        }

    def _add_point(self, now, drift=math.nan):
        self.trace.append((now - self.started, self.samples, drift))
        self._next_point = now + self._trace_spacing
        if len(self.trace) > MAX_TRACE_POINTS:
            self.trace = self.trace[::2]
            self._trace_spacing *= 2


class ProgressReporter:
    """Sends ``log.snapshot()`` through ``send`` every ``interval`` seconds and at every
    epoch's end, on a daemon thread, from ``start()`` until ``stop()`` (which sends the last
    one). ``send(values)`` returning False, or raising, ends the reporting."""

    def __init__(self, log, send, interval=REPORT_SECONDS):
        self.log = log
        self.send = send
        self.interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._working = True

    def start(self):
        """Start reporting."""
        self._thread.start()
        return self

    def stop(self):
        """Stop reporting (bounded wait) after one last snapshot, unless the reporter is
        still stuck in a send (an unreachable driver): training does not wait for it."""
        self._stopping.set()
        self.log.epoch_ended.set()
        self._thread.join(timeout=1.0)
        if not self._thread.is_alive():
            self._deliver()

    def _run(self):
        while not self._stopping.is_set() and self._working:
            self.log.epoch_ended.wait(self.interval)
            self.log.epoch_ended.clear()
            if self._stopping.is_set():
                return
            self._deliver()
            self._stopping.wait(min(MIN_REPORT_SECONDS, self.interval))

    def _deliver(self):
        if not self._working:
            return
        try:
            self._working = self.send(self.log.snapshot()) is not False
        except Exception:
            self._working = False


def progress_context(phase_key):
    """What a progress connection is for, bound into its authentication (see
    ``AuthenticatedListener``): a worker of another phase cannot report into this one."""
    return b"skdbn-progress\0" + int(phase_key).to_bytes(8, "little")


class ProgressClient:
    """``send(values)`` for a worker whose driver listens at ``address`` ("host:port"): one
    short authenticated connection per snapshot, each wait bounded by ``timeout``."""

    def __init__(self, address, secret, phase_key, rank, timeout=2.0):
        self.address = parse_address(address)
        self.secret = secret
        self.context = progress_context(phase_key)
        self.rank = rank
        self.timeout = timeout

    def __repr__(self):  # never print the secret
        return f"ProgressClient({self.address!r}, rank={self.rank})"

    def __call__(self, values):
        conn, nonce = connect(self.address, self.secret, self.context, self.rank, self.timeout)
        with conn:
            send_frame(conn, self.secret, nonce, [np.ascontiguousarray(values, "<f8").tobytes()])
        return True


def open_progress_listener(secret, phase_key, n_workers, monitor, host="127.0.0.1",
                           advertised_host=None):
    """A started ``ProgressListener`` feeding ``monitor.update`` on ``host``, its ``address``
    naming ``advertised_host`` (the name workers reach it by; default ``host``); or None when
    there is no monitor or no socket can be opened (progress is best effort: the phase runs
    without it)."""
    if monitor is None:
        return None
    try:
        listener = ProgressListener(secret, phase_key, n_workers, monitor.update, host=host)
    except OSError:
        return None
    port = listener.address.rsplit(":", 1)[1]
    listener.address = f"{advertised_host or host}:{port}"
    return listener.start()


class ProgressListener:
    """The driver's end: listens on ``host`` for the snapshots of a phase's ``n_workers``
    workers and calls ``on_snapshot(rank, values)`` (on its own thread) for each one that
    authenticates. Anything else is dropped, as by every listener of a fit."""

    def __init__(self, secret, phase_key, n_workers, on_snapshot, host="127.0.0.1",
                 timeout=2.0):
        self.on_snapshot = on_snapshot
        self._size = len(SNAPSHOT_FIELDS) * 8
        self._secret = secret
        self._listener = AuthenticatedListener(
            secret, progress_context(phase_key), n_workers,
            lambda size: size == self._size + TAG_SIZE, self._receive, host=host,
            timeout=timeout)
        self.address = self._listener.address

    def __repr__(self):  # never print the secret
        return f"ProgressListener({self.address!r})"

    def start(self):
        """Listen on a background thread."""
        self._listener.start()
        return self

    def close(self):
        """Stop listening (bounded wait)."""
        self._listener.close()

    def _receive(self, conn, sender, nonce, frame):
        with conn:
            body = split_frame(self._secret, nonce, frame)
        values = np.frombuffer(body, dtype="<f8").astype(np.float64)
        self.on_snapshot(sender, values)


# Rows of a fit's worker trace at most (a fit of many short phases, e.g. fine-tuning with
# early stopping, would otherwise grow it with every epoch); beyond it every other row is
# dropped.
MAX_FIT_TRACE_ROWS = 20_000


class FitRecord:
    """The per-worker diagnostics of a fit's phases, gathered on the driver as rows (dicts)
    that become the estimator's ``worker_stats_`` and ``worker_trace_``."""

    def __init__(self):
        self.started = time.time()
        self.workers = []
        self.trace = []
        self._phases = 0

    def add(self, stage, results):
        """Record a finished phase of the stage named ``stage`` from its workers' results."""
        phase = self._phases
        self._phases += 1
        for worker, result in enumerate(results):
            found = result.diagnostics
            offset = result.seconds.get("started", self.started) - self.started
            self.workers.append({
                "stage": stage, "phase": phase, "worker": worker,
                "samples": int(result.samples_trained),
                "messages_sent": found.get("messages_sent", 0),
                "messages_merged": found.get("messages_merged", 0),
                "seconds_waiting": found.get("seconds_waiting", 0.0),
                "seconds_reading": float(result.seconds.get("read", 0.0)),
                "seconds_training": float(result.seconds.get("train", 0.0)),
                "started": offset,
                "device": found.get("device", "cpu"),
                "address": found.get("address"),
            })
            for seconds, samples, drift in found.get("trace", []):
                self.trace.append({
                    "stage": stage, "phase": phase, "worker": worker,
                    "seconds": offset + seconds, "samples": samples,
                    "drift": drift,
                })
        if len(self.trace) > MAX_FIT_TRACE_ROWS:
            self.trace = self.trace[::2]
