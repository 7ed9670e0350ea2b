"""scikit-learn's own estimator checks: the public contract of a classifier and transformer."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from skdbn import DistributedDBN

# Small network and few epochs: the checks fit about a hundred times on tiny data.
CHECKED = DistributedDBN(hidden_layer_sizes=(16,), pretrain_epochs=2, max_iter=30,
                         batch_size=16, random_state=0)


@parametrize_with_checks([CHECKED])
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
