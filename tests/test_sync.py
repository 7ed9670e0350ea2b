"""The synchronizers' bookkeeping (progress estimates, peer schedule, epochs) and their effect
on real local worker processes: a global budget shared by workers of unequal speed."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skdbn import DistributedDBN
from skdbn._processes import ProcessEngine
from skdbn._sync import LocalBudget, PeerProgress, exponential_graph_peer


def test_unheard_peers_are_assumed_as_fast_as_this_worker():
    progress = PeerProgress(n_workers=3, rank=0, start=0.0)
    progress.count(100)
    assert progress.estimated_total(now=1.0) == pytest.approx(300)


def test_peers_are_extrapolated_at_their_own_measured_speed():
    progress = PeerProgress(n_workers=2, rank=0, start=0.0)
    progress.count(1000)
    progress.learn(1, np.array([0, 100], dtype=np.uint64), received=1.0)
    progress.learn(1, np.array([0, 200], dtype=np.uint64), received=2.0)  # 100 samples/s
    assert progress.estimated_total(now=4.0) == pytest.approx(1000 + 400)


def test_a_finished_peer_counts_exactly_and_relayed_reports_are_lower_bounds():
    progress = PeerProgress(n_workers=3, rank=0, start=0.0)
    progress.count(50)
    # Worker 1 relays that worker 2 had done 500; worker 1 itself is done with 80.
    progress.learn(1, np.array([0, 80, 500], dtype=np.uint64), received=1.0, final=True)
    assert progress.finished == {1}
    # 50 own, 80 exactly for the finished peer, at least 500 for worker 2.
    assert progress.estimated_total(now=1.0) == pytest.approx(50 + 80 + 500)
    stale = np.array([0, 10, 5], dtype=np.uint64)
    progress.learn(2, stale, received=1.5)
    assert progress.known.tolist() == [50, 80, 500]


@pytest.mark.parametrize("n_workers", range(2, 9))
def test_every_worker_receives_exactly_one_push_per_round(n_workers):
    for round_index in range(6):
        receivers = [exponential_graph_peer(rank, n_workers, round_index)
                     for rank in range(n_workers)]
        assert sorted(receivers) == list(range(n_workers))
        assert all(peer != rank for rank, peer in enumerate(receivers))


def test_local_budget_counts_epochs_by_passes_over_the_shard():
    budget = LocalBudget(epochs=3, epoch_samples=10)
    budget.begin(np.zeros(2), 10.0)
    seen = []
    while budget.keep_going():
        for rows in (4, 4, 2):  # one pass over a shard of 10 in minibatches of 4
            budget.after_minibatch(rows)
            seen.append(budget.epochs_done())
    assert seen == [0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert budget.samples_trained == 30 and not budget.keep_going()


@pytest.fixture(scope="module")
def digits_split():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


def _record_phases(monkeypatch):
    records = []
    original = ProcessEngine.run_phase

    def recording(engine, phase, state, below, monitor=None):
        state, results = original(engine, phase, state, below, monitor)
        records.append((phase, results))
        return state, results

    monkeypatch.setattr(ProcessEngine, "run_phase", recording)
    return records


def test_gossip_shares_a_global_budget_between_a_slow_and_a_fast_worker(
        digits_split, monkeypatch):
    X_train, X_test, y_train, y_test = digits_split
    records = _record_phases(monkeypatch)
    model = DistributedDBN(hidden_layer_sizes=(64,), pretrain_epochs=10, max_iter=3,
                           backend="local", n_workers=2, sync="gossip", random_state=0)
    # Worker 1 sleeps 3 ms after every minibatch: several times slower than worker 0.
    monkeypatch.setattr(DistributedDBN, "_slow_worker", (1, 0.003))
    model.fit(X_train, y_train)

    budget = 10 * X_train.shape[0]
    phase, results = records[0]
    fast, slow = (r.samples_trained for r in results)
    assert slow < 0.6 * fast, "the slow worker should do fewer minibatches, not hold others up"
    assert budget <= fast + slow <= 1.1 * budget
    # Both push at the same pace, so push-sum weights stay within one halving of each other
    # and the fast worker's work is not discounted in the consensus; none is lost.
    weights = np.array([r.weight for r in results])
    assert weights.sum() == pytest.approx(X_train.shape[0])
    assert weights.max() / weights.min() <= 3.0 + 1e-9
    # Epochs are those of the whole phase, whoever did the work.
    assert all(len(r.history["reconstruction_error"]) == phase.epochs for r in results)
    assert model.n_iter_ == 3 and len(model.loss_curve_) == 3
    assert model.score(X_test, y_test) > 0.85
