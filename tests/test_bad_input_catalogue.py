"""Every case of ``bad_inputs``: arrays and DataFrames, fit and inference, get their error."""

import pickle
import re

import pytest
from bad_inputs import ARRAY_CASES, DATAFRAME_CASES, Context, error_type


@pytest.fixture(scope="module")
def array_context():
    return Context()


@pytest.fixture(scope="module")
def frame_context(spark):
    return Context(spark)


def _fitted_state(model):
    return pickle.dumps({k: v for k, v in vars(model).items() if k.endswith("_")})


def _check(case, context):
    before = _fitted_state(context.fitted)
    with pytest.raises(error_type(case)) as caught:
        case.run(context)
    assert re.search(case.match, str(caught.value)), str(caught.value)[:2000]
    assert _fitted_state(context.fitted) == before  # nothing of the fitted model changed


@pytest.mark.parametrize("case", ARRAY_CASES, ids=[f"{c.method}: {c.name}" for c in ARRAY_CASES])
def test_bad_array_input(case, array_context):
    _check(case, array_context)


@pytest.mark.parametrize("case", DATAFRAME_CASES,
                         ids=[f"{c.method}: {c.name}" for c in DATAFRAME_CASES])
def test_bad_dataframe_input(case, frame_context):
    _check(case, frame_context)


def test_the_catalogue_covers_at_least_thirty_kinds():
    assert len(ARRAY_CASES) + len(DATAFRAME_CASES) >= 30
    assert {c.method for c in DATAFRAME_CASES} >= {"fit", "predict", "transform", "score"}
