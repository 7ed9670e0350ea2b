"""A standing barrier job: the tasks of a fit take phase after phase from the driver.

A Spark job per phase costs each phase about 0.1 to 0.2 s on ``local[2]`` (the stage's
function built and shipped, the job scheduled, the tasks started). Where the executors can
reach this process (the ``"driver"`` rendezvous), the tasks of a fit therefore stay in one
barrier job: each connects to a channel on this process (authenticated like the gossip and
the rendezvous, ``_transport``), reads its shard once, then trains every phase it is sent
and sends its result back as raw arrays (``_phase_wire``), until the fit ends.

The retry guarantees are those of a job per phase. A task that dies fails the barrier job
(Spark stops its peers); the driver sees the connection close, raises the job's error (a
lost worker, or the task's own error), and the schedule reruns the phase from its starting
state in a new job. A phase whose last tasks are more than the straggler allowance behind
the first has its job cancelled by tag (``classic.cancel_tagged_jobs``, classic and Connect
alike) and is rerun as stalled.
"""

import contextlib
import dataclasses
import json
import secrets
import selectors
import threading
import time

from .._devices import spark_task_device
from .._gossip import PeerLost, parse_address
from .._phase_wire import (
    PLAN_FIELDS,
    PhaseMessageError,
    decode_phase,
    decode_result,
    encode_phase,
    encode_result,
    encode_stop,
)
from .._sync import straggler_allowance
from .._transport import (
    LENGTH,
    TAG_SIZE,
    AuthenticatedListener,
    AuthenticationError,
    connect,
    recv_exactly,
    send_frame,
    split_frame,
)
from .._worker import PhaseStalled, SyncPlan, run_worker
from .classic import cancel_tagged_jobs, tag_jobs, untag_jobs
from .data import read_shard, struct_schema, task_ranks
from .memory import watched_task
from .placement import RENDEZVOUS_CONF
from .shards import saved_shards

_CHANNEL = b"skdbn-phases"
_READY_LIMIT = 1024  # bytes of a task's first frame, tag included
# Bytes of a phase message a task accepts: a network of about a billion float64 parameters.
_PHASE_LIMIT = 1 << 34
# Seconds a task waits for its next phase before it leaves the job: longer than anything the
# driver does between two phases (consensus, checkpoint, validation).
_IDLE_SECONDS = 1800.0


class JobEnded(ConnectionError):
    """The standing job ended, or a task's connection closed, while a phase needed it."""


@dataclasses.dataclass(frozen=True)
class PhaseChannel:
    """Picklable task side of a standing job: where its channel is, and the fit's secret
    (never printed)."""

    address: str
    secret: bytes
    timeout: float

    def __repr__(self):
        return f"PhaseChannel({self.address!r})"


