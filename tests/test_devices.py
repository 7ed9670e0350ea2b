"""``device="cuda"``: clear errors before any data is prepared, and the PyTorch training path
end to end, run here on the CPU device (CI has no GPU; issue 20)."""

import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from sklearn.datasets import load_digits

from skdbn import DistributedDBN

QUICK = dict(hidden_layer_sizes=(32, 16), pretrain_epochs=2, max_iter=8, random_state=0)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


# Run first in a child: a machine without PyTorch (importing it fails, as when it is absent).
WITHOUT_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NoTorch())
"""


def _run(code, **options):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          timeout=120, **options)


def test_importing_skdbn_never_imports_torch():
    done = _run("""
        import sys
        import skdbn
        from skdbn import DistributedDBN
        DistributedDBN(hidden_layer_sizes=(4,), pretrain_epochs=1).fit([[0, 1], [1, 0]] * 8)
        print("torch" in sys.modules)
    """, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_cuda_without_torch_says_what_to_install():
    done = _run(WITHOUT_TORCH + """
from skdbn import DistributedDBN
try:
    DistributedDBN(device="cuda").fit([[0.0, 1.0], [1.0, 0.0]] * 8)
except ImportError as error:
    print(error)
""", text=True)
    assert done.returncode == 0, done.stderr
    assert "needs PyTorch" in done.stdout and 'pip install "skdbn[gpu]"' in done.stdout


def _no_data_prepared(monkeypatch):
    import skdbn._dbn as estimator

    def prepared(*args, **kwargs):
        raise AssertionError("data was prepared before the device was checked")

    monkeypatch.setattr(estimator, "prepare_arrays", prepared)


def test_cuda_without_a_cuda_device_fails_before_any_data_is_prepared(digits, monkeypatch):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    _no_data_prepared(monkeypatch)
    model = DistributedDBN(device="cuda")
    with pytest.raises(RuntimeError, match=r"sees no CUDA device.*CUDA_VISIBLE_DEVICES"):
        model.fit(*digits)
    assert not hasattr(model, "coefs_")


@pytest.fixture
def cuda_on_the_cpu(monkeypatch):
    """``device="cuda"`` trained by the PyTorch path on the CPU device."""
    torch = pytest.importorskip("torch")
    from skdbn import _devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_devices, "torch_device", lambda name: torch.device("cpu"))
    trained = []
    from skdbn import _device_training

    math = _device_training.device_math
    monkeypatch.setattr(_device_training, "device_math",
                        lambda device, *more: trained.append(device) or math(device, *more))
    return trained


@pytest.mark.parametrize("setting", [
    dict(),
    dict(persistent=True, cd_steps=2),
    dict(visible_units="gaussian"),
])
def test_the_device_path_learns_as_the_numpy_path_does(digits, cuda_on_the_cpu, setting):
    # Other random draws (the device's generator), so the mean of three seeds is compared.
    X, y = digits
    X_train, X_test, y_train, y_test = X[:1200], X[1200:], y[:1200], y[1200:]
    scores = {"cpu": [], "cuda": []}
    for device, seed in [(device, seed) for device in scores for seed in range(3)]:
        params = dict(QUICK, max_iter=20, random_state=seed, **setting)
        phases_before = len(cuda_on_the_cpu)
        model = DistributedDBN(device=device, **params).fit(X_train, y_train)
        scores[device].append(model.score(X_test, y_test))
        on_the_device = len(cuda_on_the_cpu) - phases_before
        assert on_the_device == (len(model.worker_stats_) if device == "cuda" else 0)
    assert np.mean(scores["cuda"]) > np.mean(scores["cpu"]) - 0.04
    assert np.mean(scores["cuda"]) > 0.85
    on_device = model
    on_cpu = DistributedDBN(**params).fit(X_train, y_train)
    assert not np.array_equal(on_device.coefs_[0], on_cpu.coefs_[0])
    assert all(isinstance(c, np.ndarray) and c.dtype == np.float32 for c in on_device.coefs_)
    assert len(on_device.pretraining_history_) == 2 and on_device.loss_curve_


def test_a_model_trained_on_a_device_predicts_without_torch(digits, cuda_on_the_cpu):
    X, y = digits
    model = DistributedDBN(device="cuda", **QUICK).fit(X, y)
    done = _run(WITHOUT_TORCH + """
