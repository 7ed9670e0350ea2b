"""Every hyper-parameter is declared once (``skdbn._params``): the estimator's signature,
docstring and constraints, the pyspark.ml Params and the checkpoint's neutral settings must all
agree with the table."""

import ast
import inspect
import re

import numpy as np
import pytest

from skdbn import DistributedDBN
from skdbn._checkpoint import fingerprint
from skdbn._params import HYPER_PARAMETERS, MODEL_NEUTRAL, PARAMETERS, Settings

# Another valid value of every hyper-parameter (a new one must be added here: the test of
# the checkpoint's neutral settings needs it).
OTHER_VALUES = {
    "hidden_layer_sizes": (8,), "visible_units": "gaussian", "pretrain_epochs": 3,
    "pretrain_learning_rate": 0.05, "cd_steps": 2, "persistent": True, "max_iter": 7,
    "learning_rate": 0.2, "momentum": 0.5, "alpha": 1e-3, "batch_size": 10,
    "early_stopping": True, "validation_fraction": 0.2, "n_iter_no_change": 3, "tol": 1e-3,
    "backend": "local", "n_workers": 2, "sync": "average", "sync_every": 5,
    "checkpoint_dir": "elsewhere", "phase_retries": 0, "network_timeout": 5.0,
    "warm_start": True, "verbose": 1, "random_state": 7, "features_col": "pixels",
    "label_col": "digit", "prediction_col": "p", "probability_col": "q",
    "transform_col": "t", "handle_invalid": "skip", "dtype": "float32", "device": "cuda",
}


def test_the_estimators_signature_is_the_table():
    signature = inspect.signature(DistributedDBN.__init__).parameters
    assert list(signature)[1:] == [p.name for p in HYPER_PARAMETERS]
    for parameter in HYPER_PARAMETERS:
        assert signature[parameter.name].default == parameter.default, parameter.name
    assert DistributedDBN().get_params() == {p.name: p.default for p in HYPER_PARAMETERS}


def test_the_estimators_constraints_are_the_tables():
    constraints = DistributedDBN._parameter_constraints
    assert list(constraints) == [p.name for p in HYPER_PARAMETERS]
    for parameter in HYPER_PARAMETERS:
        assert constraints[parameter.name] == parameter.constraint
    with pytest.raises(ValueError, match="batch_size"):
        DistributedDBN(batch_size=0).fit(np.zeros((4, 2)))


def test_every_hyper_parameter_is_documented_with_its_default():
    doc = DistributedDBN.__doc__
    section = doc[doc.index("Parameters\n"):doc.index("Attributes\n")]
    documented = {}
    for names, default in re.findall(r"^    (\w+(?:, \w+)*) : .*?, default=(.*)$", section,
                                     flags=re.M):
        values = ast.literal_eval(f"({default},)")
        assert len(values) == len(names.split(", ")), names
        documented.update(zip(names.split(", "), values, strict=True))
    assert documented == {p.name: p.default for p in HYPER_PARAMETERS}


def test_the_checkpoint_ignores_exactly_the_settings_that_keep_the_model():
    assert set(OTHER_VALUES) == set(PARAMETERS)
    X, y = np.arange(12.0).reshape(6, 2), np.array([0, 1] * 3)
    defaults = {p.name: p.default for p in HYPER_PARAMETERS}
    key = fingerprint(defaults, X, y, np.array([0, 1]))
    for name, value in OTHER_VALUES.items():
        # The dtype setting acts through the data, which the fingerprint holds.
        data = X.astype(value) if name == "dtype" else X
        changed = fingerprint({**defaults, name: value}, data, y, np.array([0, 1]))
        assert (changed == key) == (name in MODEL_NEUTRAL), name
    assert fingerprint({**defaults, "dtype": "float64"}, X, y, np.array([0, 1])) == key


def test_settings_are_a_frozen_snapshot_of_the_estimator():
    dbn = DistributedDBN(hidden_layer_sizes=[16, 8], batch_size=10)
    settings = Settings.of(dbn)
    assert settings.params() == dbn.get_params()
    assert settings.hidden_sizes == (16, 8) and settings.slow_worker is None
    dbn.set_params(batch_size=20)
    assert settings.batch_size == 10
    with pytest.raises(AttributeError):
        settings.batch_size = 30
    with pytest.raises(ValueError, match="hidden_layer_sizes must be a positive integer"):
        Settings.of(DistributedDBN(hidden_layer_sizes=[16, 0]))


