"""``pyspark.ml`` stages on the same training code as :class:`skdbn.DistributedDBN`.

:class:`DBNClassifier` fits a :class:`DBNClassificationModel` (``prediction`` as a double,
``probability`` and ``rawPrediction`` as vectors, as Spark's evaluators expect);
:class:`DBNFeatureLearner` fits a :class:`DBNFeatureModel` whose ``outputCol`` holds the top
hidden layer's activations as a vector. Every ``DistributedDBN`` hyper-parameter is a typed
``Param`` of the same meaning, named in Spark's camelCase (``hidden_layer_sizes`` is
``hiddenLayerSizes``, ``random_state`` is ``seed``).

Saved models hold no pickle: ``path/metadata`` is Spark's JSON metadata of the stage (its
params, and the fitted model's scalars and lists), and ``path/data`` a Parquet table with one
row per array (``name``, ``dtype``, ``shape``, ``values`` as doubles, exact for float32 and
float64). Both go through Spark's own writers, so any Hadoop-compatible path works.
"""

import copy
import json

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasFeaturesCol,
    HasHandleInvalid,
    HasLabelCol,
    HasMaxIter,
    HasOutputCol,
    HasPredictionCol,
    HasProbabilityCol,
    HasRawPredictionCol,
    HasSeed,
    HasTol,
)
from pyspark.ml.util import (
    DefaultParamsReader,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)

from .._params import HYPER_PARAMETERS
from .session import is_connect_session

# The hyper-parameters that are Params of skdbn's own, and those of pyspark's shared Params
# (maxIter, tol, featuresCol, handleInvalid) that pass through as they are; seed and labelCol
# are mapped on their own (Spark seeds are any long, and the label column is the classifier's).
_OWN_PARAMS = tuple(p for p in HYPER_PARAMETERS if p.converter is not None)
_SHARED_PARAMS = tuple(p for p in HYPER_PARAMETERS if p.spark is not None
                       and p.converter is None and p.spark not in ("seed", "labelCol"))
_PASSED_PARAMS = _OWN_PARAMS + _SHARED_PARAMS


class _DBNParams(HasFeaturesCol, HasMaxIter, HasTol, HasSeed, HasHandleInvalid):
    """The hyper-parameters of :class:`skdbn.DistributedDBN` as Spark ``Param`` objects."""

    def _set_dbn_defaults(self):
        self._setDefault(**{p.spark: _spark_value(p.default) for p in _PASSED_PARAMS
                            if p.default is not None})

    def _dbn_arguments(self):
        """``DistributedDBN`` keyword arguments for the params as set."""
        arguments = {p.name: self.getOrDefault(p.spark) for p in _PASSED_PARAMS
                     if self.isDefined(p.spark)}
        arguments["hidden_layer_sizes"] = tuple(arguments["hidden_layer_sizes"])
        arguments["backend"] = "spark"
        if self.isSet("seed"):  # Spark seeds are any long; numpy's are 32-bit unsigned
            arguments["random_state"] = self.getSeed() % (1 << 32)
        return arguments

    def setFeaturesCol(self, value):
        """Sets ``featuresCol``."""
        return self._set(featuresCol=value)

    def setHandleInvalid(self, value):
        """Sets ``handleInvalid``: "error", "skip" or "keep" (rows with invalid features)."""
        return self._set(handleInvalid=value)


class _ClassifierColumns(HasLabelCol, HasPredictionCol, HasProbabilityCol,
                         HasRawPredictionCol):
    """The columns of a classification stage, with their setters."""

    def setLabelCol(self, value):
        """Sets ``labelCol``."""
        return self._set(labelCol=value)

    def setPredictionCol(self, value):
        """Sets ``predictionCol``."""
        return self._set(predictionCol=value)

    def setProbabilityCol(self, value):
        """Sets ``probabilityCol``."""
        return self._set(probabilityCol=value)

    def setRawPredictionCol(self, value):
        """Sets ``rawPredictionCol``."""
        return self._set(rawPredictionCol=value)


