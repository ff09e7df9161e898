"""Observers: what the engine calls on the host at the boundaries of a run.

The engine (:mod:`jaxgd.engine`) advances training states from one evaluation to another
in *program calls*; a call runs its evaluations in *blocks* (``prog.block``), and between
two blocks the host holds the state. An :class:`Observer` is told of every boundary:

* ``run_start(n_calls)`` once, before anything runs (``n_calls``: the program calls a
  plain sweep will make, chunks read back from a run folder included; None when not known
  in advance, as in a search);
* ``call_start(call)`` before a program call (or a chunk read back: ``call.cached``);
* ``block_rows(call, block)`` after each block of a call whose configurations are known
  (``call.configs``), before ``block_end``: the :class:`Block` of history rows the block
  recorded, on the host (only computed when an observer overrides this method);
* ``block_end(call, evals_done)`` after each block of a call: ``evals_done`` evaluations
  (``eval_every`` epochs each) of the call's configurations have run;
* ``call_end(call)`` after the call (also when it raised);
* ``run_end()`` once at the end (also on an error).

Every method does nothing by default: an observer overrides what it needs. The progress
bars (:class:`ProgressBar`) are the first observer; the live trackers
(:class:`jaxgd.trackers.Tracker`) write each block's rows.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from . import program

__all__ = ["Block", "Call", "Observer", "ProgressBar"]


class Call(NamedTuple):
    """One program call of a run, as observers see it."""

    spec: Any  # the group's jaxgd.spec.ProgramSpec
    group: int  # the group's index
    n_groups: int
    width: int  # configurations run side by side (streams x width, padding included)
    start: int  # the first evaluation of the call
    end: int  # the evaluation it stops before (at most the run's evaluations)
    desc: str = "epochs"
    cached: bool = False  # True: a chunk read back from the run folder (no program ran)
    # [streams, width] the sweep's configuration index of each slot (-1: padding), or None
    configs: Any = None


class Block(NamedTuple):
    """The history rows one block of a program call recorded, as host arrays."""

    first: int  # the evaluation of the block's first row
    configs: Any  # [n] the configuration index of each real slot (padding left out)
    # name -> [n, rows, ...] (``step_loss``: [n, rows x epochs per evaluation, steps]);
    # rows not run are NaN (their ``epoch`` too)
    history: dict[str, Any]


class Observer:
    """Host-side hooks called by the engine at the boundaries of a run (see the module
    docstring for the order); each method does nothing unless overridden."""

    def run_start(self, n_calls: int | None) -> None:
        """Before the first program call."""

    def call_start(self, call: Call) -> None:
        """Before a program call (or a chunk read back from the run folder)."""

    def block_rows(self, call: Call, block: Block) -> None:
        """After a block of ``call``: the history rows it recorded (see :class:`Block`)."""

    def block_end(self, call: Call, evals_done: int) -> None:
        """After a block of ``call``: evaluations up to ``evals_done`` have run."""

    def call_end(self, call: Call) -> None:
        """After a program call."""

    def run_end(self) -> None:
        """After the last program call (also on an error)."""


class ProgressBar(Observer):
    """tqdm bars: one over the epochs of each program call whose program reports its
    progress (compiled with ``progress=True``: the bar moves with the program's own
    callback, inside a block too) and, with ``calls=True``, one over a plain sweep's
    program calls. Only process 0 draws; the other processes run the same program and draw
    nothing.

    Args:
      calls: draw the bar over program calls (a plain sweep's chunks).
    """

    def __init__(self, calls: bool = False):
        self.lead = jax.process_index() == 0
        self.calls = calls and self.lead
        self.bar = self.epochs = None

    def run_start(self, n_calls: int | None) -> None:
        if self.calls:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=n_calls, desc="sweep", unit="chunk", leave=False)

    def call_start(self, call: Call) -> None:
        if self.bar is not None:
            self.bar.set_postfix(group=f"{call.group + 1}/{call.n_groups}", width=call.width)
        if self.lead and call.spec.progress and not call.cached:
            from tqdm.auto import tqdm

            unit = "step" if call.spec.by_steps else "epoch"
            bar = tqdm(total=call.spec.epochs, desc=call.desc, unit=unit, leave=False)
            per_tick = min(call.spec.eval_every, call.spec.epochs)

            def tick(done: int, active: int) -> None:
                bar.n = max(bar.n, done * per_tick)
                bar.set_postfix(active=active, refresh=False)
                bar.refresh()

            self.epochs = bar
            program.set_progress_sink(tick)

    def call_end(self, call: Call) -> None:
        if self.epochs is not None:
            jax.effects_barrier()
            program.set_progress_sink(None)
            self.epochs.close()
            self.epochs = None
        if self.bar is not None:
            self.bar.update(1)

    def run_end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