class StandingJob:
    """One barrier job whose ``n_tasks`` tasks train the phases this process sends them.

    Parameters
    ----------
    spark : SparkSession
        Classic or Connect.
    frame : DataFrame
        What the job maps: one partition per task.
    make_task : callable
        ``make_task(channel) -> function`` of ``mapInArrow`` for a ``PhaseChannel`` (see
        :func:`serve_phases`).
    n_tasks : int
    secret : bytes
        The fit's secret.
    timeout : float
        Seconds a single network wait may take; the least straggler allowance.
    host, bind : str
        The name the tasks reach this process by, and the address its channel listens on.
    profile : pyspark.resource.ResourceProfile, default=None
        The tasks' stage-level resources (one GPU each for ``device="cuda"``).
    """

    def __init__(self, spark, frame, make_task, n_tasks, secret, timeout, host, bind,
                 profile=None):
        self.spark = spark
        self._profile = profile
        self.n_tasks = n_tasks
        self.timeout = timeout
        self._secret = secret
        self._frame = frame
        self._listener = AuthenticatedListener(
            secret, _CHANNEL, n_tasks, lambda size: TAG_SIZE < size <= _READY_LIMIT,
            self._arrived, host=bind, timeout=timeout)
        port = self._listener.address.rsplit(":", 1)[1]
        self._task = make_task(PhaseChannel(f"{host}:{port}", secret, timeout))
        self._tag = f"skdbn-job-{secrets.token_hex(8)}"
        self._changed = threading.Condition()
        self._connections = {}  # rank -> (socket, nonce) of the task serving that rank
        self._ended = False
        self._error = None
        self._seq = 0
        self._in_phase = False  # a phase was sent and not all of its results are in
        self._cancelled = False  # this process cancelled the job
        self._closed = False
        self._thread = threading.Thread(target=self._run_job, name="skdbn-standing-job",
                                        daemon=True)

    def __repr__(self):  # never print the secret
        return f"StandingJob(n_tasks={self.n_tasks}, tag={self._tag!r})"

    def start(self):
        """Listen for the tasks and submit the job (from a thread of its own)."""
        self._listener.start()
        self._thread.start()
        return self

    def _run_job(self):
        try:
            tag_jobs(self.spark, self._tag)  # tags are per thread: this job's only
            self._frame.mapInArrow(self._task, struct_schema(_JOB_COLUMNS), barrier=True,
                                   profile=self._profile).toArrow()
        except BaseException as error:  # handed to the thread that waits
            self._error = error
        finally:
            with contextlib.suppress(Exception):
                untag_jobs(self.spark, self._tag)
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def _arrived(self, conn, rank, nonce, frame):
        """A task's first frame, on the listener's thread: it is ready for phases. The
        welcome it gets back proves to it that this end holds the secret too, before it
        accepts frames of a phase's size."""
        header = json.loads(bytes(split_frame(self._secret, nonce, frame)))
        if header != {"kind": "ready", "rank": rank}:
            raise ValueError("not a task's ready message")
        send_frame(conn, self._secret, nonce, [_welcome(rank)])
        with self._changed:
            if self._closed:  # too late: the task sees the connection close, and ends
                conn.close()
                return
            old = self._connections.pop(rank, None)
            if old is not None:
                old[0].close()
            self._connections[rank] = (conn, nonce)
            self._changed.notify_all()

    def train(self, phase, state, below, plan):
        """Send ``phase`` to every task and return their ``PhaseResult`` objects by rank.

        Raises the job's error when a task was lost or failed, ``PhaseStalled`` when the last
        tasks fall behind the first by more than the straggler allowance, and ``PeerLost``
        when a task does not connect in time; in every case the job is over.
        """
        self._wait_for_tasks()
        self._seq += 1
        fields = {name: getattr(plan, name) for name in PLAN_FIELDS}
        parts = encode_phase(self._seq, phase, state, below, fields)
        sent = time.monotonic()
        self._in_phase = True
        for rank in range(self.n_tasks):
            conn, nonce = self._connections[rank]
            try:
                send_frame(conn, self._secret, nonce, parts)
            except OSError as error:
                raise self._failure() from error
        results = self._collect(sent, state.params.size, state.params.dtype)
        self._in_phase = False
        return results

    def _wait_for_tasks(self):
        """Wait until every task has connected; the others get ``timeout`` seconds after the
        first did (a task slow to start), the first as long as the job waits for slots."""
        first = None
        with self._changed:
            while len(self._connections) < self.n_tasks and not self._ended:
                now = time.monotonic()
                if first is None and self._connections:
                    first = now
                if first is not None and now - first > self.timeout:
                    break
                self._changed.wait(0.5)
            missing, ended = self.n_tasks - len(self._connections), self._ended
        if not missing:
            return
        if ended:
            raise self._failure()
        self._interrupt()
        raise PeerLost(f"{missing} of {self.n_tasks} tasks had not connected {self.timeout:g} s "
                       "after the first did")

    def _collect(self, sent, params_size, dtype):
        results = {}
        first = allowance = None
        with selectors.DefaultSelector() as selector:
            for rank, (conn, _) in self._connections.items():
                selector.register(conn, selectors.EVENT_READ, rank)
            while len(results) < self.n_tasks:
                if first is not None and time.monotonic() - first > allowance:
                    self._interrupt()
                    raise PhaseStalled(
                        f"{self.n_tasks - len(results)} of {self.n_tasks} tasks had not "
                        f"finished the phase {allowance:.0f}s after the first did (a stopped "
                        "or hung worker); the phase's job was interrupted")
                if self._ended:
                    raise self._failure()
                for key, _ in selector.select(0.5):
                    selector.unregister(key.fileobj)
                    results[key.data] = self._receive(key.data, params_size, dtype)
                    if first is None:
                        first = time.monotonic()
                        allowance = straggler_allowance(first - sent, self.timeout)
        return [results[rank] for rank in range(self.n_tasks)]

    def _receive(self, rank, params_size, dtype):
        conn, nonce = self._connections[rank]
        limit = TAG_SIZE + (1 << 24) + 3 * params_size * 8
        try:
            (size,) = LENGTH.unpack(recv_exactly(conn, LENGTH.size))
            frame = recv_exactly(conn, size) if TAG_SIZE < size <= limit else None
        except OSError as error:  # closed (the task is gone) or timed out (it stopped)
            raise self._failure() from error
        try:
            if frame is None:
                raise PhaseMessageError(f"task {rank} announced a result of {size} bytes, "
                                        f"more than a result of this phase ({limit})")
            return decode_result(split_frame(self._secret, nonce, frame), self._seq, rank,
                                 params_size, dtype)
        except ValueError:  # not a result of this fit's: nothing more of this job is trusted
            self._interrupt()
            raise

    def _failure(self):
        """The error to raise for a job that ended, or a task whose connection broke: the
        job's own error once it has failed (at most ``timeout`` seconds from now)."""
        self._thread.join(self.timeout)
        if self._thread.is_alive():
            self._interrupt()
            self._thread.join(self.timeout)
        if self._cancelled:  # a task stopped answering, and its job had to be cancelled
            return JobEnded(f"a task stopped answering for {self.timeout:g} s; the phase's "
                            "job was cancelled")
        if self._error is not None:
            return self._error
        return JobEnded("the phases' Spark job ended before the phase did (a task left it)")

    def _interrupt(self):
        self._cancelled = True
        with contextlib.suppress(Exception):  # a stopped session has no job left to stop
            cancel_tagged_jobs(self.spark, self._tag)

    def close(self):
        """End the job, wait for its end (at most ``timeout``, then it is cancelled), and stop
        listening; never raises. Between phases the tasks are told to stop; a phase still
        running (the fit was interrupted), or a job whose tasks have not all connected, is
        cancelled instead."""
        with self._changed:
            self._closed = True
            connections, self._connections = dict(self._connections), {}
        if self._in_phase or len(connections) < self.n_tasks:
            self._interrupt()  # a phase cut short, or tasks that have not all come
        else:
            stop = encode_stop(self._seq + 1)
            for conn, nonce in connections.values():
                with contextlib.suppress(OSError):
                    send_frame(conn, self._secret, nonce, stop)
        self._wind_down(connections)

    def _wind_down(self, connections):
        if self._thread.ident is not None:
            self._thread.join(self.timeout)
            if self._thread.is_alive():
                self._interrupt()
                self._thread.join(self.timeout)
        for conn, _ in connections.values():
            conn.close()
        self._listener.close()