class _FeatureColumn(HasOutputCol):
    """The output column of a feature stage, with its setter."""

    def setOutputCol(self, value):
        """Sets ``outputCol``."""
        return self._set(outputCol=value)


class _Persisted(MLWritable, MLReadable):
    """Saving and loading a stage: its params, and a fitted model's network (no pickle)."""

    def write(self):
        """The stage's writer (``.save(path)``, ``.overwrite()``)."""
        return _StageWriter(self)

    @classmethod
    def read(cls):
        """The reader of saved stages of this class."""
        return _StageReader(cls)


class _FittedDBN:
    """What a fitted stage holds: the fitted ``DistributedDBN``, in both directions."""

    def __init__(self, dbn=None):
        super().__init__()
        self._set_dbn_defaults()
        self._dbn = dbn

    def to_sklearn(self):
        """The fitted ``DistributedDBN`` (numpy only: pickles, predicts without Spark)."""
        return self._dbn


def _to_int_or_auto(value):
    """A ``TypeConverters`` method of our own: "auto", or an int."""
    return "auto" if value == "auto" else TypeConverters.toInt(value)


def _to_dtype_name(value):
    """A ``TypeConverters`` method of our own: "float32" or "float64", also from numpy's
    ``float32``/``float64`` (as ``DistributedDBN(dtype=...)`` takes them)."""
    try:
        name = np.dtype(value).name
    except TypeError:
        name = None
    if name not in ("float32", "float64"):
        raise TypeError(f"dtype must be 'float32' or 'float64', got {value!r}")
    return name


_OWN_CONVERTERS = {"toIntOrAuto": _to_int_or_auto, "toDtypeName": _to_dtype_name}

for _parameter in _OWN_PARAMS:
    setattr(_DBNParams, _parameter.spark, Param(
        Params._dummy(), _parameter.spark, _parameter.doc,
        typeConverter=_OWN_CONVERTERS.get(_parameter.converter)
        or getattr(TypeConverters, _parameter.converter)))


def _spark_value(value):
    """A default of the table as a Param value (Spark lists where scikit-learn has tuples)."""
    return list(value) if isinstance(value, tuple) else value


class DBNClassifier(Estimator, _DBNParams, _ClassifierColumns, _Persisted):
    """A deep belief network classifier as a ``pyspark.ml`` Estimator.

    Trains :class:`skdbn.DistributedDBN` on the DataFrame's ``featuresCol`` (a vector or an
    array of numbers) and numeric ``labelCol``, across the session's executors, and returns a
    :class:`DBNClassificationModel`. Params: ``explainParams()`` lists them all with their
    defaults.
    """

    @keyword_only
    def __init__(self, **kwargs):
        super().__init__()
        self._set_dbn_defaults()
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs):
        """Set params by keyword (an unknown name raises)."""
        return self._set(**self._input_kwargs)

    def _fit(self, dataset):
        from pyspark.sql.types import NumericType

        from .._dbn import DistributedDBN

        label = self.getLabelCol()
        if label in dataset.columns and not isinstance(dataset.schema[label].dataType,
                                                       NumericType):
            raise ValueError(f"labelCol {label!r} must hold numbers, as for any Spark "
                             "classifier (index string labels with StringIndexer first)")
        dbn = DistributedDBN(label_col=label, **self._dbn_arguments())
        dbn.fit(dataset)
        return self._copyValues(DBNClassificationModel(dbn))



