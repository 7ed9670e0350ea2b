"""skdbn on Spark: sessions, training stages and DataFrame data, on DataFrame APIs only.

- ``session``: finding or embedding a session, task slots and cores (classic and Connect).
- ``data``: feature columns, one-pass statistics, training partitions, Arrow inference.
- ``stages``: ``SparkEngine``, every training phase as a barrier ``mapInArrow`` stage.

pyspark is imported lazily inside the functions, so importing this package (and using a
fitted model) does not need pyspark.
"""

from .session import get_session, is_connect_session, is_spark_dataframe, loopback_session

__all__ = ["get_session", "is_connect_session", "is_spark_dataframe", "loopback_session"]
