"""A catalogue of bad inputs, arrays and Spark DataFrames, for fit and inference, each with the
error it must get.

``tests/test_bad_input_catalogue.py`` checks every case; ``benchmarks/bad_input_table.py``
runs them all and prints the table kept in ``docs/reliability.md``.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError

from skdbn import DistributedDBN

QUICK = dict(hidden_layer_sizes=(8,), pretrain_epochs=1, max_iter=1, random_state=0)


@dataclass(frozen=True)
class Case:
    """One bad input: ``run(context)`` makes the call that must raise ``error`` (whose text
    must contain ``match``)."""

    data: str  # "array" or "DataFrame"
    method: str
    name: str
    run: Callable
    error: type
    match: str


class Context:
    """What the cases need: digits data, a fitted model, and (for DataFrames) a session."""

    def __init__(self, spark=None):
        X, y = load_digits(return_X_y=True)
        self.X, self.y = X[:300] / 16.0, y[:300]
        self.spark = spark
        self.fitted = DistributedDBN(**QUICK).fit(self.X, self.y)
        self.pretrained = DistributedDBN(**QUICK).fit(self.X)

    def copy_of_fitted(self, **params):
        """The fitted model with other parameters, the shared one left as it is."""
        return copy.deepcopy(self.fitted).set_params(**params)

    def with_value(self, value, row=3, column=5):
        X = self.X.copy()
        X[row, column] = value
        return X

    def frame(self, rows, schema):
        return self.spark.createDataFrame(rows, schema)

    def digits_frame(self, X=None, y=None, n=40):
        X = self.X[:n] if X is None else X
        y = self.y[:n] if y is None else y
        rows = [(x.tolist(), int(label)) for x, label in zip(X, y, strict=True)]
        return self.frame(rows, "features array<double>, label bigint")


def _fit(**params):
    return DistributedDBN(**{**QUICK, **params})


def _pyspark_python_error():
    from pyspark.errors import PythonException

    return PythonException


ARRAY_CASES = [
    Case("array", "fit", "NaN in X", lambda c: _fit().fit(c.with_value(np.nan), c.y),
         ValueError, "NaN"),
    Case("array", "fit", "infinity in X", lambda c: _fit().fit(c.with_value(np.inf), c.y),
         ValueError, "infinity"),
    Case("array", "fit", "1-D X", lambda c: _fit().fit(c.X[:, 0], c.y), ValueError,
         "2D array"),
    Case("array", "fit", "no rows", lambda c: _fit().fit(c.X[:0], c.y[:0]), ValueError,
         "0 sample"),
    Case("array", "fit", "y shorter than X", lambda c: _fit().fit(c.X, c.y[:-1]), ValueError,
         "inconsistent numbers of samples"),
    Case("array", "fit", "a single class", lambda c: _fit().fit(c.X, np.zeros_like(c.y)),
         ValueError, "class"),
    Case("array", "fit", "continuous y", lambda c: _fit().fit(c.X, c.y + 0.5), ValueError,
         "Unknown label type"),
    Case("array", "fit", "strings in X", lambda c: _fit().fit(np.full(c.X.shape, "a"), c.y),
         ValueError, "convert"),
    Case("array", "fit", "values around 1e300 (the scale overflows)",
         lambda c: _fit().fit(c.X * 1e300 - 5e299, c.y), ValueError,
         "too large to standardize"),
    Case("array", "fit", "more workers than rows",
         lambda c: _fit(n_workers=400, backend="local").fit(c.X, c.y), ValueError,
         "n_workers=400 is more than the 300"),
    Case("array", "fit", "Bernoulli units, values outside [0, 1]",
         lambda c: _fit(visible_units="bernoulli").fit(c.X * 16, c.y), ValueError,
         r"needs every value of X in \[0, 1\]"),
    Case("array", "fit", "other width when warm-starting",
         lambda c: c.copy_of_fitted(warm_start=True).fit(c.X[:, :10], c.y), ValueError,
         "features"),
    Case("array", "fit", "hidden_layer_sizes=(0,)",
         lambda c: _fit(hidden_layer_sizes=(0,)).fit(c.X, c.y), ValueError,
         "hidden_layer_sizes"),
    Case("array", "predict", "NaN in X", lambda c: c.fitted.predict(c.with_value(np.nan)),
         ValueError, "NaN"),
    Case("array", "predict", "other number of features",
         lambda c: c.fitted.predict(c.X[:, :10]), ValueError, "expecting 64 features"),
    Case("array", "predict", "1-D X", lambda c: c.fitted.predict(c.X[0]), ValueError,
         "2D array"),
    Case("array", "predict", "model not fitted", lambda c: DistributedDBN().predict(c.X),
         NotFittedError, "not fitted"),
    Case("array", "predict_proba", "model pretrained without labels",
         lambda c: c.pretrained.predict_proba(c.X), NotFittedError, "without labels"),
    Case("array", "score", "infinity in X",
         lambda c: c.fitted.score(c.with_value(np.inf), c.y), ValueError, "infinity"),
]

DATAFRAME_CASES = [
    Case("DataFrame", "fit", "features_col missing",
         lambda c: _fit(features_col="pixels").fit(c.digits_frame()), ValueError,
         "no column 'pixels'"),
    Case("DataFrame", "fit", "features_col of numbers",
         lambda c: _fit(features_col="label").fit(c.digits_frame()), TypeError,
         "must be a pyspark.ml vector"),
    Case("DataFrame", "fit", "label_col misspelled",
         lambda c: _fit(label_col="lable").fit(c.digits_frame()), ValueError,
         "label_col 'lable' is not a column"),
    Case("DataFrame", "fit", "labels of a wrong type",
         lambda c: _fit(label_col="features").fit(c.digits_frame()), TypeError,
         "class labels must be numbers, strings or booleans"),
    Case("DataFrame", "fit", "a null features row",
         lambda c: _fit().fit(c.frame([([0.1, 0.2], 0), (None, 1), ([0.3, 0.4], 1)],
                                      "features array<double>, label int")),
         ValueError, "null rows"),
    Case("DataFrame", "fit", "a null value in a vector",
         lambda c: _fit().fit(c.frame([([0.1, 0.2], 0), ([0.5, None], 1)],
                                      "features array<double>, label int")),
         ValueError, "null values"),
    Case("DataFrame", "fit", "vectors of different lengths",
         lambda c: _fit().fit(c.frame([([0.1, 0.2], 0), ([0.5], 1)],
                                      "features array<double>, label int")),
         ValueError, "different lengths"),
    Case("DataFrame", "fit", "NaN in a vector",
         lambda c: _fit().fit(c.frame([([0.1, 0.2], 0), ([0.5, float("nan")], 1)],
                                      "features array<double>, label int")),
         ValueError, "NaN or infinity"),
    Case("DataFrame", "fit", "a null label",
         lambda c: _fit().fit(c.frame([([0.1, 0.2], 0), ([0.5, 0.6], None)],
                                      "features array<double>, label int")),
         ValueError, "null labels"),
    Case("DataFrame", "fit", "no rows",
         lambda c: _fit().fit(c.frame([], "features array<double>, label int")), ValueError,
         "0 sample"),
    Case("DataFrame", "fit", "more workers than rows",
         lambda c: _fit(n_workers=2, label_col=None).fit(c.digits_frame(n=1)), ValueError,
         "n_workers=2 is more than the 1"),
    Case("DataFrame", "fit", "values around 1e300 (beyond float32)",
         lambda c: _fit().fit(c.digits_frame(X=c.X[:40] * 1e300 - 5e299)), ValueError,
         "beyond float32's range.*set dtype='float64'"),
    Case("DataFrame", "fit", "values around 1e300 in float64 (the scale overflows)",
         lambda c: _fit(dtype="float64").fit(c.digits_frame(X=c.X[:40] * 1e300 - 5e299)),
         ValueError, "too large to standardize"),
    Case("DataFrame", "fit", "a dtype numpy has no float for",
         lambda c: _fit(dtype="float16").fit(c.digits_frame()), ValueError,
         "'dtype' parameter of DistributedDBN must be"),
    Case("DataFrame", "fit", "y passed beside a DataFrame",
         lambda c: _fit().fit(c.digits_frame(), c.y[:40]), ValueError, "do not pass y"),
    Case("DataFrame", "fit", "early_stopping with a class of one row",
         lambda c: _fit(early_stopping=True, n_workers=2).fit(c.digits_frame(
             y=np.where((c.y[:40] == 9) & (np.arange(40) > 9), 8, c.y[:40]))), ValueError,
         r"classes \[9\] have only 1 row"),
    Case("DataFrame", "partial_fit", "a DataFrame",
         lambda c: _fit().partial_fit(c.digits_frame()), TypeError, "partial_fit takes arrays"),
    Case("DataFrame", "predict", "other number of features",
         lambda c: c.fitted.predict(c.frame([([0.1, 0.2], 0)],
                                            "features array<double>, label int")),
         ValueError, "expecting 64 features"),
    Case("DataFrame", "predict", "NaN in a vector",
         lambda c: c.fitted.predict(c.digits_frame(X=c.with_value(np.nan)[:10], n=10)).collect(),
         _pyspark_python_error, "invalid rows"),
    Case("DataFrame", "predict", "a null features row",
         lambda c: c.fitted.predict(c.frame([(c.X[0].tolist(), 0), (None, 1)],
                                            "features array<double>, label int")).collect(),
         _pyspark_python_error, "invalid rows"),
    Case("DataFrame", "predict", "vectors of different lengths",
         lambda c: c.fitted.predict(c.frame([(c.X[0].tolist(), 0), ([0.5], 1)],
                                            "features array<double>, label int")).collect(),
         _pyspark_python_error, "not 64 values long"),
    Case("DataFrame", "predict_proba", "features_col of numbers",
         lambda c: c.copy_of_fitted(features_col="label").predict_proba(c.digits_frame()),
         TypeError, "must be a pyspark.ml vector"),
    Case("DataFrame", "transform", "infinity in a vector",
         lambda c: c.fitted.transform(c.digits_frame(X=c.with_value(np.inf)[:10],
                                                     n=10)).collect(),
         _pyspark_python_error, "NaN or infinity"),
    Case("DataFrame", "score", "no label column",
         lambda c: c.fitted.score(c.digits_frame().drop("label")), ValueError,
         "label_col 'label' is not a column"),
    Case("DataFrame", "score", "y passed beside a DataFrame",
         lambda c: c.fitted.score(c.digits_frame(), c.y[:40]), ValueError, "do not pass y"),
]


def error_type(case):
    """The exception class a case expects (resolved lazily for pyspark's own classes)."""
    return case.error if isinstance(case.error, type) else case.error()
