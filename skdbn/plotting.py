"""Pictures of a fitted ``DistributedDBN``, as scikit-learn style ``Display`` objects.

Each display is made with ``from_estimator(estimator, ...)``, which computes what to draw and
calls ``plot``; ``plot(ax=...)`` draws on given axes (or a new figure) and keeps the matplotlib
artists in attributes ending in ``_``. matplotlib is an optional dependency
(``pip install "skdbn[plot]"``), imported only when something is drawn.

- :class:`FiltersDisplay`: the receptive fields of hidden units, as a grid of images.
- :class:`TrainingCurvesDisplay`: the per-epoch figures of every stage of the fit.
- :class:`WorkerDisplay`: each worker's progress, or its drift from its peers, over time.
"""

import math

import numpy as np
from sklearn.utils.validation import check_is_fitted

__all__ = ["FiltersDisplay", "TrainingCurvesDisplay", "WorkerDisplay"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "skdbn's plots need matplotlib: pip install 'skdbn[plot]' (or matplotlib)"
        ) from exc
    return plt


def _figure_and_axes(ax, n_axes=1, width=4.0):
    """``ax`` as a list of ``n_axes`` axes, on a new figure when ``ax`` is None."""
    plt = _pyplot()
    if ax is None:
        figure, axes = plt.subplots(1, n_axes, figsize=(width * n_axes, 3.5), squeeze=False,
                                    layout="constrained")
        return figure, list(axes.ravel())
    axes = list(np.ravel(ax))
    if len(axes) != n_axes:
        raise ValueError(f"ax must hold {n_axes} axes here, got {len(axes)}")
    return axes[0].figure, axes


class FiltersDisplay:
    """Receptive fields of hidden units: how strongly each input feature drives a unit,
    shown as an image per unit, tiled in a grid.

    Parameters
    ----------
    filters : ndarray of shape (n_filters, height, width)
        The images, one per hidden unit.
    layer : int
        The layer they belong to (for the title).

    Attributes
    ----------
    image_ : matplotlib.image.AxesImage
        The grid, drawn as one image.
    ax_ : matplotlib.axes.Axes
        Axes of the grid.
    figure_ : matplotlib.figure.Figure
        Figure of the grid.
    """

    def __init__(self, filters, layer=0):
        self.filters = filters
        self.layer = layer

    @classmethod
    def from_estimator(cls, estimator, *, layer=0, n_filters=64, image_shape=None,
                       ax=None, cmap="gray"):
        """The first ``n_filters`` units of ``layer`` of a fitted ``estimator``.

        A unit of the first layer (``layer=0``) shows its column of ``coefs_[0]``; a unit of a
        higher layer shows the product of the weights below it with its own column (a linear
        picture of what it responds to in the input).

        Parameters
        ----------
        estimator : DistributedDBN
            A fitted model.
        layer : int, default=0
            Which hidden layer.
        n_filters : int, default=64
            Units to show (the first ones).
        image_shape : tuple of int, default=None
            ``(height, width)`` of the input images; None: square images, which needs a
            square number of features.
        ax : matplotlib Axes, default=None
            Where to draw; None: a new figure.
        cmap : str, default="gray"
            Colour map.

        Returns
        -------
        display : FiltersDisplay
        """
        check_is_fitted(estimator, "coefs_")
        # The RBM layers' weights, without a softmax head's.
        hidden = estimator.coefs_[:len(estimator.visible_intercepts_)]
        if not 0 <= layer < len(hidden):
            raise ValueError(f"layer must be in [0, {len(hidden) - 1}], got {layer}")
        weights = hidden[0]
        for above in hidden[1:layer + 1]:
            weights = weights @ above
        shape = _image_shape(weights.shape[0], image_shape)
        n = min(n_filters, weights.shape[1])
        filters = weights[:, :n].T.reshape(n, *shape)
        return cls(filters, layer).plot(ax=ax, cmap=cmap)

    def plot(self, ax=None, *, cmap="gray"):
        """Draw the grid on ``ax`` (a new figure when None); returns the display."""
        figure, (ax,) = _figure_and_axes(ax, width=4.5)
        self.image_ = ax.imshow(_tile(self.filters), cmap=cmap, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"layer {self.layer}: {len(self.filters)} receptive fields")
        self.ax_, self.figure_ = ax, figure
        return self