_JOB_COLUMNS = (("rank", "int"), ("phases", "long"))


def serve_phases(channel, layout, rendezvous, rerun, batches):
    """A task of the standing job: connect, then train every phase the driver sends until it
    says stop (or goes away); one row at the end (rank, phases trained). ``rerun``: the job
    reruns a phase that lost a worker (see ``memory.watched_task``)."""
    import pyarrow as pa
    from pyspark import BarrierTaskContext

    context = BarrierTaskContext.get()
    rank = context.partitionId()
    infos = context.getTaskInfos()
    ranks = task_ranks(rank, len(infos), len(layout.rows))
    with watched_task(channel.secret, layout, ranks, rerun):
        trained = _serve(channel, TaskShard(batches, ranks, layout), rendezvous, context,
                         infos[rank].address.rsplit(":", 1)[0])
    yield pa.RecordBatch.from_pydict({"rank": pa.array([rank], pa.int32()),
                                      "phases": pa.array([trained], pa.int64())})


def _serve(channel, shard, rendezvous, context, host):
    rank = context.partitionId()
    blas_threads = max(1, int(context.cpus()))  # spark.task.cpus, or the stage's profile
    resources = context.resources()
    trained = 0
    conn, nonce = _connect_to_driver(channel, rank)
    with conn:
        send_frame(conn, channel.secret, nonce,
                   [json.dumps({"kind": "ready", "rank": rank}).encode()])
        _check_welcome(conn, nonce, channel, rank)
        seq = 0
        while (order := _next_order(conn, nonce, channel, seq)) is not None:
            seq = order.seq
            plan = SyncPlan(secret=channel.secret, blas_threads=blas_threads, **order.plan)
            result = run_worker(rank, order.phase, shard.read, order.state, order.below, plan,
                                rendezvous, host=host,
                                device=spark_task_device(order.phase.device, resources))
            # The driver reads the tasks' results one after another, and its straggler
            # allowance bounds how long it waits: the send itself needs no tighter bound.
            conn.settimeout(_IDLE_SECONDS)
            send_frame(conn, channel.secret, nonce, encode_result(order.seq, rank, result))
            trained += 1
    shard.drain()
    return trained


