"""How a worker keeps its copy of the network together with its peers within a phase.

A synchronizer owns the phase's work budget and the exchanges. The training loop asks
``keep_going()`` before every minibatch, calls ``after_minibatch(n)`` after it, and reads
``epochs_done()`` to know when an epoch of the phase has ended; ``finish()`` ends the phase and
returns the worker's push-sum weight.

- ``LocalBudget``: one worker, or ``sync="none"``: ``epochs x shard`` samples, no exchange.
- ``GossipSync``: asynchronous push-sum. The budget is global (``epochs x all samples``) and so
  are its epochs; each message carries the sender's knowledge of everyone's progress, so a slow
  worker does fewer minibatches and nobody waits for it. The training thread never touches a
  socket.
- ``AverageSync``: the synchronous, deterministic baseline. Every worker runs the same number
  of minibatches and every ``sync_every`` of them all workers exchange their full state and take
  the exact weighted average, summed in rank order so that all get identical bits.

Where nobody outside the phase watches its workers (a Spark Connect session of a cluster,
whose client the tasks cannot reach), the workers watch each other (``watch_since``): a worker
that has finished waits for every peer to finish within the straggler allowance, and raises
``PeersStalled`` if one has not. Its task fails, Spark ends the barrier stage and its other
tasks, and the phase is rerun.
"""

import math
import threading
import time

import numpy as np

from ._gossip import KIND_DONE, KIND_PROGRESS, KIND_STATE, PeerLost, PushSum, encode


class PeersStalled(PeerLost):
    """Peers of a worker that had finished its phase had not finished theirs within the
    straggler allowance (stopped or hung); the phase can be run again."""


def straggler_allowance(first_finished_after, timeout):
    """Seconds the other workers of a phase may take after the first has finished, which
    took ``first_finished_after`` seconds: twice that, and at least ``timeout``."""
    return max(timeout, 2.0 * first_finished_after)


def _send_to_peers(sync, frame):
    """Queue ``frame`` for every peer of ``sync``'s worker (never waits for the network)."""
    for peer in range(sync.n_workers):
        if peer != sync.rank:
            sync.node.send(peer, frame)


def _await_peers_done(sync, finished):
    """Wait, merging what arrives (``sync._merge``), until ``finished()`` (the set of peers
    done) holds every peer of ``sync``, or the straggler allowance after this worker's phase
    (begun at ``sync.watch_since``, its rendezvous and read included, as the driver's watch
    counts them) has passed; then raise ``PeersStalled`` for the peers missing."""
    now = time.monotonic()
    allowance = straggler_allowance(now - sync.watch_since, sync.timeout)
    deadline = now + allowance
    peers = set(range(sync.n_workers)) - {sync.rank}
    while not peers <= finished() and time.monotonic() < deadline:
        sync.node.wait_for(bool, max(0.0, deadline - time.monotonic()))
        sync._merge(sync.node.drain())
    missing = sorted(peers - finished())
    if missing:
        raise PeersStalled(
            f"worker {sync.rank} finished its phase, but worker(s) {missing} had not finished "
            f"theirs {allowance:.0f}s later (stopped or hung)")

# Frames a worker may have queued or in flight before it skips a push: the network is never
# allowed to fall behind training by more than this.
MAX_PUSHES_IN_FLIGHT = 2

# Bound on the gossip learning-rate factor ``fair weight / own weight``: with pushes on a
# common pace a weight stays within a factor 2 of the fair one, so the bound only acts when a
# peer is silent.
MAX_STEP_SCALE = 2.0
# Share of a worker's time that parameter exchanges may take: a worker waits at least
# push_seconds / EXCHANGE_SHARE between two pushes (with one worker per core, the hashing,
# copying and merging of a push take CPU from training on both ends).
EXCHANGE_SHARE = 0.03

