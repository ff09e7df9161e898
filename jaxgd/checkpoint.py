"""Checkpoints inside a running program call (``checkpoint_every=`` with ``out=``).

A :class:`Checkpointer` decides where the host loop over a call's blocks
(:func:`jaxgd.engine.run_blocks`) cuts its blocks and when it saves: every ``k``
evaluations (an int), or every ``T`` seconds (a float, or a string such as ``"30s"``,
``"10min"``, ``"2h"``), and at the first block boundary after SIGTERM or SIGINT. Blocks also
end about every :data:`LATENCY` seconds, so that a signal is acted on soon. The block
program takes its stop index as an input, so a cut block is the same compiled program and
the evaluations it runs are the same bits: a run resumed from a checkpoint equals the run
never interrupted.

While a run with checkpoints goes on, :meth:`Checkpointer.catching` installs handlers for
SIGTERM and SIGINT (in the main thread only, and only over Python's default handler or a
Python function: an ignored signal or a handler installed outside Python is left alone).
A signal is noted; at the next block boundary the state is saved and the previous
handler is restored and acts as it would have (Python's default SIGINT handler raises
KeyboardInterrupt; the default SIGTERM action ends the process). A second signal of the
same kind before that boundary acts at once.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import threading
import time
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)
LATENCY = 1.0  # seconds: with checkpoints on, the host sees a signal at least this often
_UNITS = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}


def parse_every(name: str, value: Any) -> tuple[str, float] | None:
    """``checkpoint_every`` as ``("evals", k)`` or ``("seconds", T)`` (None: off).

    Raises ValueError/TypeError naming ``name`` for anything else."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be a number of evaluations (int), of seconds "
                        "(float) or a duration such as '30s', '10min', '2h'")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"{name}={value!r} must be a positive number of evaluations")
        return ("evals", float(value))
    if isinstance(value, float):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name}={value!r} must be a positive, finite number of seconds")
        return ("seconds", value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|sec|min|m|h)\s*", value)
        if m is None or float(m.group(1)) <= 0:
            raise ValueError(f"{name}={value!r} is not a duration: use a positive number "
                             "with a unit, e.g. '30s', '10min', '2h'")
        return ("seconds", float(m.group(1)) * _UNITS[m.group(2)])
    raise TypeError(f"{name}={value!r} must be a number of evaluations (int), of seconds "
                    "(float) or a duration such as '30s', '10min', '2h'")


def check_every(name: str, value: Any) -> Any:
    """The option's check: ``value`` as given, once :func:`parse_every` accepts it."""
    parse_every(name, value)
    return value


class Checkpointer:
    """Where a call's blocks end and when the host saves (see the module docstring).

    Args:
      every: ``checkpoint_every`` as given (int evaluations, float seconds or a duration).
    """

    def __init__(self, every: Any):
        self.kind, self.size = parse_every("checkpoint_every", every)
        self.pending: list[int] = []  # signals noted, not yet acted on
        self.previous: dict[int, Any] = {}  # the handlers ours replaced
        self.rate: float | None = None  # seconds per evaluation of the last block
        self.deadline = time.monotonic() + self.size
        self.block_t0 = time.monotonic()

    # -- the loop's questions
    def next_end(self, at: int, end: int, rows: int) -> int:
        """The evaluation the block starting at ``at`` stops before: at the next
        checkpoint, and after about :data:`LATENCY` seconds (at the speed of the last
        block; the first block runs one evaluation) so that a signal is seen soon."""
        self.block_t0 = time.monotonic()
        if self.rate is None:  # measure first: one evaluation
            return min(end, at + 1)
        soon = at + max(1, min(rows, int(LATENCY / max(self.rate, 1e-9))))
        if self.kind == "evals":
            k = int(self.size)
            return min(end, soon, (at // k + 1) * k)
        left = self.deadline - time.monotonic()
        return min(end, soon, at + max(1, int(left / max(self.rate, 1e-9))))

    def due(self, at: int, ran: int) -> bool:
        """After a block of ``ran`` evaluations that reached ``at``: save now?"""
        now = time.monotonic()
        if ran > 0:
            self.rate = (now - self.block_t0) / ran
        if self.pending:
            return True
        if self.kind == "evals":
            return at % int(self.size) == 0
        return now + 0.5 * (self.rate or 0.0) >= self.deadline

    def saved(self) -> None:
        """A checkpoint was written: the next interval starts; a noted signal acts."""
        self.deadline = time.monotonic() + self.size
        if self.pending:
            self.deliver()

    # -- signals
    def _note(self, signum: int, frame: Any) -> None:
        if signum in self.pending:  # the second one: act at once
            self.deliver()
            return
        self.pending.append(signum)

    @contextlib.contextmanager
    def catching(self):
        """Our handlers for SIGTERM and SIGINT while the run goes on; the previous ones
        restored after it (a signal noted and not acted on then acts)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in SIGNALS:
            prev = signal.getsignal(sig)
            if prev is signal.SIG_DFL or (callable(prev) and prev is not signal.SIG_IGN):
                self.previous[sig] = prev
                signal.signal(sig, self._note)
        try:
            yield self
        finally:
            self.restore()
            if self.pending:
                self.deliver()

    def restore(self) -> None:
        for sig, prev in self.previous.items():
            signal.signal(sig, prev)
        self.previous = {}

    def deliver(self) -> None:
        """Restore the previous handlers and let the first noted signal act on them."""
        previous = dict(self.previous)
        self.restore()
        signum = self.pending[0]
        self.pending = []
        prev = previous.get(signum, signal.SIG_DFL)
        if callable(prev):
            prev(signum, None)
            return
        os.kill(os.getpid(), signum)  # the default action (SIGTERM: the process ends)
        time.sleep(1.0)  # (delivered before this returns on the main thread)


def checkpointer_for(every: Any, out: Any, search: Any = None) -> Checkpointer | None:
    """The :class:`Checkpointer` of a call's ``checkpoint_every``/``out``/``search``
    options (None without ``checkpoint_every``); refuses the combinations that cannot
    checkpoint."""
    if every is None:
        return None
    if out is None:
        raise ValueError(f"checkpoint_every={every!r} needs out= (a run folder the "
                         "checkpoints are saved in)")
    if search is not None:
        raise ValueError(f"checkpoint_every={every!r} cannot be combined with search= (an "
                         "adaptive search saves its population at its rung boundaries)")
    return Checkpointer(every)
