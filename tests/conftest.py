"""Shared fixtures: one Spark session per test run, classic or Spark Connect.

Tests that take the ``spark`` fixture are marked ``spark``. ``pytest --spark-session=connect``
runs just those, on a local Spark Connect server (``SparkSession.builder.remote("local[2]")``)
instead of a classic ``local[2]`` session. A process holds one kind of session, so the two
kinds run as two pytest runs (the README's test commands and ``.ci/run`` do both).
"""

import pytest


def pytest_addoption(parser):
    parser.addoption("--spark-session", choices=("classic", "connect"), default="classic",
                     help="kind of SparkSession for the tests that use one ('connect' runs "
                          "only those)")


def pytest_collection_modifyitems(config, items):
    connect = config.getoption("--spark-session") == "connect"
    kept, dropped = [], []
    for item in items:
        uses_spark = "spark" in getattr(item, "fixturenames", ())
        if uses_spark:
            item.add_marker(pytest.mark.spark)
        (dropped if connect and not uses_spark else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_report_header(config):
    return f"spark session: {config.getoption('--spark-session')}"


@pytest.fixture(scope="session")
def spark_mode(request):
    """``"classic"`` or ``"connect"``: the kind of session this run tests."""
    return request.config.getoption("--spark-session")


@pytest.fixture(scope="session")
def spark(spark_mode):
    """A ``local[2]`` session bound to 127.0.0.1, stopped at the end of the run."""
    pytest.importorskip("pyspark", reason="pyspark is a dependency; needed here")
    from skdbn import loopback_session

    session = loopback_session("local[2]", app_name="skdbn-tests",
                               connect=spark_mode == "connect")
    yield session
    session.stop()
