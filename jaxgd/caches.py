"""The programs jaxgd keeps compiled between calls, and the process's memory maps.

jaxgd keeps the jitted programs of its last :data:`jaxgd.program.PROGRAM_CACHE_SIZE`
specs, so that a call like one before it runs without compiling. XLA:CPU maps each
compiled kernel into memory separately (a few maps each: ~60 for a tiny fit's block
program, hundreds for a network's), and Linux allows a process ``vm.max_map_count``
maps (65 530 by default); past them the next compile dies of a segmentation fault, not
an error. :func:`clear_caches` releases what jaxgd keeps, and every call first checks
the process's maps (:func:`spare_memory_maps`).
"""

from __future__ import annotations

import gc
import warnings

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
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f), limit
    except (OSError, ValueError):
        return None


def spare_memory_maps() -> None:
    """Before a call compiles: a process holding more than :data:`MAP_SHARE` of the memory
    maps Linux allows it releases the programs jaxgd keeps, with a warning. Each
    compiled XLA:CPU kernel is a few maps; past the limit XLA cannot map the next
    program and the process crashes (a segmentation fault, not an error)."""
    held = memory_maps()
    if held is None or held[0] <= MAP_SHARE * held[1]:
        return
    clear_caches()
    gc.collect()
    now = memory_maps() or held
    warnings.warn(
        f"this process held {held[0]} of the {held[1]} memory maps Linux allows it "
        f"(vm.max_map_count); jaxgd released the compiled programs it kept ({now[0]} "
        "now). Call jaxgd.clear_caches() between experiments of a long-lived process, "
        "or raise vm.max_map_count.", RuntimeWarning, stacklevel=3)
