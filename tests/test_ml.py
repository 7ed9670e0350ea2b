"""The pyspark.ml face: DBNClassifier and DBNFeatureLearner as Pipeline stages, tuning,
evaluators, persistence without pickle, conversion to and from the sklearn estimator, and
scoring a streaming DataFrame. Runs on classic and Connect sessions."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from sklearn.datasets import load_digits

pytest.importorskip("pyspark", reason="pyspark is a dependency; needed here")

from pyarrow import parquet
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import (
    BinaryClassificationEvaluator,
    MulticlassClassificationEvaluator,
)
from pyspark.ml.feature import MinMaxScaler, VectorAssembler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import VectorUDT
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder, TrainValidationSplit
from pyspark.sql import functions
from pyspark.sql.types import DoubleType

from skdbn import DistributedDBN
from skdbn.spark.ml import (
    DBNClassificationModel,
    DBNClassifier,
    DBNFeatureLearner,
    DBNFeatureModel,
)

COLUMNS = [f"p{i}" for i in range(64)]
QUICK = dict(hiddenLayerSizes=[32], pretrainEpochs=3, maxIter=15, seed=0)


@pytest.fixture(scope="module")
def digits_frames(spark):
    X, y = load_digits(return_X_y=True)
    rows = [(*map(float, x), float(label)) for x, label in zip(X, y, strict=True)]
    frame = spark.createDataFrame(rows, ", ".join(f"{c} double" for c in COLUMNS)
                                  + ", label double")
    return frame.randomSplit([0.75, 0.25], seed=0)


def _pipeline(**params):
    return Pipeline(stages=[
        VectorAssembler(inputCols=COLUMNS, outputCol="raw"),
        MinMaxScaler(inputCol="raw", outputCol="scaled"),
        DBNClassifier(featuresCol="scaled", **{**QUICK, **params}),
    ])


def _accuracy(frame):
    return MulticlassClassificationEvaluator(metricName="accuracy").evaluate(frame)


def test_a_pipeline_with_spark_stages_and_evaluators(digits_frames):
    train, test = digits_frames
    model = _pipeline(numWorkers=2, sync="average").fit(train)
    scored = model.transform(test)
    types = {field.name: field.dataType for field in scored.schema.fields}
    assert isinstance(types["prediction"], DoubleType)
    assert isinstance(types["probability"], VectorUDT)
    assert isinstance(types["rawPrediction"], VectorUDT)
    assert _accuracy(scored) > 0.9
    first = scored.select("probability", "rawPrediction", "prediction").first()
    assert first.probability.toArray().sum() == pytest.approx(1.0)
    assert first.prediction == float(np.argmax(first.rawPrediction.toArray()))
    stage = model.stages[-1]
    assert isinstance(stage, DBNClassificationModel) and stage.numClasses == 10
    assert stage.to_sklearn().n_workers_ == 2
    binary = train.where("label < 2")
    auc = BinaryClassificationEvaluator().evaluate(
        _pipeline().fit(binary).transform(test.where("label < 2")))
    assert auc > 0.95


def test_string_labels_and_missing_columns_get_clear_errors(digits_frames):
    train, _ = digits_frames
    frame = VectorAssembler(inputCols=COLUMNS, outputCol="features").transform(train)
    named = frame.withColumn("label", functions.col("label").cast("string"))
    with pytest.raises(ValueError, match="StringIndexer"):
        DBNClassifier(**QUICK).fit(named)
    with pytest.raises(ValueError, match="digit"):
        DBNClassifier(labelCol="digit", **QUICK).fit(frame)


def test_every_hyper_parameter_is_a_documented_param_with_its_default():
    explained = DBNClassifier().explainParams()
    defaults = DistributedDBN().get_params()
    for name, sklearn_name in [("hiddenLayerSizes", "hidden_layer_sizes"),
                               ("pretrainEpochs", "pretrain_epochs"), ("maxIter", "max_iter"),
                               ("batchSize", "batch_size"), ("syncEvery", "sync_every"),
                               ("phaseRetries", "phase_retries"), ("tol", "tol")]:
        assert f"{name}:" in explained
        value = DBNClassifier().getOrDefault(name)
        assert value == (list(defaults[sklearn_name]) if isinstance(value, list)
                         else defaults[sklearn_name])
    assert "numWorkers: workers" in explained and "seed:" in explained
    with pytest.raises(TypeError):
        DBNClassifier(pretrainEpochs="many")
    arguments = DBNClassifier(sync="sometimes")._dbn_arguments()
    with pytest.raises(ValueError, match="sync"):  # the estimator's own checks still apply
        DistributedDBN(**arguments)._validate_params()


def test_cross_validation_over_dbn_params(digits_frames):
    train, _ = digits_frames
    classifier = _pipeline(numWorkers=1).getStages()[-1]
    grid = (ParamGridBuilder().addGrid(classifier.hiddenLayerSizes, [[16], [32]])
            .addGrid(classifier.pretrainEpochs, [0, 3]).build())
    # One worker per fit: two fits at once (parallelism=2) each take one of the two slots.
    search = CrossValidator(estimator=_pipeline(numWorkers=1), estimatorParamMaps=grid,
                            evaluator=MulticlassClassificationEvaluator(metricName="accuracy"),
                            numFolds=2, parallelism=2, seed=0)
    fitted = search.fit(train)
    assert len(fitted.avgMetrics) == 4 and min(fitted.avgMetrics) > 0.8
    best = fitted.bestModel.stages[-1]
    assert best.getOrDefault("hiddenLayerSizes") in ([16], [32])


def test_train_validation_split_over_dbn_params(digits_frames):
    train, test = digits_frames
    classifier = DBNClassifier(featuresCol="scaled", numWorkers=1, **QUICK)
    pipeline = _pipeline().setStages([*_pipeline().getStages()[:2], classifier])
    grid = ParamGridBuilder().addGrid(classifier.learningRate, [0.05, 0.1]).build()
    search = TrainValidationSplit(estimator=pipeline, estimatorParamMaps=grid,
                                  evaluator=MulticlassClassificationEvaluator(),
                                  trainRatio=0.75, seed=0)
    fitted = search.fit(train)
    assert len(fitted.validationMetrics) == 2
    assert fitted.bestModel.stages[-1].getOrDefault("learningRate") in (0.05, 0.1)
    assert _accuracy(fitted.transform(test)) > 0.85


def test_a_saved_pipeline_model_loads_and_predicts_the_same(digits_frames, tmp_path):
    train, test = digits_frames
    model = _pipeline().fit(train)
    path = str(tmp_path / "pipeline")
    model.write().overwrite().save(path)
    loaded = PipelineModel.load(path)
    before = model.transform(test).select("prediction", "probability").toPandas()
    after = loaded.transform(test).select("prediction", "probability").toPandas()
    np.testing.assert_array_equal(before.prediction, after.prediction)
    np.testing.assert_array_equal(np.stack(before.probability.map(lambda v: v.toArray())),
                                  np.stack(after.probability.map(lambda v: v.toArray())))
    stage = loaded.stages[-1]
    assert stage.getOrDefault("pretrainEpochs") == 3 and stage.getFeaturesCol() == "scaled"
    # No pickle anywhere: JSON metadata and a Parquet table of arrays.
    stage_dirs = [d for d in os.listdir(os.path.join(path, "stages")) if "DBN" in d]
    data = os.path.join(path, "stages", stage_dirs[0], "data")
    files = [f for f in os.listdir(data) if f.endswith(".parquet")]
    assert files
    table = parquet.read_table(os.path.join(data, files[0]))
    assert set(table.column_names) == {"name", "dtype", "shape", "values"}
    assert "coefs_[0]" in table.column("name").to_pylist()


def test_a_model_saved_here_loads_in_another_process(digits_frames, tmp_path):
    train, _ = digits_frames
    model = DBNClassifier(featuresCol="features", **QUICK).fit(
        VectorAssembler(inputCols=COLUMNS, outputCol="features").transform(train))
    path = str(tmp_path / "model")
    model.write().overwrite().save(path)
    expected = model.to_sklearn().predict_proba(load_digits().data[:5].astype(float))
    code = textwrap.dedent(f"""
        import json
        from sklearn.datasets import load_digits
        from skdbn import loopback_session
        from skdbn.spark.ml import DBNClassificationModel
        spark = loopback_session("local[1]", app_name="skdbn-load")
        try:
            model = DBNClassificationModel.load({path!r})
            X = load_digits().data[:5].astype(float)
            print("RESULT", json.dumps(model.to_sklearn().predict_proba(X).tolist()))
        finally:
            spark.stop()
    """)
    # A classic session in the child, whatever this run's session is.
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("SPARK_CONNECT", "SPARK_REMOTE"))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=240, env={**env, "SPARK_LOCAL_IP": "127.0.0.1"})
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stderr[-3000:]
    np.testing.assert_array_equal(np.array(json.loads(lines[0][len("RESULT "):])), expected)


def test_sklearn_and_spark_models_convert_both_ways(digits_frames):
    _, test = digits_frames
    X, y = load_digits(return_X_y=True)
    dbn = DistributedDBN(hidden_layer_sizes=(32,), pretrain_epochs=3, max_iter=15,
                         random_state=0).fit(X / 16.0, y.astype(float))
    model = DBNClassificationModel.from_sklearn(dbn).setFeaturesCol("scaled")
    assert model.getOrDefault("hiddenLayerSizes") == [32] and model.getOrDefault("seed") == 0
    frame = VectorAssembler(inputCols=COLUMNS, outputCol="raw").transform(test)
    scaled = functions.transform(vector_to_array("raw"), lambda v: v / 16.0)
    frame = frame.withColumn("scaled", array_to_vector(scaled))
    scored = model.transform(frame).select("scaled", "prediction").toPandas()
    expected = dbn.predict(np.stack(scored.scaled.map(lambda v: v.toArray())))
    np.testing.assert_array_equal(scored.prediction.to_numpy(), expected)
    assert model.to_sklearn() is dbn
    with pytest.raises(ValueError, match="softmax head"):
        DBNClassificationModel.from_sklearn(
            DistributedDBN(hidden_layer_sizes=(8,), pretrain_epochs=1).fit(X / 16.0))


def test_unsupervised_features_as_a_vector_column(digits_frames):
    train, test = digits_frames
    pipeline = Pipeline(stages=[
        VectorAssembler(inputCols=COLUMNS, outputCol="raw"),
        MinMaxScaler(inputCol="raw", outputCol="scaled"),
        DBNFeatureLearner(featuresCol="scaled", outputCol="codes", hiddenLayerSizes=[16, 8],
                          pretrainEpochs=2, seed=0),
    ])
    model = pipeline.fit(train)
    assert isinstance(model.stages[-1], DBNFeatureModel)
    codes = model.transform(test).select("codes").first().codes.toArray()
    assert codes.shape == (8,) and np.all((codes >= 0) & (codes <= 1))


def test_a_streaming_dataframe_is_scored(digits_frames, spark, tmp_path):
    train, test = digits_frames
    assembler = VectorAssembler(inputCols=COLUMNS, outputCol="features")
    model = DBNClassifier(**QUICK).fit(assembler.transform(train))
    source = tmp_path / "incoming"
    test.write.parquet(str(source))
    stream = spark.readStream.schema(test.schema).parquet(str(source))
    query = (model.transform(assembler.transform(stream)).select("label", "prediction")
             .writeStream.format("memory").queryName("skdbn_scored")
             .trigger(availableNow=True).start())
    try:
        assert query.awaitTermination(180)
    finally:
        query.stop()
    scored = spark.sql("SELECT * FROM skdbn_scored")
    assert scored.count() == test.count()
    assert _accuracy(scored) > 0.9