import pickle
model, X = pickle.loads(sys.stdin.buffer.read())
print(list(model.predict(X)))
""", input=pickle.dumps((model, X[:20])))
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == str(list(model.predict(X[:20])))


def test_an_unsupervised_device_fit_and_partial_fit(digits, cuda_on_the_cpu):
    X, _ = digits
    model = DistributedDBN(device="cuda", **QUICK).fit(X)
    assert model.transform(X[:5]).shape == (5, 16)
    model.partial_fit(X)
    assert len(model.pretraining_history_[0]["reconstruction_error"]) == 3


def test_a_device_out_of_memory_is_said_with_the_sizes_and_not_retried(digits, cuda_on_the_cpu,
                                                                        monkeypatch):
    torch = pytest.importorskip("torch")
    from skdbn import _device_rows

    calls = []

    def no_room(x, device, dtype):
        calls.append(x.shape)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(_device_rows, "on_device", no_room)
    X, y = digits
    with pytest.raises(MemoryError, match=r"ran out of memory training a shard of 1797 rows x "
                                          r"64 features .* at batch size 22: lower batch_size"):
        DistributedDBN(device="cuda", phase_retries=2, **QUICK).fit(X, y)
    assert calls == [(1797, 64)]  # a fit's own error: no phase reran


def test_each_pass_hands_the_device_its_permutation_once():
    torch = pytest.importorskip("torch")
    from skdbn._device_rows import DeviceIndices

    indices = DeviceIndices(torch.device("cpu"))
    order = np.random.default_rng(0).permutation(10)
    indices.new_order(order)
    taken = [indices.take(4), indices.take(4), indices.take(2)]
    np.testing.assert_array_equal(torch.cat(taken).numpy(), order)
    indices.new_order(order[::-1].copy())
    np.testing.assert_array_equal(indices.take(3).numpy(), order[::-1][:3])


@pytest.mark.parametrize("sparse", [False, True])
def test_a_streamed_shard_hands_out_the_minibatches_of_a_resident_one(sparse):
    torch = pytest.importorskip("torch")
    import scipy.sparse

    from skdbn._device_rows import ResidentRows, StreamedRows

    rng = np.random.default_rng(0)
    x = rng.random((23, 5)).astype(np.float32)
    x[x < 0.5] = 0
    codes = rng.integers(0, 3, 23)
    shard = scipy.sparse.csr_matrix(x) if sparse else x
    cpu = torch.device("cpu")
    resident = ResidentRows(shard, codes, cpu, np.float32)
    streamed = StreamedRows(shard, codes, cpu, np.float32, chunk_rows=8)  # 2 batches of 4
    for _ in range(2):  # two passes, each a new order; 23 rows: a short last minibatch
        order = rng.permutation(23)
        resident.new_order(order)
        streamed.new_order(order)
        for start in range(0, 23, 4):
            n = len(order[start:start + 4])
            out = torch.empty((4, 5))[:n]
            rows, batch_codes = streamed.take(n, out=out)
            expected_rows, expected_codes = resident.take(n)
            assert rows.data_ptr() == out.data_ptr()
            np.testing.assert_array_equal(rows.numpy(), x[order[start:start + n]])
            np.testing.assert_array_equal(rows.numpy(), expected_rows.numpy())
            np.testing.assert_array_equal(batch_codes.numpy(), expected_codes.numpy())


def test_a_shard_over_the_device_budget_trains_as_a_resident_one(digits, cuda_on_the_cpu,
                                                                monkeypatch):
    from skdbn import _device_rows

    X, y = digits
    params = dict(QUICK, persistent=True)
    resident = DistributedDBN(device="cuda", **params).fit(X, y)
    streamed_shards = []
    original = _device_rows.StreamedRows

    def streamed(*args):
        streamed_shards.append(original(*args))
        return streamed_shards[-1]

    # 40 KB of device memory for a 1,797 x 64 float32 shard (460 KB): streamed in chunks
    monkeypatch.setattr(_device_rows, "shard_budget", lambda device, sharing=1: 40_000)
    monkeypatch.setattr(_device_rows, "StreamedRows", streamed)
    model = DistributedDBN(device="cuda", **params).fit(X, y)
    assert len(streamed_shards) >= 3  # each phase: two layers, then fine-tuning
    assert all(s.chunk_rows < 1797 and s.chunk_rows % 22 == 0 for s in streamed_shards)
    for mine, theirs in zip(model.coefs_ + model.intercepts_,
                            resident.coefs_ + resident.intercepts_, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert model.loss_curve_ == resident.loss_curve_


@pytest.mark.parametrize("mode", ["average", "gossip"])
def test_workers_on_devices_exchange_their_parameters_through_the_host(digits, cuda_on_the_cpu,
                                                                      mode):
    # Two workers (threads here, processes or tasks in a fit) whose parameters live on a
    # device: every exchange must read the device's values and hand merged ones back.
    import secrets
    import threading

    from skdbn._gossip import AllGatherClient, AllGatherServer
    from skdbn._phase import PhaseState, PretrainPhase, Shard
    from skdbn._rbm import init_rbm
    from skdbn._worker import SyncPlan, run_worker

    X, _ = digits
    shards = [Shard(X[:900]), Shard(X[900:])]
    phase = PretrainPhase(layer=0, n_visible=64, n_hidden=16, visible_units="bernoulli",
                          epochs=3, batch_size=20, learning_rate=0.1, momentum=0.5,
                          weight_decay=0.0, cd_steps=1, persistent=False, seed=(0, 1, 0),
                          device="cuda")
    start = init_rbm(64, 16, X.mean(axis=0), "bernoulli", np.float32, np.random.default_rng(0))
    state = PhaseState(start.flat, np.zeros_like(start.flat))
    secret = secrets.token_bytes(32)
    server = AllGatherServer(secret, 2, 20).start()
    try:
        plan = SyncPlan(mode=mode, n_workers=2, sync_every=5, secret=secret, phase_key=1,
                        total_samples=len(X), timeout=20, blas_threads=1)
        rendezvous = AllGatherClient(server.address, secret, 20, 2)
        results, errors = {}, []

        def work(rank):
            try:
                results[rank] = run_worker(rank, phase, shards[rank], state, [], plan,
                                           rendezvous)
            except Exception as error:  # raised below, in the test's thread
                errors.append(error)

        threads = [threading.Thread(target=work, args=(rank,)) for rank in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        server.close()
    assert not errors and len(results) == 2
    assert len(cuda_on_the_cpu) == 2  # both trained on the device
    assert sum(r.weight for r in results.values()) == pytest.approx(len(X))  # no mass lost
    assert all(r.diagnostics["messages_merged"] > 0 for r in results.values())
    final = [results[rank].state.params for rank in range(2)]
    assert not np.allclose(final[0], start.flat, atol=1e-3)  # trained, not the stale start
    if mode == "average":  # the last minibatch ends on an average, which the device took
        np.testing.assert_array_equal(final[0], final[1])


def test_cuda_fits_take_a_worker_per_visible_gpu_as_the_data_allows(monkeypatch):
    from skdbn import _engines
    from skdbn._params import Settings

    monkeypatch.setattr(_engines, "visible_gpus", lambda: 4)
    assert _engines.default_workers("local", 60_000, "cuda") == 4
    assert _engines.default_workers("local", 12_000, "cuda") == 2
    assert _engines.default_workers("local", 800, "cuda") == 1
    settings = Settings.of(DistributedDBN(device="cuda", backend="auto"))
    assert _engines.plan_workers(settings, 60_000) == _engines.WorkerPlan("processes", 4)
    settings = Settings.of(DistributedDBN(device="cuda", n_workers=3))
    assert _engines.plan_workers(settings, 800) == _engines.WorkerPlan("processes", 3)


def test_workers_sharing_a_device_split_its_budget_and_chunks_stay_small(monkeypatch):
    torch = pytest.importorskip("torch")
    from skdbn import _device_rows, _devices

    monkeypatch.setattr(_devices, "visible_gpus", lambda: 2)
    assert _devices.workers_sharing("cpu", 5) == 1
    assert _devices.workers_sharing("cuda", 5) == 3  # ranks 0, 2, 4 on GPU 0
    assert _devices.workers_sharing("torch:cuda:1", 5) == 5  # all on the tensors' device

    budgets = []

    def budget(device, sharing=1):
        budgets.append(sharing)
        return 40_000 // sharing

    monkeypatch.setattr(_device_rows, "shard_budget", budget)
    monkeypatch.setattr(_device_rows, "CHUNK_BYTES", 4_000)
    x = np.zeros((1000, 10), dtype=np.float32)  # 40 KB
    cpu = torch.device("cpu")
    assert isinstance(_device_rows.device_rows(x, None, cpu, np.float32, 10),
                      _device_rows.ResidentRows)
    streamed = _device_rows.device_rows(x, None, cpu, np.float32, 10, sharing=2)
    assert budgets == [1, 2]
    assert isinstance(streamed, _device_rows.StreamedRows)
    assert streamed.chunk_rows == 100  # 4,000 bytes: ten minibatches of 400 bytes
