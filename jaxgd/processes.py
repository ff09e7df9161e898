"""The processes of a multi-process run, and the results they read home.

With several processes (``jax.distributed``) every process runs the same programs and the
same number of calls: the decisions they take apart (progress bars, chunks read back
from the run folder, a checkpoint one process asks for, timings) are agreed on first
(``agree_*``). :func:`to_host` and :func:`host_trees` bring a call's results to the host
(gathered from every process where a process holds only its part).
"""

from __future__ import annotations

import jax
import numpy as np


def agree_progress(progress: bool) -> bool:
    """With several processes, progress is on when any process asks for it: the progress
    callback is part of the compiled program, and every process must run the same program
    (else their collectives mismatch). Only process 0 draws the bars."""
    if jax.process_count() == 1:
        return progress
    from jax.experimental import multihost_utils

    asked = multihost_utils.process_allgather(np.int32(progress))
    return bool(np.any(np.asarray(asked)))


def agree_fingerprint(fingerprint: str | None) -> None:
    """With several processes, refuse (on every process) a run whose processes were given
    different sweeps: they would compile different programs and wait for each other's
    collectives for ever."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    words = np.frombuffer(bytes.fromhex(fingerprint), np.uint32)
    every = np.asarray(multihost_utils.process_allgather(words)).reshape(-1, words.size)
    if not (every == words).all():
        got = ", ".join(f"process {i}: {r.tobytes().hex()}" for i, r in enumerate(every))
        raise ValueError(f"the {len(every)} processes of this run were given different "
                         f"sweeps (fingerprints {got}): every process must run the same "
                         "sweep (the same config file, data and arguments)")


def agree_cached(cached):
    """With several processes, use a stored chunk only if every process has it (else all
    recompute it: a process that skipped the program would leave the others waiting)."""
    if jax.process_count() == 1:
        return cached
    from jax.experimental import multihost_utils

    have = multihost_utils.process_allgather(np.int32(cached is not None))
    return cached if bool(np.all(np.asarray(have))) else None


def agree_any(flag: bool) -> bool:
    """With several processes, True on every process when it is True on any (a
    checkpoint one process asks for, e.g. after a signal, is saved by all)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(np.asarray(multihost_utils.process_allgather(np.int32(flag)))))


def agree_floats(values: list[float]) -> list[float]:
    """With several processes, process 0's values on every process (decisions taken from
    timings must be the same everywhere)."""
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    return [float(v) for v in multihost_utils.broadcast_one_to_all(np.asarray(values))]


def replicated_bool(x) -> bool:
    """A scalar every device holds whole (the program's reduction over configurations)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return bool(np.asarray(x.addressable_data(0)))
    return bool(np.asarray(x))


def to_host(x):
    if jax.process_count() > 1 and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def host_trees(trees, to_host=to_host):
    """``trees`` with their arrays brought to the host by ``to_host``, read together: on
    an accelerator every array's copy starts before the first is awaited (one wait for
    the device, not one per array); a CPU array is read in place."""
    leaves, treedef = jax.tree.flatten(trees)
    if jax.process_count() == 1 and jax.default_backend() != "cpu":
        for x in leaves:
            if isinstance(x, jax.Array):
                x.copy_to_host_async()
    return jax.tree.unflatten(treedef, [to_host(x) for x in leaves])
