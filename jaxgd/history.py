"""The layout of a run's history: one typed description of its columns.

The program writes the history, the engine and the population gather it from the program
calls, the results read it and the loss's checks keep the names of its metrics clear of
it: all of them take the names, the order, the dtypes and the per-step columns from here.

A history holds, per configuration:

- the scalar columns (:data:`SCALARS`, one value per evaluation; with a step budget
  ``step`` takes the place of ``epoch``): in the program they are
  packed into one ``[rows, columns]`` array (:data:`PACKED`) in the order of
  :attr:`HistoryLayout.scalars`, so an evaluation writes its row with one update;
  ``objective`` is recorded with an ``l1``/``l2`` penalty, ``val_loss`` with validation
  data (or folds); ``epoch`` keeps the packed dtype (at least float32: epoch numbers stay
  exact), the others the run's dtype;
- the loss's metrics: ``<m>`` (full data, or the batch mean), ``batch_<m>`` and, with
  validation, ``val_<m>`` (at least float32);
- ``step_loss`` (``record_steps=True``): the per-step losses, ``eval_every`` rows of
  ``steps_per_epoch`` per evaluation (one row per epoch, not per evaluation; with a step
  budget one row of one loss per update);
- ``params[...]`` (``record_params=True``): the parameter leaves after each evaluation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

EPOCH = "epoch"
STEP = "step"  # in place of EPOCH with a step budget (steps=): each row's last update
OBJECTIVE = "objective"
VAL_LOSS = "val_loss"
STEP_LOSS = "step_loss"
PACKED = "scalars"  # the key of the packed scalar columns inside the program
PARAMS_PREFIX = "params"  # the recorded parameter leaves: params['w'], params['layers'][0]...
# the scalar columns, in the order of the packed row (optional ones where they are recorded)
SCALARS = (EPOCH, "loss", "batch_loss", "grad_norm", "lr", OBJECTIVE, VAL_LOSS)
EXACT = (EPOCH, STEP)  # kept in the packed dtype (at least float32), not the run's dtype
# packed only, past float32's exact integers (a budget of more than EXACT_INT epochs or
# updates): the row index's low 8 bits; the index column then holds the rest (a multiple
# of 256, exact in float32 up to 2**32) and the host adds them up in float64
INDEX_LOW = "index_low"
EXACT_INT = 2**24  # float32 holds every integer up to this exactly
PER_STEP = (STEP_LOSS,)  # one row per epoch (steps_per_epoch values), not per evaluation
STANDARD = SCALARS + (STEP,) + PER_STEP  # every column but the metrics and parameters
UNRANKED = (EPOCH, STEP, "lr")  # recorded columns that are no measure of a configuration


def index_values(index: Any, budget: int) -> dict[str, Any]:
    """A packed row's index entries (``index``: the row's last epoch or update, an int32
    array): the index as it is, or past :data:`EXACT_INT` its multiple of 256 and, in
    :data:`INDEX_LOW`, the rest (each exact in float32; :meth:`HistoryLayout.unpack`
    adds them up)."""
    high = (index >> 8) << 8 if budget > EXACT_INT else index
    return {EPOCH: high, STEP: high, INDEX_LOW: index & 255}


class HistoryLayout(NamedTuple):
    """The columns of one program's history.

    Build it with :meth:`of`; the program (:func:`jaxgd.program.history_layout`) derives
    it from its spec.
    """

    scalars: tuple[str, ...]  # the packed scalar columns, in their order
    metrics: tuple[str, ...] = ()  # the rows of the loss's metrics
    per_step: tuple[str, ...] = ()  # recorded per-step columns (``step_loss``)

    @classmethod
    def of(cls, penalty: bool, has_val: bool, metrics: tuple[str, ...] = (),
           record_steps: bool = False, by_steps: bool = False,
           budget: int = 0) -> HistoryLayout:
        """The layout of a run: ``penalty`` (an ``l1``/``l2`` value is traced),
        ``has_val`` (validation data or folds), the loss's ``metrics`` by name,
        ``record_steps``, ``by_steps`` (a step budget: rows indexed by ``step``) and the
        ``budget`` of epochs or updates (past :data:`EXACT_INT`, the index is packed in
        two parts: :func:`index_values`)."""
        scalars = tuple((STEP if by_steps and c == EPOCH else c) for c in SCALARS
                        if (c != OBJECTIVE or penalty) and (c != VAL_LOSS or has_val))
        scalars += (INDEX_LOW,) if budget > EXACT_INT else ()
        rows: list[str] = []
        for m in metrics:
            rows += [m, f"batch_{m}"] + ([f"val_{m}"] if has_val else [])
        return cls(scalars, tuple(rows), PER_STEP if record_steps else ())

    def index(self, name: str) -> int:
        """The position of scalar column ``name`` in the packed row."""
        return self.scalars.index(name)

    def recorded(self) -> tuple[str, ...]:
        """The names of the scalar columns and metric rows (parameters aside)."""
        return tuple(c for c in self.scalars if c != INDEX_LOW) + self.metrics

    def unpack(self, hist: dict[str, Any], dt) -> dict[str, Any]:
        """History arrays by name from a history with the packed scalars (host arrays,
        the evaluations on the axis before the last of :data:`PACKED`); ``dt``: the run's
        dtype. ``hist`` loses its packed entry."""
        scal = hist.pop(PACKED)
        out = {}
        low = self.scalars.index(INDEX_LOW) if INDEX_LOW in self.scalars else None
        for i, name in enumerate(self.scalars):
            col = scal[..., i]
            if name in EXACT and low is not None:  # the index's two parts (NaN stays NaN)
                col = col.astype("float64") + scal[..., low].astype("float64")
            if name != INDEX_LOW:
                out[name] = col if name in EXACT else col.astype(dt)
        out.update(hist)
        return out


def per_step(name: str) -> bool:
    """Whether history column ``name`` has a row per epoch (not per evaluation)."""
    return name in PER_STEP


def index_name(hist) -> str:
    """The history column indexing the rows of ``hist``: :data:`STEP` (a step budget) or
    :data:`EPOCH`."""
    return STEP if STEP in hist else EPOCH


def evaluation_rows(name: str, evals: int, epochs: int) -> int:
    """The rows column ``name`` holds for ``evals`` evaluations of ``epochs`` epochs (with
    a step budget: ``epochs`` counts updates)."""
    return epochs if per_step(name) else evals


def metric_names(hist) -> list[str]:
    """The loss's metrics among history keys (``m``; ``batch_m`` and ``val_m`` besides)."""
    return sorted(k for k in hist if k not in STANDARD and not k.startswith(
        (PARAMS_PREFIX, "batch_", "val_")))