def _connect_to_driver(channel, rank):
    try:
        return connect(parse_address(channel.address), channel.secret, _CHANNEL, rank,
                       channel.timeout)
    except OSError as exc:
        raise ConnectionError(
            f"task {rank} could not reach the driver's phase channel at {channel.address} "
            f"({exc}); if executors cannot open connections to the driver, set the Spark "
            f"configuration {RENDEZVOUS_CONF}=barrier") from exc


def _welcome(rank):
    return json.dumps({"kind": "welcome", "rank": rank}).encode()


def _check_welcome(conn, nonce, channel, rank):
    """Read the driver's answer to this task's ready message: a small frame tagged under the
    secret, without which nothing that claims to be the driver is believed."""
    (size,) = LENGTH.unpack(recv_exactly(conn, LENGTH.size))
    if not TAG_SIZE < size <= _READY_LIMIT:
        raise ConnectionError(f"the phase channel's welcome has {size} bytes")
    try:
        welcome = bytes(split_frame(channel.secret, nonce, recv_exactly(conn, size)))
    except AuthenticationError as exc:
        raise ConnectionError("the phase channel does not hold this fit's secret") from exc
    if welcome != _welcome(rank):
        raise ConnectionError("the phase channel's welcome is not one")


def _next_order(conn, nonce, channel, last_seq):
    """The next ``PhaseOrder`` from the driver, or None: told to stop, the driver gone, or no
    phase for ``_IDLE_SECONDS``. A phase whose sequence number is not past ``last_seq`` (a
    frame sent again) is refused."""
    conn.settimeout(_IDLE_SECONDS)
    try:
        (size,) = LENGTH.unpack(recv_exactly(conn, LENGTH.size))
    except OSError:
        return None
    if not TAG_SIZE < size <= _PHASE_LIMIT:
        raise ConnectionError(f"a phase message of {size} bytes")
    conn.settimeout(channel.timeout)
    order = decode_phase(split_frame(channel.secret, nonce, recv_exactly(conn, size)))
    if order is not None and order.seq <= last_seq:
        raise ConnectionError(f"phase {order.seq} after phase {last_seq}: a frame sent again")
    return order


class TaskShard:
    """A task's shard, read once for all of its phases (one, in a job per phase): its
    partition of the cached training rows, or the shard files its one input row stands
    for."""

    def __init__(self, batches, ranks, layout):
        self._batches = batches
        self._ranks = ranks
        self._layout = layout
        self._shard = None

    def read(self):
        """The shard (run by ``run_worker`` after the rendezvous, timed as "read")."""
        if self._shard is None:
            if self._layout.shard_dir is None:
                self._shard = read_shard(self._batches, self._ranks, self._layout)
            else:
                self._shard = saved_shards(self._ranks, self._layout)
        return self._shard

    def drain(self):
        """Read what is left of the task's input, so that Spark can reuse its worker."""
        for _ in self._batches:
            pass
