"""Shared fixtures of the jaxgd test suite.

Nothing is enabled globally: float64 is switched on per test with the ``x64`` fixture
(or the ``enable_x64()`` context manager), so float32 tests keep JAX's default speed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

# XLA's compiled programs are kept on disk in the checkout (.xla_cache/, git-ignored,
# ~60 MB after both tiers; delete it at any time) for this session, the slow tier after
# the fast one, and their subprocesses (the README's commands, the processes of a
# distributed test): the slow tier's commands compile many programs the fast tier's
# experiments compiled. Measured on the 2-core VM: the slow tier 16.3 min without it,
# 9.4 and 12.9 min after the fast tier with it (the fast tier itself unchanged). No size
# limit: JAX's limit scans the whole directory at every write. A cache the user set up
# is used as it is.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(Path(__file__).parents[1] / ".xla_cache")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402  (after the cache settings: jax reads them on import)

# and in case a plugin imported jax before this file
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# not tests: a sitecustomize that hides packages from subprocesses (test_optional_deps)
collect_ignore = ["hide_modules"]


@contextlib.contextmanager
def enable_x64():
    """Run the body with ``jax_enable_x64`` on, restoring the previous value after."""
    if hasattr(jax, "enable_x64"):  # jax >= 0.8: a context manager
        with jax.enable_x64(True):
            yield
        return
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


@pytest.fixture
def x64():
    """Run the test with float64 enabled (``jnp.zeros(1).dtype == float64``)."""
    with enable_x64():
        yield


@pytest.fixture
def x64_context():
    """The ``enable_x64`` context manager, for tests that mix float32 and float64."""
    return enable_x64


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _report(name: str, **numbers: float) -> None:
    body = ", ".join(f"{k}={v:.3g}" for k, v in numbers.items())
    print(f"\n[parity] {name}: {body}")


@pytest.fixture
def report():
    """``report(name, max_abs=..., max_rel=...)`` prints measured parity errors (``-s``)."""
    return _report


class CompileCounter(logging.Handler):
    """Counts JAX's 'Compiling ...' log records (``jax_log_compiles``)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if "Compiling" in msg or "XLA compilation" in msg:
            self.messages.append(msg)


@pytest.fixture
def compiles():
    counter = CompileCounter()
    loggers = [logging.getLogger(n) for n in ("jax._src.dispatch", "jax._src.interpreters.pxla")]
    old = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)
    for lg in loggers:
        lg.addHandler(counter)
    try:
        yield counter
    finally:
        for lg in loggers:
            lg.removeHandler(counter)
        jax.config.update("jax_log_compiles", old)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Release every module's compiled programs after it: XLA:CPU maps each compiled
    kernel into memory separately, and a test process that kept a whole tier's
    programs neared Linux's 65 530 maps per process (63 331 measured in one of the two
    fast-tier workers) and, past them, died of a segmentation fault in the next compile
    (reproduced by tests/maps_worker.py)."""
    yield
    import gc

    import jaxgd

    jaxgd.clear_caches()
    gc.collect()
