"""How a worker keeps its copy of the network together with its peers within a phase.

A synchronizer owns the phase's work budget and the exchanges. The training loop asks
``keep_going()`` before every minibatch and calls ``after_minibatch(n)`` after it; ``finish()``
ends the phase and returns the worker's push-sum weight.

- ``LocalBudget``: one worker, or ``sync="none"``: ``epochs x shard`` samples, no exchange.
- ``GossipSync``: asynchronous push-sum. The budget is global (``epochs x all samples``); each
  message carries the sender's view of everyone's progress, so a slow worker does fewer
  minibatches and nobody waits for it. The training thread never touches a socket.
- ``AverageSync``: the synchronous, deterministic baseline. Every worker runs the same number
  of minibatches and every ``sync_every`` of them all workers exchange their full state and take
  the exact weighted average, summed in rank order so that all get identical bits.
"""

import threading
import time

import numpy as np

from ._gossip import KIND_DONE, KIND_STATE, PushSum, encode


class LocalBudget:
    """A fixed number of samples on this worker and no exchange."""

    def __init__(self, target_samples):
        self.target = target_samples
        self.done = 0
        self.state = None

    def begin(self, params, weight):
        """Start the phase with the worker's parameter vector (updated in place)."""
        self.state = PushSum(params, weight)

    def keep_going(self):
        """Whether another minibatch is wanted."""
        return self.done < self.target

    def after_minibatch(self, n_rows):
        """Count a finished minibatch of ``n_rows`` samples."""
        self.done += n_rows

    def finish(self):
        """End the phase; returns this worker's weight."""
        return self.state.weight


class GossipSync:
    """Asynchronous push-sum gossip over a ``GossipNode`` with a global sample budget.

    Parameters
    ----------
    node : GossipNode
        Started transport of this worker.
    target_samples : int
        Samples all workers together train on in this phase.
    sync_every : int
        Minibatches between two exchanges.
    rng : numpy.random.Generator
        Chooses the peer of each push.
    timeout : float
        Bound on the end-of-phase wait for peers.
    """

    def __init__(self, node, target_samples, sync_every, rng, timeout):
        self.node = node
        self.rank = node.rank
        self.n_workers = node.spec.n_workers
        self.target = target_samples
        self.sync_every = sync_every
        self.rng = rng
        self.timeout = timeout
        self.progress = np.zeros(self.n_workers, dtype=np.uint64)
        # For each peer: (its progress, ours) when its figure last grew, and its speed relative
        # to ours (assumed equal until two reports have arrived).
        self._heard = [(0, 0)] * self.n_workers
        self._relative_speed = np.ones(self.n_workers)
        self.minibatches = 0
        self.finished_peers = set()
        self._returned = []
        self._returned_lock = threading.Lock()
        self.state = None

    def begin(self, params, weight):
        """Start the phase with the worker's parameter vector (updated in place)."""
        self.state = PushSum(params, weight)

    def keep_going(self):
        """Whether the estimated global progress is still below the budget."""
        if self.node.peer_finished.is_set():
            return False
        return self.estimated_total() < self.target

    def estimated_total(self):
        """Samples trained by all workers so far: ours exactly, each peer's last report
        extrapolated at its observed speed relative to ours."""
        own = int(self.progress[self.rank])
        total = own
        for peer in range(self.n_workers):
            if peer != self.rank:
                theirs, ours_then = self._heard[peer]
                total += theirs + self._relative_speed[peer] * (own - ours_then)
        return total

    def after_minibatch(self, n_rows):
        """Count the minibatch; every ``sync_every`` minibatches merge the mailbox and push."""
        self.progress[self.rank] += n_rows
        self.minibatches += 1
        if self.minibatches % self.sync_every == 0:
            self._merge(self.node.drain())
            self._push()

    def _push(self):
        if self.node.pending():  # the last push is still in flight: never wait for it
            return
        peer = int(self.rng.integers(self.n_workers - 1))
        peer += peer >= self.rank
        values, weight = self.state.split()
        frame = encode(self.node.spec, KIND_STATE, self.rank, self.minibatches, weight,
                       self.progress, values)
        self.node.send(peer, frame, on_failure=lambda: self._give_back(values, weight))

    def _give_back(self, values, weight):
        # An undelivered push returns its weight to the sender, so none is lost.
        with self._returned_lock:
            self._returned.append((values, weight))

    def _merge(self, messages):
        incoming = []
        for message in messages:
            self._learn_progress(message.progress)
            if message.kind == KIND_STATE:
                incoming.append((message.values, message.weight))
            elif message.kind == KIND_DONE:
                self.finished_peers.add(message.sender)
        with self._returned_lock:
            incoming += self._returned
            self._returned = []
        self.state.merge(incoming)

    def _learn_progress(self, reported):
        own = int(self.progress[self.rank])
        for peer in range(self.n_workers):
            value = int(reported[peer])
            theirs, ours_then = self._heard[peer]
            if peer == self.rank or value <= theirs:
                continue
            if own > ours_then and theirs > 0:
                self._relative_speed[peer] = (value - theirs) / (own - ours_then)
            self._heard[peer] = (value, own)
            self.progress[peer] = value

    def finish(self):
        """Deliver what is queued, tell every peer this worker is done, and merge everything
        peers send until each of them is done too (or the timeout passes)."""
        self.node.flush(self.timeout)
        self._merge(self.node.drain())
        done = encode(self.node.spec, KIND_DONE, self.rank, self.minibatches, 1.0,
                      self.progress)
        for peer in range(self.n_workers):
            if peer != self.rank:
                self.node.send(peer, done)
        deadline = time.monotonic() + self.timeout
        peers = set(range(self.n_workers)) - {self.rank}
        while not peers <= self.finished_peers and time.monotonic() < deadline:
            self.node.wait_for(bool, deadline - time.monotonic())
            self._merge(self.node.drain())
        self.node.flush(self.timeout)
        self._merge([])
        return self.state.weight