def _image_shape(n_features, image_shape):
    if image_shape is not None:
        if math.prod(image_shape) != n_features:
            raise ValueError(f"image_shape {tuple(image_shape)} does not hold the model's "
                             f"{n_features} features")
        return tuple(image_shape)
    side = math.isqrt(n_features)
    if side * side != n_features:
        raise ValueError(f"{n_features} features are not a square image; pass image_shape")
    return side, side


def _tile(filters):
    """One image of the filters in a near-square grid, each scaled to [0, 1], with NaN
    between them (drawn as the background)."""
    n, height, width = filters.shape
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full((rows * (height + 1) - 1, columns * (width + 1) - 1), np.nan)
    for index, image in enumerate(filters):
        low, high = image.min(), image.max()
        scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
        row, column = divmod(index, columns)
        top, left = row * (height + 1), column * (width + 1)
        grid[top:top + height, left:left + width] = scaled
    return grid


class TrainingCurvesDisplay:
    """Per-epoch figures of a fit: the reconstruction error of each pretrained layer, and the
    fine-tuning loss with the validation score when ``early_stopping`` was on.

    Parameters
    ----------
    pretraining : list of list of float
        Reconstruction error per epoch, one list per layer.
    loss : list of float
        Fine-tuning loss per epoch (empty without fine-tuning).
    validation : list of float or None
        Validation score per fine-tuning epoch, or None; drawn against the last epochs of
        ``loss`` when shorter (after a warm start, which keeps the loss curve only).

    Attributes
    ----------
    lines_ : dict of str to matplotlib Line2D
        The drawn curves, by label.
    axes_ : list of matplotlib Axes
        One for pretraining, one for fine-tuning (when there was any).
    figure_ : matplotlib.figure.Figure
    """

    def __init__(self, pretraining, loss, validation=None):
        self.pretraining = pretraining
        self.loss = loss
        self.validation = validation

    @classmethod
    def from_estimator(cls, estimator, *, ax=None):
        """The curves of a fitted ``estimator`` (from ``pretraining_history_``,
        ``loss_curve_`` and ``validation_scores_``).

        Parameters
        ----------
        estimator : DistributedDBN
            A fitted model.
        ax : matplotlib Axes or list of them, default=None
            One axes, or two when the model was fine-tuned; None: a new figure.

        Returns
        -------
        display : TrainingCurvesDisplay
        """
        check_is_fitted(estimator, "coefs_")
        pretraining = [list(h.get("reconstruction_error", []))
                       for h in estimator.pretraining_history_]
        return cls(pretraining, list(estimator.loss_curve_),
                   estimator.validation_scores_).plot(ax=ax)

    def plot(self, ax=None):
        """Draw the curves on ``ax`` (see ``from_estimator``); returns the display."""
        figure, axes = _figure_and_axes(ax, n_axes=2 if self.loss else 1)
        self.lines_ = {}
        for index, errors in enumerate(self.pretraining):
            label = f"layer {index}"
            (self.lines_[label],) = axes[0].plot(range(1, len(errors) + 1), errors,
                                                  marker=".", label=label)
        axes[0].set(title="pretraining", xlabel="epoch", ylabel="reconstruction error")
        if self.pretraining:
            axes[0].legend()
        if self.loss:
            epochs = range(1, len(self.loss) + 1)
            (self.lines_["loss"],) = axes[1].plot(epochs, self.loss, color="C3", label="loss")
            axes[1].set(title="fine-tuning", xlabel="epoch", ylabel="training loss")
            if self.validation:
                # A warm start's validation scores cover its own epochs only: the last ones.
                twin = axes[1].twinx()
                (self.lines_["validation score"],) = twin.plot(
                    epochs[-len(self.validation):], self.validation, color="C2",
                    label="validation score")
                twin.set_ylabel("validation score")
                axes[1].legend(handles=[self.lines_["loss"], self.lines_["validation score"]],
                               loc="center right")
        self.axes_, self.figure_ = axes, figure
        return self


