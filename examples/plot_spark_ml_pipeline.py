"""
A pyspark.ml pipeline on Spark
==============================

For data that lives in Spark, :class:`skdbn.spark.DBNClassifier` is a ``pyspark.ml`` stage:
it goes into a :class:`pyspark.ml.Pipeline` after Spark's own feature stages, is scored by
Spark's evaluators, and trains with the same code as :class:`~skdbn.DistributedDBN`, one
barrier task per worker, the workers gossiping.

The session comes from :func:`skdbn.loopback_session`: a ``local[2]`` session bound to
127.0.0.1 whose Python workers run this interpreter and whose JVM logs errors only. Pass
``connect=True`` for a Spark Connect session; everything below runs unchanged.
"""

# %%
# Digits as a DataFrame of 64 numeric columns
# -------------------------------------------
import pandas as pd
from pyspark.ml import Pipeline
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.ml.feature import MinMaxScaler, VectorAssembler
from sklearn.datasets import load_digits
from sklearn.metrics import ConfusionMatrixDisplay

from skdbn import loopback_session
from skdbn.plotting import TrainingCurvesDisplay
from skdbn.spark import DBNClassifier

spark = loopback_session("local[2]", app_name="skdbn-ml-pipeline")
digits = load_digits(as_frame=True).frame.astype("float64")
pixels = [column for column in digits.columns if column != "target"]
frame = spark.createDataFrame(digits.rename(columns={"target": "label"}))
train, test = frame.randomSplit([0.75, 0.25], seed=0)

# %%
# The pipeline
# ------------
pipeline = Pipeline(stages=[
    VectorAssembler(inputCols=pixels, outputCol="raw"),
    MinMaxScaler(inputCol="raw", outputCol="scaled"),
    DBNClassifier(featuresCol="scaled", hiddenLayerSizes=[256, 256], pretrainEpochs=10,
                  maxIter=50, numWorkers=2, seed=0),
])
model = pipeline.fit(train)
scored = model.transform(test)
accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(scored)
print(f"test accuracy {accuracy:.4f}")
scored.select("label", "prediction", "probability").show(5, truncate=40)

# %%
# Where it went wrong
# -------------------
# The predictions come back to pandas for a confusion matrix.
predicted = scored.select("label", "prediction").toPandas()
ConfusionMatrixDisplay.from_predictions(predicted["label"].astype(int),
                                        predicted["prediction"].astype(int))

# %%
# The fitted stage as a scikit-learn model
# ----------------------------------------
# ``to_sklearn()`` gives the same network as a fitted :class:`~skdbn.DistributedDBN`, which
# predicts on numpy arrays without Spark and has the fit's curves and worker diagnostics.
dbn = model.stages[-1].to_sklearn()
TrainingCurvesDisplay.from_estimator(dbn)
print(pd.DataFrame(dbn.worker_stats_).groupby("stage")[["samples", "messages_sent"]].sum())
spark.stop()
