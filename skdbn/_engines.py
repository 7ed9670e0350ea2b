"""Engines start workers and collect their results; they hold no training math.

``LocalEngine`` runs the single worker in this process. The Spark engine and multi-process
local workers (gossip) plug into the same two calls: ``start(shards)`` and
``run_phase(phase, state, below)``.
"""

from ._worker import consensus, run_phase


class LocalEngine:
    """Runs every phase in the calling process, on one worker holding all of the data."""

    n_workers = 1

    def __init__(self):
        self._shards = None

    def start(self, shards):
        """Keep the workers' shards (a list with one ``Shard``) for the phases to come."""
        if len(shards) != 1:
            raise ValueError(f"LocalEngine runs one worker, got {len(shards)} shards")
        self._shards = shards

    def run_phase(self, phase, state, below):
        """Run ``phase`` on every worker and return ``(consensus_state, results)``."""
        results = [run_phase(phase, shard, state, below) for shard in self._shards]
        return consensus(results), results

    def close(self):
        """Release the shards."""
        self._shards = None


def make_engine(backend, n_workers):
    """The engine for ``backend`` and ``n_workers``, with a clear error for what is not there."""
    if backend == "spark":
        raise NotImplementedError(
            "backend='spark' is not available in this version of skdbn; "
            "use backend='local' to train in this process"
        )
    if n_workers not in (None, 1):
        raise NotImplementedError(
            f"backend='local' trains on one worker in this version of skdbn; got "
            f"n_workers={n_workers}. Leave n_workers=None (or 1)"
        )
    return LocalEngine()