class WorkerDisplay:
    """Each worker's course through a distributed fit, over time since the fit began:
    samples trained in the current stage, or drift (the relative distance between its
    parameters and the states it merged from peers; see ``DistributedDBN.worker_trace_``).

    Parameters
    ----------
    trace : list of dict
        Rows of ``worker_trace_``.
    kind : {"samples", "drift"}
        What to draw.

    Attributes
    ----------
    lines_ : dict of int to matplotlib Line2D
        One line per worker.
    ax_ : matplotlib Axes
    figure_ : matplotlib.figure.Figure
    """

    _LABELS = {"samples": "samples trained in the phase",
               "drift": "drift from merged states"}

    def __init__(self, trace, kind="drift"):
        if kind not in self._LABELS:
            raise ValueError(f"kind must be 'samples' or 'drift', got {kind!r}")
        self.trace = trace
        self.kind = kind

    @classmethod
    def from_estimator(cls, estimator, *, kind="drift", ax=None):
        """The workers' trace of a fitted ``estimator`` (``worker_trace_``).

        Parameters
        ----------
        estimator : DistributedDBN
            A fitted model.
        kind : {"samples", "drift"}, default="drift"
            What to draw. A fit on one worker (or with ``sync="none"``) has no drift.
        ax : matplotlib Axes, default=None
            Where to draw; None: a new figure.

        Returns
        -------
        display : WorkerDisplay
        """
        check_is_fitted(estimator, "worker_trace_")
        return cls(estimator.worker_trace_, kind).plot(ax=ax)

    def plot(self, ax=None):
        """Draw one line per worker on ``ax`` (a new figure when None); returns the
        display."""
        figure, (ax,) = _figure_and_axes(ax, width=6.0)
        self.lines_ = {}
        for worker in sorted({row["worker"] for row in self.trace}):
            rows = [row for row in self.trace if row["worker"] == worker
                    and not (self.kind == "drift" and math.isnan(row["drift"]))]
            x, y = _broken_by_phase(rows, self.kind)
            (self.lines_[worker],) = ax.plot(x, y, color=f"C{worker % 10}", lw=1, marker=".",
                                             markersize=3, label=f"worker {worker}")
        for start, end, stage in _stage_spans(self.trace):
            ax.axvspan(start, end, color="0.93", zorder=0)
            ax.text(start, 0.98, f" {stage}", transform=ax.get_xaxis_transform(),
                    fontsize="small", va="top", rotation=90, clip_on=True)
        if self.kind == "drift" and any(not math.isnan(row["drift"]) for row in self.trace):
            ax.set_yscale("log")
        ax.set(xlabel="seconds since the fit began", ylabel=self._LABELS[self.kind])
        if self.lines_:
            ax.legend(loc="upper right", fontsize="small")
        self.ax_, self.figure_ = ax, figure
        return self


def _broken_by_phase(rows, kind):
    """x and y of one worker's rows, with a NaN between phases so that lines break there."""
    x, y, phase = [], [], None
    for row in rows:
        if phase is not None and row["phase"] != phase:
            x.append(np.nan)
            y.append(np.nan)
        phase = row["phase"]
        x.append(row["seconds"])
        y.append(row[kind])
    return x, y


def _stage_spans(trace):
    """``(start, end, stage)`` of each stage in the trace, in time order."""
    spans = {}
    for row in trace:
        start, end = spans.get(row["stage"], (row["seconds"], row["seconds"]))
        spans[row["stage"]] = (min(start, row["seconds"]), max(end, row["seconds"]))
    return sorted((start, end, stage) for stage, (start, end) in spans.items())
