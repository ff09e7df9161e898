"""A process near Linux's memory-map limit running many fits (tests/test_recompile.py).

Fills the process's memory maps up to ``limit - ROOM`` with single pages of its own,
then runs ``FITS`` fits of different losses (each compiles new programs, ~180 maps):
without jaxgd releasing its kept programs, XLA runs out of maps and the process dies of
a segmentation fault. Prints the number of memory-map warnings and each fit's loss.
Usage: python tests/maps_worker.py ROOM FITS
"""

import ctypes
import sys
import warnings

import jax.numpy as jnp

import jaxgd
from jaxgd import caches


def fill(room: int) -> None:
    libc = ctypes.CDLL(None)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    held, limit = caches.memory_maps()
    for i in range(limit - room - held):  # read-only and read-write in turn: not merged
        libc.mmap(None, 4096, 1 if i % 2 else 3, 0x22, -1, 0)


def main(room: int, fits: int) -> None:
    x, y = jaxgd.datasets.textbook_line()
    fill(room)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(fits):
            loss = lambda p, b, i=i: jnp.mean(  # noqa: E731
                (jnp.tanh(b[0] @ p["w"])[:, 0] - b[1]) ** 2 * (i + 1))
            r = jaxgd.fit(loss, {"w": jnp.ones((1, 1))}, (x, y), optimizer="adam",
                          hparams={"learning_rate": 0.01}, epochs=3)
            print("loss", i, r.history["loss"][-1], flush=True)
    print("warnings", sum("memory maps" in str(m.message) for m in caught))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
