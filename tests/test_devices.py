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


@pytest.mark.parametrize("setting, match", [
    (dict(n_workers=2), "one worker per fit"),
    (dict(backend="spark"), "Spark GPU executors are not supported yet"),
])
def test_cuda_settings_this_version_cannot_train_are_refused_first(digits, monkeypatch, setting,
                                                                   match):
    pytest.importorskip("torch")
    _no_data_prepared(monkeypatch)
    with pytest.raises(NotImplementedError, match=match):
        DistributedDBN(device="cuda", **setting).fit(*digits)


@pytest.fixture
def cuda_on_the_cpu(monkeypatch):
    """``device="cuda"`` trained by the PyTorch path on the CPU device."""
    torch = pytest.importorskip("torch")
    import skdbn._worker as worker

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(worker, "worker_device",
                        lambda device, rank: None if device == "cpu" else torch.device("cpu"))
    trained = []
    from skdbn import _device_training

    math = _device_training.device_math
    monkeypatch.setattr(_device_training, "device_math",
                        lambda device: trained.append(device) or math(device))
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