class DBNClassificationModel(_FittedDBN, Model, _DBNParams, _ClassifierColumns, _Persisted):
    """A fitted :class:`DBNClassifier`: adds ``rawPredictionCol`` (log-probabilities) and
    ``probabilityCol`` as vectors and ``predictionCol`` (the class, a double), computed on the
    executors. ``to_sklearn()`` is the fitted :class:`skdbn.DistributedDBN`."""

    @classmethod
    def from_sklearn(cls, dbn):
        """The model of a fitted (labelled) ``DistributedDBN``, with its settings as params."""
        if not hasattr(dbn, "classes_"):
            raise ValueError("the DistributedDBN has no softmax head: fit it with labels")
        model = cls(dbn)
        model._set(**_params_of(dbn), labelCol=dbn.label_col or "label")
        return model

    @property
    def numClasses(self):
        """Number of classes."""
        return len(self._dbn.classes_)

    def _transform(self, dataset):
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions

        probability = f"_skdbn_probability_{self.uid}"
        frame = _reading_stage_columns(self, probability_col=probability).predict_proba(dataset)
        values = functions.col(probability)
        classes = functions.array(*[functions.lit(float(c)) for c in self._dbn.classes_])
        best = functions.array_position(values, functions.array_max(values)).cast("int")
        tiny = functions.lit(np.finfo(np.float64).tiny)  # Spark's log(0) is null
        return (frame
                .withColumn(self.getRawPredictionCol(), array_to_vector(
                    functions.transform(values, lambda p: functions.log(
                        functions.greatest(p, tiny)))))
                .withColumn(self.getProbabilityCol(), array_to_vector(values))
                .withColumn(self.getPredictionCol(), functions.element_at(classes, best))
                .drop(probability))



class DBNFeatureLearner(Estimator, _DBNParams, _FeatureColumn, _Persisted):
    """Unsupervised feature learning: pretrains the RBM stack on ``featuresCol`` and returns
    a :class:`DBNFeatureModel` whose ``outputCol`` holds the top hidden layer's activations."""

    @keyword_only
    def __init__(self, **kwargs):
        super().__init__()
        self._set_dbn_defaults()
        self._setDefault(outputCol="dbn_features")
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs):
        """Set params by keyword (an unknown name raises)."""
        return self._set(**self._input_kwargs)

    def _fit(self, dataset):
        from .._dbn import DistributedDBN

        dbn = DistributedDBN(label_col=None, **self._dbn_arguments())
        dbn.fit(dataset)
        return self._copyValues(DBNFeatureModel(dbn))



class DBNFeatureModel(_FittedDBN, Model, _DBNParams, _FeatureColumn, _Persisted):
    """A fitted :class:`DBNFeatureLearner`: adds ``outputCol``, the top hidden layer's mean
    activations as a vector. ``to_sklearn()`` is the fitted :class:`skdbn.DistributedDBN`."""

    def __init__(self, dbn=None):
        super().__init__(dbn)
        self._setDefault(outputCol="dbn_features")

    @classmethod
    def from_sklearn(cls, dbn):
        """The feature model of a fitted ``DistributedDBN``, with its settings as params."""
        model = cls(dbn)
        model._set(**_params_of(dbn))
        return model

    def _transform(self, dataset):
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions

        column = self.getOutputCol()
        frame = _reading_stage_columns(self, transform_col=column).transform(dataset)
        return frame.withColumn(column, array_to_vector(functions.col(column)))



def _reading_stage_columns(model, **output):
    """The model's ``DistributedDBN`` (a shallow copy) reading the stage's features column,
    treating invalid rows as the stage says, and writing the ``output`` column it is given
    (e.g. ``probability_col=...``): its DataFrame inference runs on the executors."""
    return copy.copy(model._dbn).set_params(features_col=model.getFeaturesCol(),
                                            handle_invalid=model.getHandleInvalid(), **output)


def _params_of(dbn):
    """Spark params for the settings of a ``DistributedDBN``."""
    settings = dbn.get_params()
    params = {p.spark: settings[p.name] for p in _PASSED_PARAMS
              if settings[p.name] is not None and p.name != "features_col"}
    params["hiddenLayerSizes"] = list(np.atleast_1d(settings["hidden_layer_sizes"]))
    if isinstance(settings["features_col"], str):
        params["featuresCol"] = settings["features_col"]
    if isinstance(settings["random_state"], int):
        params["seed"] = settings["random_state"]
    return params


# ---------------------------------------------------------------------------- persistence

