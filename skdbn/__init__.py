"""skdbn: deep belief networks trained across Apache Spark, as scikit-learn estimators."""

from ._dbn import DistributedDBN
from .spark import loopback_session

__all__ = ["DistributedDBN", "loopback_session"]
__version__ = "0.1.0"
