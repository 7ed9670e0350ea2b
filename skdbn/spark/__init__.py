"""skdbn on Spark: sessions, training stages, DataFrame data and pyspark.ml stages.

- ``session``: finding or embedding a session, task slots and cores (classic and Connect).
- ``training_frame``: a DataFrame prepared for a fit (label column, valid rows, the
  statistics pass, shard files, rows dealt to the workers).
- ``placement``: where a fit's barrier tasks run (slots, rendezvous, shard files).
- ``data``: feature columns, statistics of Arrow batches, training partitions, Arrow
  inference; ``shards``: shard files on a local master.
- ``stages``: ``SparkEngine``, every training phase as a barrier ``mapInArrow`` stage.
- ``classic``: what only a classic session tells (scheduler slots, task status).
- ``ml``: ``DBNClassifier`` / ``DBNClassificationModel`` and ``DBNFeatureLearner`` /
  ``DBNFeatureModel``, ``pyspark.ml`` Pipeline stages on the same training code.

pyspark is imported lazily, so importing this package (and using a fitted sklearn model) does
not need pyspark; the ``pyspark.ml`` stages import it when first named.
"""

from .session import get_session, is_connect_session, is_spark_dataframe, loopback_session

_ML_STAGES = ("DBNClassifier", "DBNClassificationModel", "DBNFeatureLearner", "DBNFeatureModel")

__all__ = ["get_session", "is_connect_session", "is_spark_dataframe", "loopback_session",
           *_ML_STAGES]


def __getattr__(name):
    if name in _ML_STAGES:
        from . import ml

        return getattr(ml, name)
    raise AttributeError(f"module 'skdbn.spark' has no attribute {name!r}")