def _fitted_state(dbn):
    """A fitted ``DistributedDBN``'s attributes: JSON values, and numeric arrays by name."""
    plain, arrays = {}, {}
    for name, value in dbn.get_fitted_state().items():
        if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.number):
            arrays[name] = value
        elif isinstance(value, list) and value and all(isinstance(v, np.ndarray)
                                                      for v in value):
            plain[name] = {"list_of_arrays": len(value)}
            arrays.update({f"{name}[{i}]": v for i, v in enumerate(value)})
        elif isinstance(value, np.ndarray):
            plain[name] = {"array": value.tolist(), "dtype": value.dtype.str}
        else:
            plain[name] = json.loads(json.dumps(value, default=_plain_value))
    return plain, arrays


def _plain_value(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot save a {type(value).__name__} attribute")


def _restore_fitted(dbn, plain, arrays):
    """``dbn`` with the fitted state that ``_fitted_state`` split into ``plain`` values and
    ``arrays``."""
    state = {name: array for name, array in arrays.items() if "[" not in name}
    for name, value in plain.items():
        if isinstance(value, dict) and "list_of_arrays" in value:
            value = [arrays[f"{name}[{i}]"] for i in range(value["list_of_arrays"])]
        elif isinstance(value, dict) and "array" in value:
            value = np.array(value["array"], dtype=np.dtype(value["dtype"]))
        state[name] = value
    return dbn.set_fitted_state(state)


class _StageWriter(MLWriter):
    def __init__(self, instance):
        super().__init__()
        self.instance = instance

    def save(self, path):
        """Save the stage to ``path`` (``overwrite()`` first to replace what is there)."""
        # Spark's own overwrite removes the directory through the JVM, which a Connect
        # client has not: there both files are written in overwrite mode instead.
        if self.shouldOverwrite and not is_connect_session(self._session()):
            self._handleOverwrite(path)
        self.saveImpl(path)

    def _session(self):
        from pyspark.sql import SparkSession

        return self.sparkSession or SparkSession.getActiveSession()

    def saveImpl(self, path):
        spark = self._session()
        mode = "overwrite" if self.shouldOverwrite else "error"
        dbn = getattr(self.instance, "_dbn", None)
        extra = {}
        if dbn is not None:
            plain, arrays = _fitted_state(dbn)
            extra = {"skdbn": {"params": json.loads(json.dumps(
                dbn.get_params(), default=_plain_value)), "fitted": plain}}
            rows = [(name, a.dtype.str, list(a.shape), a.astype(np.float64).ravel().tolist())
                    for name, a in arrays.items()]
            (spark.createDataFrame(rows, "name string, dtype string, shape array<int>, "
                                         "values array<double>")
             .coalesce(1).write.mode(mode).parquet(f"{path}/data"))
        metadata = DefaultParamsWriter._get_metadata_to_save(self.instance, spark, extra)
        (spark.createDataFrame([(metadata,)], "value string").coalesce(1)
         .write.mode(mode).text(f"{path}/metadata"))


class _StageReader(MLReader):
    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def load(self, path):
        """The stage saved at ``path``."""
        from pyspark.sql import SparkSession

        spark = self.sparkSession or SparkSession.getActiveSession()
        metadata = DefaultParamsReader.loadMetadata(path, spark)
        saved = metadata.get("skdbn")
        if saved is None:
            stage = self.cls()
        else:
            from .._dbn import DistributedDBN

            arrays = {}
            for row in spark.read.parquet(f"{path}/data").toArrow().to_pylist():
                values = np.asarray(row["values"], dtype=np.float64)
                arrays[row["name"]] = values.astype(np.dtype(row["dtype"])).reshape(
                    row["shape"])
            params = dict(saved["params"])
            params["hidden_layer_sizes"] = tuple(np.atleast_1d(params["hidden_layer_sizes"]))
            dbn = _restore_fitted(DistributedDBN(**params), saved["fitted"], arrays)
            stage = self.cls(dbn)
        stage._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(stage, metadata)
        return stage