class LocalBudget:
    """``epochs`` passes of ``epoch_samples`` samples on this worker, and no exchange."""

    def __init__(self, epochs, epoch_samples):
        self.epochs = epochs
        self.epoch_samples = epoch_samples
        self.done = 0
        self.state = None

    def begin(self, params, weight, log=None):
        """Start the phase with the worker's parameter vector (updated in place); ``log``
        (a ``WorkerLog``) is not needed without exchanges."""
        self.state = PushSum(params, weight)

    def keep_going(self):
        """Whether another minibatch is wanted."""
        return self.done < self.epochs * self.epoch_samples

    def after_minibatch(self, n_rows):
        """Count a finished minibatch of ``n_rows`` samples."""
        self.done += n_rows

    def epochs_done(self):
        """Epochs of the phase completed so far."""
        return min(self.epochs, self.done // self.epoch_samples)

    def step_scale(self):
        """Factor on the learning rate of the next minibatch (see ``GossipSync``)."""
        return 1.0

    def finish(self):
        """End the phase; returns this worker's weight."""
        return self.state.weight

    @property
    def samples_trained(self):
        """Samples this worker has trained on in this phase."""
        return self.done


class PeerProgress:
    """What one worker knows of every worker's progress in a phase, and its estimate of now.

    Reports are lower bounds: the progress a peer sent itself (a *direct* report, stamped with
    its arrival time) or relayed from another peer's knowledge. A peer is extrapolated from its
    last direct report at its own measured speed in samples per second; until a direct
    report has arrived it is assumed to be as fast as this worker. A finished peer's last
    report is exact. Speeds are measured on this worker's clock only, so no clocks need agree.

    Parameters
    ----------
    n_workers : int
    rank : int
        This worker's index.
    start : float
        ``time.monotonic()`` at the start of the phase.
    """

    def __init__(self, n_workers, rank, start):
        self.rank = rank
        self.start = start
        self.known = np.zeros(n_workers, dtype=np.uint64)
        self._direct = np.zeros(n_workers)
        self._direct_time = np.full(n_workers, start)
        self._speed = np.full(n_workers, np.nan)
        self.finished = set()

    @property
    def own(self):
        """Samples this worker has trained on."""
        return int(self.known[self.rank])

    def count(self, n_rows):
        """Add ``n_rows`` samples to this worker's own progress."""
        self.known[self.rank] += n_rows

    def learn(self, sender, reported, received, final=False):
        """Take in the progress vector ``reported`` by ``sender``, arrived at ``received``."""
        for peer, value in enumerate(reported):
            if peer != self.rank and value > self.known[peer]:
                self.known[peer] = value
        value = float(reported[sender])
        # The first report measures the speed since the phase started (workers start together,
        # after the handshake); later ones since the previous report.
        elapsed = received - self._direct_time[sender]
        if value > self._direct[sender] and elapsed > 1e-3:
            speed = (value - self._direct[sender]) / elapsed
            previous = self._speed[sender]
            self._speed[sender] = speed if np.isnan(previous) else 0.5 * (previous + speed)
        if value >= self._direct[sender]:
            self._direct[sender], self._direct_time[sender] = value, received
        if final:
            self.finished.add(sender)

    def estimated_total(self, now):
        """Samples trained by all workers by ``now``: own exactly, each peer extrapolated."""
        own = self.own
        own_speed = own / max(now - self.start, 1e-6)
        total = float(own)
        for peer, known in enumerate(self.known):
            if peer == self.rank:
                continue
            if peer in self.finished:
                total += float(known)
                continue
            speed = own_speed if np.isnan(self._speed[peer]) else self._speed[peer]
            extrapolated = self._direct[peer] + speed * (now - self._direct_time[peer])
            total += max(float(known), extrapolated)
        return total


def exponential_graph_peer(rank, n_workers, round_index):
    """The peer ``rank`` pushes to in round ``round_index``: ``rank + 2**k`` (mod n) with k
    cycling through ``0 .. ceil(log2 n) - 1``.

    Every worker then receives exactly one push per round, so push-sum weights stay equal while
    workers keep pace, and information reaches all workers within ``log2 n`` rounds (the
    time-varying exponential graph of Assran et al. 2019). Random peers would leave some
    workers with several pushes in a round and others with none, and a worker with a small
    weight counts little in the phase's consensus however much it has trained.
    """
    n_offsets = max(1, math.ceil(math.log2(n_workers)))
    return (rank + 2 ** (round_index % n_offsets)) % n_workers


class GossipSync:
    """Asynchronous push-sum gossip over a ``GossipNode`` with a global sample budget.

    Parameters
    ----------
    node : GossipNode
        Started transport of this worker.
    epochs : int
        Epochs of the phase.
    epoch_samples : int
        Samples of one epoch over all workers (the whole training set).
    sync_every : int
        Minibatches of an average worker between two exchanges.
    batch_size : int
        Rows of a minibatch.
    timeout : float
        Bound on the end-of-phase wait for peers.
    watch_since : float or None, default=None
        Watch the peers (``time.monotonic()`` when this worker's phase began, before its
        rendezvous): raise ``PeersStalled`` at the end of the phase if a peer has not finished
        within the straggler allowance, instead of ending without it after ``timeout``.

    Notes
    -----
    A worker exchanges whenever the estimated global progress has grown by ``n_workers x
    sync_every`` minibatches since its last exchange, not after ``sync_every`` of its own: with
    workers of equal speed that is the same, and a slow worker still pushes as often as a fast
    one. Push-sum gives a worker's later updates a share of the consensus proportional to its
    weight, and every push halves the weight, so counting its own minibatches would leave the
    worker that trains the most with the least say.
    """

    def __init__(self, node, epochs, epoch_samples, sync_every, batch_size, timeout,
                 watch_since=None):
        self.node = node
        self.watch_since = watch_since
        self.rank = node.rank
        self.n_workers = node.spec.n_workers
        self.epochs = epochs
        self.epoch_samples = epoch_samples
        self.target = epochs * epoch_samples
        self.fair_weight = epoch_samples / self.n_workers  # the weights sum to the samples
        self.sync_every = sync_every
        self.round_samples = self.n_workers * sync_every * batch_size
        self.timeout = timeout
        self.progress = None
        self._estimate = 0.0  # the last estimated_total(), reused within a minibatch
        self.minibatches = 0
        self.pushes = 0
        self._last_exchange = 0.0
        self._last_push = 0.0
        self._returned = []
        self._returned_lock = threading.Lock()
        self.state = None

    def begin(self, params, weight, log):
        """Start the phase with the worker's parameter vector (updated in place); exchanges
        and waits are counted in ``log`` (a ``WorkerLog``)."""
        self.state = PushSum(params, weight)
        self.progress = PeerProgress(self.n_workers, self.rank, time.monotonic())
        self.log = log

    def keep_going(self):
        """Whether the estimated global progress is still below the budget.

        Whatever has arrived is merged first: a peer's progress (and above all a finished
        peer's exact count) changes the estimate, and mixing early costs nothing extra.
        """
        if self.node.has_mail():
            self._merge(self.node.drain())
        return self.estimated_total() < self.target

    def estimated_total(self):
        """Samples trained by all workers so far (see ``PeerProgress``)."""
        self._estimate = self.progress.estimated_total(time.monotonic())
        return self._estimate

    def epochs_done(self):
        """Epochs of the phase completed so far by all workers together, by the estimate of
        the last ``keep_going`` or ``after_minibatch``."""
        return min(self.epochs, int(self._estimate // self.epoch_samples))

    def step_scale(self):
        """Factor on the learning rate of the next minibatch: the fair weight over ours.

        The consensus counts an update in proportion to the weight its worker held when it
        made it, and a worker holds half its weight just after a push. Scaling the step by
        ``fair / weight`` makes every minibatch of every worker count ``1 / n_workers``, as in
        synchronous averaging (stochastic gradient push, Assran et al. 2019: the step updates
        the push-sum numerator). The factor is bounded so that a worker that has pushed
        several times without hearing back does not take a reckless step.
        """
        return min(MAX_STEP_SCALE, max(1 / MAX_STEP_SCALE, self.fair_weight / self.state.weight))

    def after_minibatch(self, n_rows):
        """Count the minibatch, and push at every exchange point."""
        self.progress.count(n_rows)
        self.minibatches += 1
        if self.minibatches == 1:
            self._announce_progress()
        total = self.estimated_total()
        if total - self._last_exchange >= self.round_samples and self._push_is_due():
            self._last_exchange = total
            self._push()

    def _push_is_due(self):
        """Whether enough time has passed since the last push for its cost to stay within
        ``EXCHANGE_SHARE`` (always, until a push has been timed)."""
        cost = self.node.push_seconds
        return cost is None or time.monotonic() - self._last_push >= cost / EXCHANGE_SHARE

    def _announce_progress(self):
        # Tells every peer this worker's speed early: until they hear from it they assume it
        # is as fast as they are, and in a short phase a fast worker would otherwise stop at
        # its equal share and wait for a slow one.
        frame = encode(self.node.spec, KIND_PROGRESS, self.rank, self.minibatches, 1.0,
                       self.progress.known)
        _send_to_peers(self, frame)

    def _push(self):
        if self.node.pending() >= MAX_PUSHES_IN_FLIGHT:  # never wait for the network
            return
        if self.state.weight < self.fair_weight * (1 - 1e-9):
            # Pushing only from at least the fair weight keeps every weight above half of
            # it, so ``step_scale`` stays within [1/2, 2] and is never clipped for two
            # workers; a worker that pushed last round waits to be pushed to first.
            return
        peer = exponential_graph_peer(self.rank, self.n_workers, self.pushes)
        self.pushes += 1
        self._last_push = time.monotonic()
        values, weight = self.state.split()
        frame = encode(self.node.spec, KIND_STATE, self.rank, self.minibatches, weight,
                       self.progress.known, values, copy=False)
        self.node.send(peer, frame, on_failure=lambda: self._give_back(values, weight))
        self.log.sent()

    def _give_back(self, values, weight):
        # An undelivered push returns its weight to the sender, so none is lost.
        with self._returned_lock:
            self._returned.append((values, weight))

    def _merge(self, messages):
        incoming = []
        for message in messages:
            self.progress.learn(message.sender, message.progress, message.received,
                                final=message.kind == KIND_DONE)
            if message.kind == KIND_STATE:
                incoming.append((message.values, message.weight))
        if incoming:
            self.log.merged(len(incoming))
            if self.log.drift_is_due():
                self.log.record_drift(self.state.current(), _weighted_mean(incoming))
        with self._returned_lock:
            incoming += self._returned
            self._returned = []
        self.state.merge(incoming)

    def finish(self):
        """Deliver what is queued, tell every peer this worker is done (with its exact final
        count), and merge everything peers send until each of them is done too (or the
        timeout passes; watching the peers, the straggler allowance, then
        ``PeersStalled``)."""
        self.node.flush(self.timeout)
        self._merge(self.node.drain())
        done = encode(self.node.spec, KIND_DONE, self.rank, self.minibatches, 1.0,
                      self.progress.known)
        _send_to_peers(self, done)
        began = time.monotonic()
        if self.watch_since is not None:
            _await_peers_done(self, lambda: self.progress.finished)
        deadline = began + self.timeout
        peers = set(range(self.n_workers)) - {self.rank}
        while not peers <= self.progress.finished and time.monotonic() < deadline:
            self.node.wait_for(bool, deadline - time.monotonic())
            self._merge(self.node.drain())
        self.node.flush(self.timeout)
        self._merge([])
        self.log.waited(time.monotonic() - began)
        return self.state.weight


def _weighted_mean(states):
    """The mean of ``[(values, weight), ...]`` weighted by the weights, summed in the order
    given (so the same list gives the same bits on every worker)."""
    total = sum(weight for _, weight in states)
    mean = (states[0][1] / total) * states[0][0]
    for values, weight in states[1:]:
        mean += (weight / total) * values
    return mean


class AverageSync:
    """Synchronous exact averaging every ``sync_every`` minibatches (deterministic).

    Parameters
    ----------
    node, epochs
        As for ``GossipSync``: this worker's started transport, the phase's epochs.
    n_minibatches : int
        Minibatches every worker runs in this phase.
    sync_every : int
        Minibatches between two exact averages; the phase always ends with one.
    timeout : float
        Bound on each wait for the peers' states.
    watch_since : float or None, default=None
        Watch the peers (as for ``GossipSync``): at the end of the phase, tell every peer
        this worker is done and raise ``PeersStalled`` if a peer has not said so within the
        straggler allowance.
    """

    def __init__(self, node, epochs, n_minibatches, sync_every, timeout, watch_since=None):
        self.node = node
        self.watch_since = watch_since
        self._done = set()  # peers that said they finished the phase
        self.epochs = epochs
        self.rank = node.rank
        self.n_workers = node.spec.n_workers
        self.n_minibatches = n_minibatches
        self.sync_every = sync_every
        self.timeout = timeout
        self.minibatches = 0
        self._early = []
        self._absent = set()  # peers that missed a deadline: not waited for again this phase
        self.state = None

    def begin(self, params, weight, log):
        """Start the phase with the worker's parameter vector (updated in place); exchanges
        and waits are counted in ``log`` (a ``WorkerLog``)."""
        self.state = PushSum(params, weight)
        self.log = log

    def keep_going(self):
        """Whether this worker's share of minibatches is not done yet."""
        return self.minibatches < self.n_minibatches

    def after_minibatch(self, n_rows):
        """Count the minibatch and average with all peers at every sync point."""
        self.minibatches += 1
        if self.minibatches % self.sync_every == 0 or self.minibatches == self.n_minibatches:
            self._average(self.minibatches)

    def epochs_done(self):
        """Epochs of the phase completed so far (the same on every worker)."""
        return self.minibatches * self.epochs // self.n_minibatches

    def step_scale(self):
        """Factor on the learning rate of the next minibatch: 1, weights stay equal."""
        return 1.0

    def _average(self, step):
        frame = encode(self.node.spec, KIND_STATE, self.rank, step, self.state.weight,
                       np.zeros(self.n_workers, dtype=np.uint64), self.state.current())
        peers = [peer for peer in range(self.n_workers)
                 if peer != self.rank and peer not in self._absent]  # see _collect
        for peer in peers:
            self.node.send(peer, frame)
        self.log.sent(len(peers))
        began = time.monotonic()
        states = self._collect(step)
        self.log.waited(time.monotonic() - began)
        self.log.merged(len(states) - 1)
        mean = _weighted_mean([states[rank] for rank in sorted(states)])  # same bits everywhere
        if self.log.drift_is_due():
            self.log.record_drift(self.state.params, mean)
        self.state.params[...] = mean
        self.state.changed()

    def _collect(self, step):
        """The states of this sync point: every peer's, except that a peer which once
        missed a deadline (stopped, or gone) is not waited for again in this phase, so a lost
        peer costs one ``timeout`` per phase, not one per sync point; its states still count
        whenever they arrive in time."""
        states = {self.rank: (self.state.params.copy(), self.state.weight)}
        deadline = time.monotonic() + self.timeout
        while True:
            messages, self._early = self._early + self.node.drain(), []
            for message in messages:
                if message.kind == KIND_DONE:  # a peer past its last average: see finish
                    self._done.add(message.sender)
                elif message.kind == KIND_STATE and message.step == step:
                    states[message.sender] = (message.values, message.weight)
                    self._absent.discard(message.sender)
                elif message.step > step:  # a faster peer's next round
                    self._early.append(message)
            expected = set(range(self.n_workers)) - self._absent
            if expected <= set(states):
                return states
            if time.monotonic() >= deadline:
                self._absent |= expected - set(states)
                return states
            self.node.wait_for(bool, deadline - time.monotonic())

    def finish(self):
        """End the phase (the last minibatch already averaged); returns the weight. Watching
        the peers, first tell every peer this worker is done and wait for theirs (see
        ``_await_peers_done``)."""
        began = time.monotonic()
        if self.watch_since is not None:
            done = encode(self.node.spec, KIND_DONE, self.rank, self.minibatches, 1.0,
                          np.zeros(self.n_workers, dtype=np.uint64))
            _send_to_peers(self, done)
            _await_peers_done(self, lambda: self._done)
        self.node.flush(self.timeout)
        self.log.waited(time.monotonic() - began)
        return self.state.weight

    def _merge(self, messages):
        # Only the peers' end matters once the last average is taken.
        self._done.update(m.sender for m in messages if m.kind == KIND_DONE)


def keep_on_device(sync, device_params):
    """Have the exchanges of ``sync`` (begun) read and write the parameters where they live,
    on a device (``_torch_math.DeviceParams``): see ``PushSum``."""
    sync.state.device = device_params