def test_the_spark_params_are_the_tables():
    pytest.importorskip("pyspark")
    from pyspark.ml.param import TypeConverters

    from skdbn.spark import DBNClassifier, DBNFeatureLearner
    from skdbn.spark.ml import _OWN_CONVERTERS, _params_of

    for stage in (DBNClassifier(), DBNFeatureLearner()):
        for parameter in HYPER_PARAMETERS:
            if parameter.spark is None or (parameter.spark == "labelCol"
                                           and isinstance(stage, DBNFeatureLearner)):
                assert parameter.spark is None or not stage.hasParam(parameter.spark)
                continue
            param = stage.getParam(parameter.spark)
            if parameter.converter is not None:
                assert param.doc == parameter.doc
                assert param.typeConverter == (_OWN_CONVERTERS.get(parameter.converter)
                                               or getattr(TypeConverters, parameter.converter))
            if parameter.spark == "seed":
                continue  # pyspark's own default: a hash of the stage's class
            default = parameter.default
            if default is None:
                assert not stage.isDefined(param), parameter.name
            else:
                expected = list(default) if isinstance(default, tuple) else default
                assert stage.getOrDefault(param) == expected, parameter.name
    # Every Spark param travels to the estimator as its own hyper-parameter, and back.
    spark_values = {p.spark: OTHER_VALUES[p.name] for p in HYPER_PARAMETERS
                    if p.converter is not None}
    spark_values["hiddenLayerSizes"] = [8]
    arguments = DBNClassifier(**spark_values, maxIter=7, tol=1e-3, featuresCol="pixels",
                              handleInvalid="skip", seed=7)._dbn_arguments()
    dbn = DistributedDBN(**arguments)
    expected = {p.name: OTHER_VALUES[p.name] for p in HYPER_PARAMETERS if p.spark is not None
                and p.name != "label_col"}
    assert {name: dbn.get_params()[name] for name in expected} == expected
    back = _params_of(dbn)
    assert {name: back[name] for name in spark_values} == spark_values


def test_the_batch_size_param_takes_auto_or_a_whole_number():
    pytest.importorskip("pyspark")
    from skdbn.spark import DBNClassifier

    stage = DBNClassifier()
    assert stage.getOrDefault("batchSize") == "auto"
    assert stage.setParams(batchSize=64).getOrDefault("batchSize") == 64
    assert stage.setParams(batchSize="auto").getOrDefault("batchSize") == "auto"
    with pytest.raises(TypeError):
        stage.setParams(batchSize="large")


def test_the_dtype_param_takes_what_the_estimator_takes():
    pytest.importorskip("pyspark")
    from skdbn.spark import DBNClassificationModel, DBNClassifier

    for value in ("float32", np.float32, np.float64):
        stage = DBNClassifier(dtype=value)
        assert stage.getOrDefault("dtype") == np.dtype(value).name
    with pytest.raises(TypeError, match="float32"):
        DBNClassifier(dtype="float16")
    X, y = np.random.default_rng(0).random((40, 3)), np.arange(40) % 2
    dbn = DistributedDBN(hidden_layer_sizes=(4,), pretrain_epochs=1, max_iter=1,
                         dtype=np.float32).fit(X, y)
    assert DBNClassificationModel.from_sklearn(dbn).getOrDefault("dtype") == "float32"


@pytest.mark.parametrize(("n_samples", "expected"),
                         [(1, 10), (800, 10), (1347, 16), (6400, 80), (8000, 100), (10**6, 100)])
def test_the_automatic_batch_size(n_samples, expected):
    from skdbn._params import batch_size_for

    assert batch_size_for("auto", n_samples) == expected
    assert batch_size_for(32, n_samples) == 32


def test_a_checkpoint_of_0_1_0_has_the_fingerprint_of_its_dtype():
    # 0.1.0 had no dtype setting: its fits' fingerprints are those of the same fit naming the
    # dtype it trained in, arrays and DataFrames alike (the data's part holds the dtype).
    from types import SimpleNamespace

    from skdbn._checkpoint import frame_fingerprint

    before = {p.name: p.default for p in HYPER_PARAMETERS if p.name != "dtype"}
    X, y, classes = np.arange(12.0).reshape(6, 2), np.array([0, 1] * 3), np.array([0, 1])
    assert fingerprint({**before, "dtype": "float64"}, X, y, classes) == \
        fingerprint(before, X, y, classes)
    assert fingerprint({**before, "dtype": "float32"}, X.astype(np.float32), y, classes) != \
        fingerprint(before, X, y, classes)
    moments = np.zeros(2)
    summary = SimpleNamespace(n_samples=6, n_features=2, dtype=np.dtype("float64"),
                              partition_rows={0: 6}, mean=moments, variance=moments,
                              minimum=moments, maximum=moments)
    assert frame_fingerprint({**before, "dtype": "float64"}, summary, classes) == \
        frame_fingerprint(before, summary, classes)
    as_float32 = SimpleNamespace(**{**vars(summary), "dtype": np.dtype("float32")})
    assert frame_fingerprint(before, as_float32, classes) != \
        frame_fingerprint(before, summary, classes)
