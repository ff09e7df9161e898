"""Results of ``fit`` and ``sweep``: histories, tables, save/load and plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from .train import STOP_REASONS

__all__ = ["FitResult"]


@dataclass(frozen=True)
class FitResult:
    """The outcome of :func:`jaxgd.fit`.

    Attributes:
      params: final parameters (the last finite ones if the run diverged; the best
        monitored ones with ``restore_best=True``).
      history: dict of numpy arrays, one entry per epoch run: ``loss`` (training loss at
        epoch end), ``batch_loss`` (mean of the epoch's batch losses), ``grad_norm``,
        ``lr`` (learning rate of the epoch's last update), and ``val_loss``,
        ``objective`` (loss + penalty), ``step_loss`` [epoch, step] when present.
      stop_reason: "max_epochs", "grad_tol", "loss_target", "patience" or "diverged".
      epochs_run: epochs that ran (including the one where the run stopped).
      steps_run: parameter updates applied.
      best_epoch: epoch (0-based) of the best monitored loss, -1 if none.
      init_loss: the loss of the initial parameters on the training data.
    """

    params: Any
    history: dict[str, np.ndarray]
    stop_reason: str
    epochs_run: int
    steps_run: int
    best_epoch: int = -1
    init_loss: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_program(cls, out: dict[str, Any], spec: Any = None) -> FitResult:
        e = int(out["epochs_run"])
        hist = {k: np.asarray(v)[:e] for k, v in out["history"].items()}
        return cls(
            params=jax.tree.map(lambda a: a, out["params"]),
            history=hist,
            stop_reason=STOP_REASONS[int(out["reason"])],
            epochs_run=e,
            steps_run=int(out["steps_run"]),
            best_epoch=int(out["best_epoch"]),
            init_loss=float(out["init_loss"]),
        )

    @property
    def final_loss(self) -> float:
        loss = self.history.get("loss")
        return float(loss[-1]) if loss is not None and len(loss) else float("nan")

    def plot(self, ax=None, key: str = "loss", label: str | None = None):
        """Plot ``history[key]`` against epoch (log scale when positive); returns the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        y = self.history[key]
        ax.plot(np.arange(1, len(y) + 1), y, label=label or key)
        if np.all(y[np.isfinite(y)] > 0):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        return ax
