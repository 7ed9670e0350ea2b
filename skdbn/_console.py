"""What a fit shows while it runs: a progress bar per stage, and lines of text.

A *stage* is what a user thinks of as one step of the fit: pretraining one layer, or the
whole fine-tuning (which the engines may run as several phases). ``StageProgress`` is the
monitor the engines feed with the workers' snapshots (``_watch.SNAPSHOT_FIELDS``) while a
phase runs: at ``verbose >= 1`` it drives a ``tqdm.auto`` bar (a widget in notebooks, text on
a terminal) with samples/s, the epoch and the current figure; at ``verbose >= 2`` it also
writes one line per epoch. Nothing is shown at ``verbose=0``.
"""

import math
import sys
import threading
import time

import numpy as np
from tqdm.std import tqdm as _text_tqdm

from ._watch import SNAPSHOT_FIELDS

_SAMPLES = SNAPSHOT_FIELDS.index("samples")
_EPOCHS = SNAPSHOT_FIELDS.index("epochs")
_FIGURE = SNAPSHOT_FIELDS.index("figure")


def report(verbose, message, level=1):
    """At ``verbose >= level``, print ``[DistributedDBN] message`` on stdout without breaking
    a progress bar being drawn."""
    if verbose >= level:
        _text_tqdm.write(f"[DistributedDBN] {message}", file=sys.stdout)
        sys.stdout.flush()  # lines keep pace with the bars when stdout is a pipe


def _bar(verbose, **settings):
    """A ``tqdm.auto`` bar, or a disabled text one at ``verbose < 1``: tqdm.auto is imported
    only when a bar is shown (in Jupyter without ipywidgets it warns on import)."""
    if verbose < 1:
        return _text_tqdm(disable=True)
    from tqdm.auto import tqdm

    return tqdm(**settings)


class StageProgress:
    """Progress of one stage over ``epochs`` passes of ``n_samples`` samples.

    Parameters
    ----------
    name : str
        What the stage is, e.g. ``"layer 0"`` or ``"fine-tuning"``.
    figure_name : str
        Name of the per-epoch figure the workers report, e.g. ``"loss"``.
    n_samples : int
        Training samples (over all workers).
    epochs : int
        Epochs the stage may run (fine-tuning can stop earlier).
    verbose : int
        The estimator's ``verbose``.
    """

    def __init__(self, name, figure_name, n_samples, epochs, verbose):
        self.name = name
        self.figure_name = figure_name
        self.n_samples = n_samples
        self.epochs = epochs
        self.verbose = verbose
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._samples_before = 0  # of the stage's finished phases
        self._epochs_before = 0
        self._n_workers = 1
        self._latest = {}  # rank -> the running phase's last snapshot
        self._figures = {}  # rank -> the running phase's figure of each epoch it reported
        self._printed = 0  # epochs whose line is written
        self._bar = _bar(verbose, total=n_samples * epochs, desc=name, unit="samples",
                         unit_scale=True, leave=False, dynamic_ncols=True)

    def attempt(self, n_workers):
        """A phase (or its rerun) begins on ``n_workers`` workers: forget the snapshots of
        the phase."""
        with self._lock:
            self._n_workers = n_workers
            self._latest = {}
            self._figures = {}
            self._show(self._samples_before)

    def update(self, rank, snapshot):
        """Worker ``rank``'s snapshot of the running phase (any thread)."""
        with self._lock:
            self._latest[rank] = snapshot
            self._keep_figure(rank, int(snapshot[_EPOCHS]), float(snapshot[_FIGURE]))
            values = np.array(list(self._latest.values()))
            # Gossip workers count the epochs of all of them, each by its own estimate: the
            # most advanced one knows best.
            epochs = int(values[:, _EPOCHS].max())
            figures = values[:, _FIGURE][~np.isnan(values[:, _FIGURE])]
            figure = float(figures.mean()) if figures.size else math.nan
            self._show(self._samples_before + int(values[:, _SAMPLES].sum()),
                       self._epochs_before + epochs, figure)
            self._write_known_epochs()

    def phase_done(self, results, history, epochs):
        """A phase of ``epochs`` epochs ended with the workers' ``results`` and their averaged
        per-epoch ``history`` (the figure's list): write the epoch lines not yet written."""
        with self._lock:
            self._latest = {}
            self._figures = {}
            self._samples_before += sum(r.samples_trained for r in results)
            first = self._epochs_before
            self._epochs_before += epochs
            figure = history[-1] if history else math.nan
            self._show(self._samples_before, self._epochs_before, figure)
            while self._printed < self._epochs_before:
                index = self._printed - first
                self._epoch_line(self._printed + 1,
                                 history[index] if 0 <= index < len(history) else math.nan)

    def _keep_figure(self, rank, epochs, figure):
        # A snapshot holds the figure of the worker's last epoch only: the epochs it skipped
        # (two ended between two snapshots) stay unknown (NaN) until the phase's end.
        known = self._figures.setdefault(rank, [])
        missing = epochs - len(known)
        if missing > 0:
            known.extend([math.nan] * (missing - 1) + [figure])

    def _write_known_epochs(self):
        """Write, in order, the lines of the epochs whose figure every worker of the phase
        has reported; the mean over the workers is the figure the fit records."""
        if len(self._figures) < self._n_workers:
            return
        complete = min(len(known) for known in self._figures.values())
        while self._printed - self._epochs_before < complete:
            index = self._printed - self._epochs_before
            figure = float(np.mean([known[index] for known in self._figures.values()]))
            if math.isnan(figure):
                return  # written with the exact figures at the phase's end
            self._epoch_line(self._printed + 1, figure)

    def note(self, message, level=2):
        """Write ``message``, prefixed with the stage's name, at ``verbose >= level``."""
        report(self.verbose, f"{self.name}: {message}", level)

    def close(self, summary):
        """Remove the bar and write the stage's ``summary`` line (at ``verbose >= 1``)."""
        with self._lock:
            self._bar.close()
        report(self.verbose, summary)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        # A stage that failed or was interrupted (Ctrl-C) leaves no bar behind.
        with self._lock:
            self._bar.close()

    def _show(self, samples, epochs=None, figure=math.nan):
        if self._bar.disable:
            return
        # Gossip workers stop on an estimate of everyone's progress, so together they may
        # train a little past the budget.
        self._bar.update(min(samples, self._bar.total) - self._bar.n)
        if epochs is not None:
            text = f"epoch {epochs}/{self.epochs}"
            if not math.isnan(figure):
                text += f", {self.figure_name} {figure:.4f}"
            self._bar.set_postfix_str(text, refresh=False)
        self._bar.refresh()

    def _epoch_line(self, epoch, figure):
        self._printed = epoch
        if self.verbose < 2:
            return
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (self._samples_before + sum(v[_SAMPLES] for v in self._latest.values())) / elapsed
        figure_text = "" if math.isnan(figure) else f", {self.figure_name} {figure:.5f}"
        report(self.verbose, f"{self.name}: epoch {epoch}/{self.epochs}{figure_text}, "
                             f"{rate:,.0f} samples/s", level=2)
