"""Benchmark rows of host-fed data (problem H of ``experiments/bench.py``).

- Throughput: problem B's sweep (linear regression, Adam, K learning rates, one Feistel
  order, ``metrics="batch"``) over a step budget of the same epochs, with the training
  data in device memory and as an ``np.memmap`` fed from the host (``feed="host"``);
  timed interleaved (the median of ``reps`` rounds, compile excluded): host / device.
- Memory: a ``fit`` reading every sample of a memmapped file several times larger than
  the peak resident set, in a fresh process: the file's size, the peak RSS (``VmHWM``,
  reset after a first tiny call has loaded the JAX runtime; the measured call compiles
  its own program, included), its rise over the RSS before the call, and the ratios (the
  file is written in a temporary folder and removed).

Usage: ``python -m experiments.bench_feed [--quick]`` prints both (``bench.py`` adds them
as rows and targets).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _loss(p, batch):
    import jax.numpy as jnp

    x, y = batch
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


def _memmap_copy(folder: str, name: str, a: np.ndarray) -> np.memmap:
    m = np.memmap(os.path.join(folder, name), a.dtype, "w+", shape=a.shape)
    m[:] = a
    m.flush()
    return np.memmap(os.path.join(folder, name), a.dtype, "r", shape=a.shape)


def throughput(x: np.ndarray, y: np.ndarray, batch: int, epochs: int, k: int, reps: int
               ) -> dict[str, float]:
    """Seconds of B's sweep with device data and with host-fed memmaps (interleaved)."""
    import jax.numpy as jnp

    import jaxgd

    n, d = x.shape
    steps = epochs * -(-n // batch)
    p0 = {"w": jnp.zeros(d, jnp.float32), "b": jnp.zeros((), jnp.float32)}
    with tempfile.TemporaryDirectory() as folder:
        mx, my = _memmap_copy(folder, "x", x), _memmap_copy(folder, "y", y)
        sources = {"device": (x, y), "host": (mx, my)}
        times: dict[str, list[float]] = {"device": [], "host": []}
        for r in range(reps + 1):  # round 0 compiles
            for name, data in sources.items():
                lrs = list(np.geomspace(1e-4, 1e-1, k) * (1 + 1e-6 * r))
                t = time.perf_counter()
                res = jaxgd.sweep(_loss, p0, data, optimizer="adam",
                                  grid={"learning_rate": lrs}, batch_size=batch, steps=steps,
                                  seed=0, metrics="batch", feed=name)
                np.asarray(res.table["final_loss"])
                if r:
                    times[name].append(time.perf_counter() - t)
    dev, host = float(np.median(times["device"])), float(np.median(times["host"]))
    return {"device_s": dev, "host_s": host, "ratio": dev / host, "steps": steps}


def rss_child(size_mb: int, d: int, batch: int, steps: int) -> dict[str, float]:
    """In this (fresh) process: write a memmapped file of ``size_mb`` MB, train on it
    host-fed, and report the peak RSS rise over the RSS before training (MB)."""
    import jax.numpy as jnp

    import jaxgd

    n = size_mb * 2**20 // (4 * (d + 1))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "x.f32")
        m = np.memmap(path, np.float32, "w+", shape=(n, d + 1))
        rng = np.random.default_rng(0)
        for i in range(0, n, 1 << 16):  # written in pieces, unmapped as it goes
            m[i:i + (1 << 16)] = rng.normal(size=(min(1 << 16, n - i), d + 1))
        m.flush()
        del m
        xy = np.memmap(path, np.float32, "r", shape=(n, d + 1))
        p0 = {"w": jnp.zeros(d + 1, jnp.float32)}

        def loss(p, b):
            return jnp.mean((b @ p["w"]) ** 2)

        # a tiny call first loads the JAX runtime (in the RSS before); the call measured
        # compiles its own program (another budget), which its peak includes
        jaxgd.fit(loss, p0, xy, hparams={"learning_rate": 1e-3}, batch_size=batch, steps=2,
                  metrics="batch", eval_every=1)
        before = _rss_mb()
        with open("/proc/self/clear_refs", "w") as f:  # VmHWM := VmRSS from here on
            f.write("5")
        t = time.perf_counter()
        res = jaxgd.fit(loss, p0, xy, hparams={"learning_rate": 1e-3}, batch_size=batch,
                        steps=steps, metrics="batch", eval_every=100)
        secs = time.perf_counter() - t
        peak = _status_mb("VmHWM")
    return {"file_mb": size_mb, "rss_before_mb": before, "peak_rise_mb": peak - before,
            "peak_mb": peak, "file_per_peak": size_mb / peak,
            "file_per_rise": size_mb / max(peak - before, 1e-9),
            "samples_read": res.steps_run * batch, "n": n, "seconds": secs}


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024
    return float("nan")


def rss(size_mb: int, d: int, batch: int, steps: int, timeout: float = 600) -> dict:
    """:func:`rss_child` in a fresh process."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = ("import json, sys; from experiments.bench_feed import rss_child; "
            f"print('RSS ' + json.dumps(rss_child({size_mb}, {d}, {batch}, {steps})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=timeout, cwd=root)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.split("RSS ", 1)[1])


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    n, k, mb = (16_384, 32, 512) if a.quick else (65_536, 256, 4096)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 64)).astype(np.float32)
    y = (x @ rng.normal(size=64)).astype(np.float32)
    print(throughput(x, y, 256, 3, k, 3))
    print(rss(mb, 63, 256, 4000))


if __name__ == "__main__":
    main()
