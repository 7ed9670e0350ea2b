"""skdbn: deep belief networks trained across Apache Spark, as scikit-learn estimators."""

__all__ = ["CheckpointWarning", "DistributedDBN", "ParallelSearchWarning", "loopback_session",
           "release_workers"]
__version__ = "0.1.0"


def __getattr__(name):
    # Imported on first use: Spark's Python workers unpickle training tasks that need only
    # the numpy parts of skdbn, and stay lighter (no scikit-learn) without the estimator.
    if name == "DistributedDBN":
        from ._dbn import DistributedDBN

        return DistributedDBN
    if name == "CheckpointWarning":
        from ._checkpoint import CheckpointWarning

        return CheckpointWarning
    if name == "release_workers":
        from ._pool import release_workers

        return release_workers
    if name == "loopback_session":
        from .spark.session import loopback_session

        return loopback_session
    if name == "ParallelSearchWarning":
        from .spark.session import ParallelSearchWarning

        return ParallelSearchWarning
    raise AttributeError(f"module 'skdbn' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
