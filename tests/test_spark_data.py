"""The Arrow conversions and statistics of ``skdbn.spark.data``, without a Spark session."""

import numpy as np
import pyarrow as pa
import pytest

from skdbn.spark.data import _Moments, arrow_matrix, arrow_rows, matrix_of, matrix_of_rows


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_rows_round_trip_and_slices(dtype):
    X = np.arange(40, dtype=dtype).reshape(10, 4)
    packed = arrow_rows(X)
    assert packed.type == pa.binary() and len(packed) == 10
    np.testing.assert_array_equal(matrix_of_rows(packed, 4, dtype), X)
    np.testing.assert_array_equal(matrix_of_rows(packed.slice(3, 5), 4, dtype), X[3:8])
    assert matrix_of_rows(packed.slice(0, 0), 4, dtype).shape == (0, 4)
    with pytest.raises(ValueError, match="does not hold 5"):
        matrix_of_rows(packed, 5, dtype)


def test_list_arrays_become_matrices_without_copies_and_bad_rows_are_refused():
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    lists = arrow_matrix(X)
    view = matrix_of(lists, 3, np.float32)
    np.testing.assert_array_equal(view, X)
    assert not view.flags.owndata  # a view of the Arrow buffer
    np.testing.assert_array_equal(matrix_of(lists.slice(1, 2), 3, np.float64), X[1:3])
    with pytest.raises(ValueError, match="must all have 2 values"):
        matrix_of(lists, 2, np.float32)
    with pytest.raises(ValueError, match="null rows"):
        matrix_of(pa.array([[1.0, 2.0], None]), 2, np.float64)
    with pytest.raises(ValueError, match="null values"):
        matrix_of(pa.array([[1.0, None]]), 2, np.float64)


@pytest.mark.parametrize("offset", [0.0, 1.7e9])
def test_moments_merged_over_batches_match_numpy(offset):
    rng = np.random.default_rng(0)
    X = offset + rng.standard_normal((5000, 3)) * [1.0, 10.0, 0.1]
    moments = _Moments()
    for part in np.array_split(X, 7):
        moments.add(part)
    assert moments.n == 5000
    np.testing.assert_allclose(moments.mean, X.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(moments.m2 / moments.n, X.var(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(moments.minimum, X.min(axis=0))
    np.testing.assert_array_equal(moments.maximum, X.max(axis=0))


def test_spark_size_settings_are_read_in_bytes():
    from skdbn.spark.data import _byte_size

    assert _byte_size("67108864") == 64 << 20
    assert _byte_size("64m") == _byte_size("64MB") == 64 << 20
    assert _byte_size("1g") == 1 << 30
    assert _byte_size(None) == 0