class AverageSync:
    """Synchronous exact averaging every ``sync_every`` minibatches (deterministic).

    Parameters
    ----------
    node : GossipNode
        Started transport of this worker.
    n_minibatches : int
        Minibatches every worker runs in this phase.
    sync_every : int
        Minibatches between two exact averages; the phase always ends with one.
    timeout : float
        Bound on each wait for the peers' states.
    """

    def __init__(self, node, n_minibatches, sync_every, timeout):
        self.node = node
        self.rank = node.rank
        self.n_workers = node.spec.n_workers
        self.n_minibatches = n_minibatches
        self.sync_every = sync_every
        self.timeout = timeout
        self.minibatches = 0
        self._early = []
        self.state = None

    def begin(self, params, weight):
        """Start the phase with the worker's parameter vector (updated in place)."""
        self.state = PushSum(params, weight)

    def keep_going(self):
        """Whether this worker's share of minibatches is not done yet."""
        return self.minibatches < self.n_minibatches

    def after_minibatch(self, n_rows):
        """Count the minibatch and average with all peers at every sync point."""
        self.minibatches += 1
        if self.minibatches % self.sync_every == 0 or self.minibatches == self.n_minibatches:
            self._average(self.minibatches)

    def _average(self, step):
        frame = encode(self.node.spec, KIND_STATE, self.rank, step, self.state.weight,
                       np.zeros(self.n_workers, dtype=np.uint64), self.state.params)
        for peer in range(self.n_workers):
            if peer != self.rank:
                self.node.send(peer, frame)
        states = self._collect(step)
        total = sum(weight for _, weight in states.values())
        mean = np.zeros_like(self.state.params)
        for rank in sorted(states):
            values, weight = states[rank]
            mean += (weight / total) * values
        self.state.params[...] = mean

    def _collect(self, step):
        states = {self.rank: (self.state.params.copy(), self.state.weight)}
        deadline = time.monotonic() + self.timeout
        while True:
            messages, self._early = self._early + self.node.drain(), []
            for message in messages:
                if message.kind == KIND_STATE and message.step == step:
                    states[message.sender] = (message.values, message.weight)
                elif message.step > step:  # a faster peer's next round
                    self._early.append(message)
            if len(states) == self.n_workers or time.monotonic() >= deadline:
                return states
            self.node.wait_for(bool, deadline - time.monotonic())

    def finish(self):
        """End the phase (the last minibatch already averaged); returns the weight."""
        self.node.flush(self.timeout)
        return self.state.weight
