"""skdbn: deep belief networks trained across Apache Spark, as scikit-learn estimators."""

from ._dbn import DistributedDBN

__all__ = ["DistributedDBN"]
__version__ = "0.1.0"
