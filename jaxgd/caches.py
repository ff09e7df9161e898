"""The programs jaxgd keeps compiled between calls, and the process's memory maps.

jaxgd keeps the jitted programs of its last :data:`jaxgd.program.PROGRAM_CACHE_SIZE`
specs, so that a call like one before it runs without compiling. XLA:CPU maps each
compiled kernel into memory separately (a few maps each: ~60 for a tiny fit's block
program, hundreds for a network's), and Linux allows a process ``vm.max_map_count``
maps (65 530 by default); past them the next compile dies of a segmentation fault, not
an error. :func:`clear_caches` releases what jaxgd keeps, and every call first checks
the process's maps (:func:`spare_memory_maps`; reading them costs ~0.4 us per map, so a
reading is reused until XLA compiles or loads a program, or a second passes).
"""

from __future__ import annotations

import gc
import time
import warnings
from typing import Any

import jax

from . import lossform
from .feed import clear_cache as clear_feed_cache
from .hostloop import host_program
from .program import compiled_program


def clear_caches() -> None:
    """Release the compiled programs jaxgd keeps for calls to come (its programs, the
    order functions of host-fed data, the losses' checked forms) and JAX's own caches
    (``jax.clear_caches()``).

    jaxgd keeps the programs of the last :data:`jaxgd.program.PROGRAM_CACHE_SIZE` specs
    so that a call like one before it runs without compiling. A long-lived process (a
    notebook, a test session, a driver script looping over many losses) can call this
    between experiments to free their memory, including the memory maps of XLA:CPU's
    compiled kernels (a process may hold 65 530 on Linux), and the losses and data the
    kept programs refer to; the next call of each kind compiles again."""
    compiled_program.cache_clear()
    host_program.cache_clear()
    clear_feed_cache()
    lossform.clear_memos()
    jax.clear_caches()


# the share of Linux's memory maps per process (vm.max_map_count) past which a call
# first releases the programs jaxgd keeps (:func:`clear_caches`)
MAP_SHARE = 0.8


def memory_maps() -> tuple[int, int] | None:
    """(memory maps this process holds, the most it may hold), or None off Linux."""
    try:
        with open("/proc/sys/vm/max_map_count", "rb") as f:
            limit = int(f.read())
        with open("/proc/self/maps", "rb") as f:  # one line per map
            return f.read().count(b"\n"), limit
    except (OSError, ValueError):
        return None


# XLA compiles (or loads from the persistent cache) every executable inside this event,
# and each new executable maps its kernels: the count of those seen so far
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_LOADS = [0]


def _count_load(event: str, secs: float, **_: Any) -> None:
    if event == _BACKEND_COMPILE:
        _LOADS[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count_load)

# a reading of the maps is reused for this long while no program is compiled or loaded
REREAD_S = 1.0


class _Reading:
    """The last reading of the maps: (held, limit) or None, the program loads counted
    then, and when it was taken (None: never)."""

    held: tuple[int, int] | None = None
    loads = 0
    at: float | None = None


def current_maps() -> tuple[int, int] | None:
    """:func:`memory_maps`, read again only when the last reading may be stale: XLA has
    compiled or loaded a program since (the kernels a program maps are what nears the
    limit), :data:`REREAD_S` seconds have passed, or the last reading was above half of
    :data:`MAP_SHARE` of the limit (then every call reads them). Reading
    ``/proc/self/maps`` costs ~0.4 us per map (0.4 ms for a process holding 1 000 maps,
    more than a tiny fit's program), which warm calls in a loop are spared."""
    r, now = _Reading, time.monotonic()
    if (r.at is None or r.loads != _LOADS[0] or now - r.at >= REREAD_S
            or (r.held is not None and r.held[0] > MAP_SHARE / 2 * r.held[1])):
        r.loads, r.held, r.at = _LOADS[0], memory_maps(), now
    return r.held


def spare_memory_maps() -> None:
    """Before a call compiles: a process holding more than :data:`MAP_SHARE` of the memory
    maps Linux allows it releases the programs jaxgd keeps, with a warning. Each
    compiled XLA:CPU kernel is a few maps; past the limit XLA cannot map the next
    program and the process crashes (a segmentation fault, not an error). The maps are
    those of :func:`current_maps` (read again after any compile)."""
    held = current_maps()
    if held is None or held[0] <= MAP_SHARE * held[1]:
        return
    clear_caches()
    gc.collect()
    _Reading.at = None  # read again: the maps released
    now = current_maps() or held
    warnings.warn(
        f"this process held {held[0]} of the {held[1]} memory maps Linux allows it "
        f"(vm.max_map_count); jaxgd released the compiled programs it kept ({now[0]} "
        "now). Call jaxgd.clear_caches() between experiments of a long-lived process, "
        "or raise vm.max_map_count.", RuntimeWarning, stacklevel=3)
