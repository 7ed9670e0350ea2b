"""
A pipeline tuned with GridSearchCV
==================================

:class:`~skdbn.DistributedDBN` is an ordinary scikit-learn estimator: it goes into a
:class:`~sklearn.pipeline.Pipeline`, is cloned, refitted and scored by
:class:`~sklearn.model_selection.GridSearchCV`, and its parameters are addressed with the
step's name (``dbn__hidden_layer_sizes``).

Here the grid asks two questions on the digits: how wide should the hidden layer be, and does
pretraining help when fine-tuning is short?

**Parallel search.** Keep ``n_jobs=1`` when the estimator trains on Spark: each fit already
uses every executor, and ``n_jobs > 1`` starts a Spark session (a JVM) in every worker process
of joblib, which is slower, not faster (skdbn warns when that happens). On local worker
processes a fit of more than 10,000 rows also uses every core; below that it trains in one
process, so ``n_jobs=-1`` spreads the candidates over the cores, as here.
"""

# %%
# The search
# ----------
import time

import matplotlib.pyplot as plt
import pandas as pd
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler

from skdbn import DistributedDBN

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.25, random_state=0, stratify=y)

pipeline = Pipeline([
    ("scale", MinMaxScaler()),  # Bernoulli visible units want [0, 1]
    ("dbn", DistributedDBN(max_iter=20, random_state=0)),
])
grid = {
    "dbn__hidden_layer_sizes": [(64,), (256,)],
    "dbn__pretrain_epochs": [0, 10],
}
search = GridSearchCV(pipeline, grid, cv=3, n_jobs=-1)
start = time.perf_counter()
search.fit(X_train, y_train)
print(f"{len(search.cv_results_['params'])} candidates x 3 folds in "
      f"{time.perf_counter() - start:.1f} s")
print(f"best: {search.best_params_}, cross-validated accuracy {search.best_score_:.4f}, "
      f"test accuracy {search.score(X_test, y_test):.4f}")

# %%
# The results
# -----------
results = pd.DataFrame(search.cv_results_)
table = results.pivot_table(index="param_dbn__hidden_layer_sizes",
                            columns="param_dbn__pretrain_epochs", values="mean_test_score")
print(table)
ax = table.plot.bar(rot=0, ylim=(0.85, 1.0), figsize=(6, 3.5))
ax.set(xlabel="hidden layer", ylabel="cross-validated accuracy",
       title="20 fine-tuning epochs, with and without pretraining")
ax.legend(title="pretraining epochs")
plt.tight_layout()
