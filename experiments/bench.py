"""Benchmark: jaxgd against the textbook loop, PyTorch and per-configuration JAX + optax.

Runs the benchmark plan's problems in one process, side by side:

- A. 16-point noisy line, full batch, SGD lr 1e-4, 100 000 iterations (``jaxgd.fit``);
- B. linear regression N=65 536, d=64, B=256, Adam, 256 learning rates, 3 epochs, one
  shared shuffle order (``jaxgd.sweep``); also with losses that take a per-step key (a
  random feature mask), model state (BatchNorm-like centring) or both, against the plain
  loss in the same run;
- C. as B with 8 seeds x 32 learning rates, each seed its own shuffle;
- D. as B with batch sizes {1, 16, 64, 256, N} x 32 learning rates;
- E. digits: softmax regression and a 1-hidden-layer MLP, 64 learning rates each;
- M. memory: ``fit(epochs=10**6 and 10**9, loss_target=...)`` stopping early;
- H. host-fed data (``experiments/bench_feed.py``): B's sweep with the data as an
  ``np.memmap`` fed from the host against the same data in device memory (throughput
  ratio), and the peak RSS rise of a ``fit`` reading every sample of a memmapped file
  several times larger (4 GB; 512 MB with ``--quick``) in a fresh process;
- F. (only when asked: ``--problems F``) real networks against the loop a user would write
  ("peer 0": a jitted optax step in a Python loop, and a hand-written ``jit(lax.scan)``):
  a flax CNN with BatchNorm + dropout and an MLP on digits, a character transformer on
  standard-library source, A, B and C; ``fit`` and a sweep of N learning rates against N
  peer runs, with a parity check of the final parameters, timed as the minimum of
  interleaved rounds (``experiments/bench_f.py``, which says what each side computes);

The headline jaxgd row of every problem ("jaxgd (defaults)") calls ``fit``/``sweep`` as a
user writes it, with no tuning keywords (``metrics="full"``, ``eval_every=1``); tuned
rows (``eval_every=1000``, ``metrics="batch"``) are extra rows labelled "tuned".

against (1) the textbook NumPy loop, (2) PyTorch (``torch.optim`` + per-epoch
``randperm`` shuffling), (3) plain JAX + optax with one jitted ``lax.scan`` training
function per configuration (the learning rate is an argument, so it compiles once),
configurations run one after another, and (4) jaxgd. PyTorch is optional (the [test]
extra): without it its rows and target read "not installed (...)" and the rest runs.

Timing: median of ``--reps`` repetitions (3; 2 with ``--quick`` or ``--tiny``); compile
time reported apart (first call minus the median of later calls); every timed jaxgd
repetition uses new hyper-parameter values and the XLA compilations it triggers are
counted from JAX's compile log (``jax_log_compiles``). Peers that would take too long
for all K configurations run a subset (and, for very long runs, a prefix of the steps)
and are extrapolated linearly; the "measured" column says how much was run. FLOPs count
the matrix products exactly (every step's real batch, short last batches included): a
linear step costs 4*b*d per configuration (forward 2bd, gradient 2bd). The machine's
peak is a jitted 2048x2048 fp32 ``x @ y`` measured in the same run.

Memory: in-process rows report the rise of the peak RSS (``VmHWM`` after a reset through
``/proc/self/clear_refs``) during the timed calls; XLA allocates outside ``tracemalloc``,
and freed memory may be reused, so these are indicative. The memory line and the scaling
figures run every point in a fresh subprocess and report ``ru_maxrss`` above the
data-loaded baseline (compile included) and the peak above the RSS after the first call.

Usage: ``python -m experiments.bench [--quick | --tiny] [--out DIR] [--reps N]
[--problems A,B,C,D,E,M,H,F]`` (the default runs A-E, M and H; F adds ``f.csv``/``f.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_OUT = Path("demo_out") / "bench"
PROBLEMS = ("A", "B", "C", "D", "E", "M", "H", "F")  # M: memory rows; H: bench_feed.py
DEFAULT_PROBLEMS = ("A", "B", "C", "D", "E", "M", "H")  # F runs when asked (minutes of compiles)


# ----------------------------------------------------------------------------- sizes


@dataclasses.dataclass(frozen=True)
class Sizes:
    a_iters: int = 100_000
    a_text_iters: int = 100_000  # iterations the textbook loop actually runs (extrapolated)
    n: int = 65_536
    d: int = 64
    batch: int = 256
    epochs: int = 3
    k_lr: int = 256
    c_seeds: int = 8
    c_lrs: int = 32
    d_batches: tuple = (1, 16, 64, 256, None)
    d_lrs: int = 32
    d_n: int = 65_536
    d_sub: int = 4  # per-config peers: configurations run per batch-size group
    e_configs: int = 64
    e_epochs: int = 10
    e_batch: int = 64
    e_hidden: int = 32
    e_models: tuple = ("softmax", "mlp")
    # B's losses with a key / state, timed interleaved with the plain loss (all: FULL)
    b_variants: tuple = ("plain", "key", "state", "key + state", "key + state unused")
    # which per-configuration peers run outside B (B always runs all three)
    other_peers: tuple = ("optax", "torch", "numpy")
    # peers: configurations actually run (the rest extrapolated), steps cap per config
    sub_optax: int = 256
    sub_torch: int = 32
    sub_numpy: int = 32
    peer_step_cap: int = 1_000_000
    # scaling children (fresh processes)
    scale_n: int = 65_536
    scale_epochs: int = 1
    scale_k: tuple = (1, 4, 16, 64, 256, 1024, 4096)
    scale_ns: tuple = (4096, 16_384, 65_536, 262_144)
    scale_k_base: int = 256
    devices: tuple = (1, 2, 4, 8)
    peak_reps: int = 10
    child_timeout: int = 600
    f_sizes: str = "full"  # problem set F: bench_f.F_SIZES key
    h_file_mb: int = 4096  # problem H: the memmapped file of the RSS row


FULL = Sizes()
B_VARIANTS_QUICK = ("plain", "key + state", "key + state unused")
QUICK = dataclasses.replace(
    FULL, a_text_iters=20_000, d_n=16_384, d_sub=1, e_epochs=5, sub_optax=8, sub_torch=1,
    sub_numpy=1, peer_step_cap=300,
    scale_n=16_384, scale_k=(1, 256, 4096), scale_ns=(4096, 16_384, 65_536), peak_reps=5,
    child_timeout=120,
    b_variants=B_VARIANTS_QUICK, f_sizes="quick", h_file_mb=512,
)
TINY = dataclasses.replace(
    FULL, a_iters=2000, a_text_iters=2000, d_n=1024, d_sub=1, n=1024, d=8, batch=64, epochs=2,
    k_lr=8, c_seeds=2, c_lrs=4,
    d_batches=(16, None), d_lrs=4, e_configs=4, e_epochs=1, e_hidden=8, sub_optax=2,
    e_models=("softmax",), other_peers=("torch", "numpy"),
    sub_torch=1, sub_numpy=1, peer_step_cap=500, scale_n=1024, scale_k=(1, 8),
    scale_ns=(1024,), scale_k_base=8, devices=(1, 2), peak_reps=3, child_timeout=60,
    b_variants=B_VARIANTS_QUICK, f_sizes="tiny", h_file_mb=16,
)


# ----------------------------------------------------------------------------- measuring


def _median(xs):
    return float(statistics.median(xs))


class CompileLog:
    """Counts XLA compilations from JAX's compile log (``jax_log_compiles``)."""

    QUIET = ("jax._src.interpreters.pxla", "jax._src.dispatch", "jax._src.compiler",
             "jax._src.cache_key", "jax._src.compilation_cache")

    def __init__(self):
        self.count = 0
        self.names: list[str] = []

    @contextlib.contextmanager
    def watch(self):
        import jax

        log = logging.getLogger("jax._src.interpreters.pxla")
        me = self

        class _H(logging.Handler):
            def emit(self, record):
                msg = record.getMessage()
                if record.name == log.name and msg.startswith("Compiling "):
                    me.count += 1
                    me.names.append(msg.split(" with ")[0][len("Compiling "):])

        h = _H(level=logging.DEBUG)
        quiet = [logging.getLogger(n) for n in self.QUIET]
        old = jax.config.jax_log_compiles
        saved = [(q.propagate, q.level) for q in quiet]
        for q in quiet:  # keep the compile log off the console (h counts, prints nothing)
            q.addHandler(h)
            q.propagate = False
            q.setLevel(logging.WARNING)
        jax.config.update("jax_log_compiles", True)
        try:
            yield self
        finally:
            jax.config.update("jax_log_compiles", old)
            for q, (prop, lvl) in zip(quiet, saved, strict=True):
                q.removeHandler(h)
                q.propagate = prop
                q.setLevel(lvl)


def _proc_status(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1]) / 1024.0  # kB -> MB
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def peak_rss():
    """``box[0]``: rise of peak RSS (MB) over the block (VmHWM reset), NaN if unknown."""
    box = [float("nan")]
    ok = _reset_hwm()
    start = _proc_status("VmRSS")
    yield box
    hwm = _proc_status("VmHWM")
    if ok and start is not None and hwm is not None:
        box[0] = max(0.0, hwm - start)


def _maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


def timed(fn: Callable[[int], Any], reps: int, log: CompileLog | None = None, warm=True):
    """Call ``fn(0)`` once (compile + run; skipped with ``warm=False``), then ``fn(1..reps)``.

    Returns ``(first_s, [rep_s...], recompiles_in_reps, peak_mb)``.
    """
    first = float("nan")
    if warm:
        t = time.perf_counter()
        fn(0)
        first = time.perf_counter() - t
    c0 = log.count if log is not None else 0
    times = []
    with peak_rss() as mem:
        for r in range(1, reps + 1):
            t = time.perf_counter()
            fn(r)
            times.append(time.perf_counter() - t)
    rec = (log.count - c0) if log is not None else 0
    return first, times, rec, mem[0]


def matmul_peak(reps: int) -> float:
    """Measured fp32 matmul rate in GFLOP/s: jitted 2048x2048 ``x @ y``, median."""
    import jax
    import jax.numpy as jnp

    n = 2048
    k1, k2 = jax.random.split(jax.random.key(0))
    x = jax.random.normal(k1, (n, n), jnp.float32)
    y = jax.random.normal(k2, (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(x, y).block_until_ready()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f(x, y).block_until_ready()
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / _median(ts) / 1e9


# ----------------------------------------------------------------------------- flops


def steps_of(n: int, b: int | None) -> list[int]:
    """Batch sizes of one epoch's steps (DataLoader semantics, drop_last=False)."""
    b = n if b is None else b
    full, rem = divmod(n, b)
    return [b] * full + ([rem] if rem else [])


def linear_flops(n, d, b, epochs, k, out=1):
    """Matrix-product flops of k configurations: 4*b*d*out per step (fwd + grad)."""
    return 4.0 * d * out * sum(steps_of(n, b)) * epochs * k


def mlp_flops(n, d, h, c, b, epochs, k):
    # forward 2b(dh + hc); backward dW2 2bhc, dH 2bhc, dW1 2bdh (no dX)
    return (4.0 * d * h + 6.0 * h * c) * sum(steps_of(n, b)) * epochs * k


# ----------------------------------------------------------------------------- data


def lr_grid(k: int, lo=1e-4, hi=1e-1, jitter=0):
    """k log-spaced learning rates; ``jitter`` r gives new values (same shapes)."""
    return (np.logspace(np.log10(lo), np.log10(hi), k) * (1.0 + 1e-3 * jitter)).astype(
        np.float64)


def regression_data(n, d, seed=0):
    import jaxgd

    ds = jaxgd.datasets.synthetic_regression(n, d, seed=seed)
    return ds.x, ds.y


def digits_data():
    import jaxgd

    ds = jaxgd.datasets.load("digits")
    s = jaxgd.data.fit_standardizer(ds.x)
    x = np.asarray(jaxgd.data.standardize(ds.x, s), np.float32)
    return x, np.asarray(ds.y, np.int32)


def np_orders(n, epochs, seed):
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n) for _ in range(epochs)]).astype(np.int32)


# ----------------------------------------------------------------------------- models

# Each model: jax loss(params, batch), numpy params0 (list of arrays, same order as the
# jax pytree leaves), numpy value+grad, torch forward. All losses are batch means.


def _jax_mse(p, batch):
    import jax.numpy as jnp

    x, y = batch
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


def _jax_softmax(p, batch):
    import jax
    import jax.numpy as jnp

    x, y = batch
    z = x @ p["w"] + p["b"]
    logp = jax.nn.log_softmax(z)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def _jax_mlp(p, batch):
    import jax
    import jax.numpy as jnp

    x, y = batch
    h = jax.nn.relu(x @ p["w1"] + p["b1"])
    z = h @ p["w2"] + p["b2"]
    logp = jax.nn.log_softmax(z)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def _np_mse_grad(ps, xb, yb):
    w, b = ps
    r = xb @ w + b - yb
    m = len(yb)
    return float(np.mean(r * r)), [(2.0 / m) * (xb.T @ r), np.float32(2.0 / m) * r.sum()]


def _np_softmax_ce(z, yb):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=1, keepdims=True)
    m = len(yb)
    loss = -float(np.mean(np.log(p[np.arange(m), yb] + 1e-30)))
    p[np.arange(m), yb] -= 1.0
    return loss, p / m


def _np_softmax_grad(ps, xb, yb):
    w, b = ps
    loss, dz = _np_softmax_ce(xb @ w + b, yb)
    return loss, [xb.T @ dz, dz.sum(0)]


def _np_mlp_grad(ps, xb, yb):
    w1, b1, w2, b2 = ps
    a = xb @ w1 + b1
    h = np.maximum(a, 0)
    loss, dz = _np_softmax_ce(h @ w2 + b2, yb)
    dh = (dz @ w2.T) * (a > 0)
    return loss, [xb.T @ dh, dh.sum(0), h.T @ dz, dz.sum(0)]


def _torch_forward(kind):
    import torch

    if kind == "linreg":
        return lambda ps, x, y: torch.mean((x @ ps[0] + ps[1] - y) ** 2)
    if kind == "softmax":
        return lambda ps, x, y: torch.nn.functional.cross_entropy(x @ ps[0] + ps[1], y)
    return lambda ps, x, y: torch.nn.functional.cross_entropy(
        torch.relu(x @ ps[0] + ps[1]) @ ps[2] + ps[3], y)


MODELS = {
    "linreg": (_jax_mse, _np_mse_grad),
    "softmax": (_jax_softmax, _np_softmax_grad),
    "mlp": (_jax_mlp, _np_mlp_grad),
}


def params0(kind, d, h=32, c=10):
    """Initial parameters as a dict (jax pytree order = sorted keys) of numpy arrays."""
    if kind == "linreg":
        return {"b": np.zeros((), np.float32), "w": np.zeros(d, np.float32)}
    if kind == "softmax":
        return {"b": np.zeros(c, np.float32), "w": np.zeros((d, c), np.float32)}
    rng = np.random.default_rng(0)
    return {
        "b1": np.zeros(h, np.float32),
        "b2": np.zeros(c, np.float32),
        "w1": (rng.normal(size=(d, h)) * math.sqrt(2.0 / d)).astype(np.float32),
        "w2": (rng.normal(size=(h, c)) / math.sqrt(h)).astype(np.float32),
    }


_NP_ORDER = {"linreg": ("w", "b"), "softmax": ("w", "b"), "mlp": ("w1", "b1", "w2", "b2")}


# ----------------------------------------------------------------------------- peers


def numpy_train(kind, p0, x, y, lr, orders, b, cap):
    """The textbook loop: NumPy Adam, one configuration; returns (steps run, last loss)."""
    grad = MODELS[kind][1]
    ps = [np.array(p0[k], np.float32) for k in _NP_ORDER[kind]]
    m = [np.zeros_like(p) for p in ps]
    v = [np.zeros_like(p) for p in ps]
    b1, b2, eps = 0.9, 0.999, 1e-8
    n = len(y)
    bs = n if b is None else b
    t = 0
    loss = float("nan")
    for order in orders:
        for s in range(0, n, bs):
            idx = order[s:s + bs]
            loss, g = grad(ps, x[idx], y[idx])
            t += 1
            c1, c2 = 1 - b1**t, 1 - b2**t
            for i in range(len(ps)):
                m[i] = b1 * m[i] + (1 - b1) * g[i]
                v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
                ps[i] = (ps[i] - lr * (m[i] / c1) / (np.sqrt(v[i] / c2) + eps)).astype(
                    np.float32)
            if t >= cap:
                return t, loss
    return t, loss


def torch_train(kind, p0, xt, yt, lr, seed, epochs, b, cap):
    """PyTorch, one configuration: torch.optim.Adam, a ``randperm`` order per epoch."""
    import torch

    fwd = _torch_forward(kind)
    ps = [torch.tensor(p0[k]).requires_grad_(True) for k in _NP_ORDER[kind]]
    opt = torch.optim.Adam(ps, lr=float(lr))
    g = torch.Generator().manual_seed(int(seed))
    n = len(yt)
    bs = n if b is None else b
    t = 0
    loss = torch.tensor(float("nan"))
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for s in range(0, n, bs):
            idx = order[s:s + bs]
            opt.zero_grad(set_to_none=True)
            loss = fwd(ps, xt[idx], yt[idx])
            loss.backward()
            opt.step()
            t += 1
            if t >= cap:
                return t, float(loss.detach())
    return t, float(loss.detach())


def make_optax_train(kind, n, b, epochs, perm_in_jit=False):
    """Plain JAX + optax: one jitted lax.scan training function; lr is an argument.

    ``orders`` is an [epochs, n] index array, or with ``perm_in_jit`` a PRNG key from
    which the function draws ``jax.random.permutation`` per epoch (the natural code).
    """
    import jax
    import jax.numpy as jnp
    import optax

    loss = MODELS[kind][0]
    bs = n if b is None else b
    full, rem = divmod(n, bs)

    @jax.jit
    def train(lr, p0, x, y, orders):
        opt = optax.adam(lr)
        if perm_in_jit:
            orders = jax.vmap(lambda e: jax.random.permutation(
                jax.random.fold_in(orders, e), n).astype(jnp.int32))(jnp.arange(epochs))

        def step(carry, idx):
            p, s = carry
            l_, g = jax.value_and_grad(loss)(p, (x[idx], y[idx]))
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), l_

        def epoch(carry, order):
            carry, ls = jax.lax.scan(step, carry, order[:full * bs].reshape(full, bs))
            if rem:
                carry, _ = step(carry, order[full * bs:])
            return carry, ls[-1]

        (p, _), losses = jax.lax.scan(epoch, (p0, opt.init(p0)), orders)
        return p, losses

    return train


# ----------------------------------------------------------------------------- rows


class Bench:
    def __init__(self, sizes: Sizes, reps: int, peak: float, log: CompileLog):
        self.s = sizes
        self.reps = reps
        self.peak = peak
        self.log = log
        self.rows: list[dict[str, Any]] = []
        self.targets: list[dict[str, Any]] = []
        self.recompiles = 0
        self.f_rows: list[dict[str, Any]] = []  # problem set F, one row per fit / sweep
        self.f_plan_rows: list[dict[str, Any]] = []  # F's sweeps, one row per plan
        self.f_reps: int | None = None  # F's interleaved rounds (None: its sizes' own)

    def add(self, problem, impl, k, measured, compile_s, run_s, flops, mem_mb, note=""):
        gf = flops / run_s / 1e9 if run_s > 0 else float("nan")
        self.rows.append({
            "problem": problem, "implementation": impl, "configs": k, "measured": measured,
            "compile_s": compile_s, "run_s": run_s, "ms_per_config": 1e3 * run_s / k,
            "speedup_of_jaxgd": float("nan"), "GFLOP/s": gf, "pct_peak": 100 * gf / self.peak,
            "peak_rss_MB": mem_mb, "note": note,
        })

    def target(self, name, value, op, goal, note=""):
        ok = value >= goal if op == ">=" else value <= goal
        self.targets.append({"target": name, "measured": value, "goal": f"{op} {goal:g}",
                             "met": bool(ok) if np.isfinite(value) else "n/a", "note": note})

    # -- generic per-configuration peers, extrapolated
    def peers(self, problem, kind, cfgs, data, n, b, epochs, flops,
              peers=("optax", "torch", "numpy"), sub=None, perm_in_jit=False):
        """cfgs: list of (lr, seed). Times the per-configuration peers; returns run_s.

        ``sub`` caps the configurations run by every peer (else the Sizes' sub_* values).
        """
        import jax
        import jax.numpy as jnp

        from ._common import NOT_INSTALLED, optional_torch

        torch = optional_torch() if "torch" in peers else None
        s = self.s
        x, y = data
        k = len(cfgs)
        p0 = params0(kind, x.shape[1], s.e_hidden)
        total_steps = len(steps_of(n, b)) * epochs
        out = {}
        orders = {sd: np_orders(n, epochs, sd) for sd in sorted({c[1] for c in cfgs})}
        if "optax" in peers:
            train = make_optax_train(kind, n, b, epochs)
            xj, yj = jnp.asarray(x), jnp.asarray(y)
            pj = jax.tree.map(jnp.asarray, p0)
            oj = {sd: jnp.asarray(o) for sd, o in orders.items()}
            sub_o = _subset(cfgs, min(s.sub_optax, sub or s.sub_optax))

            def run_optax(r):
                for lr, sd in sub_o:
                    jax.block_until_ready(train(jnp.float32(lr * (1 + 1e-3 * r)), pj, xj, yj,
                                                oj[sd]))

            first, ts, _, mem = timed(run_optax, self.reps)
            per = _median(ts) / len(sub_o)
            run = per * k
            self.add(problem, "JAX+optax per config", k, f"{len(sub_o)}/{k}",
                     first - per * len(sub_o), run, flops, mem,
                     "one jitted lax.scan per config; orders precomputed (numpy)")
            out["optax"] = run
            if perm_in_jit:
                train_p = make_optax_train(kind, n, b, epochs, perm_in_jit=True)
                keys = {sd: jax.random.key(sd) for sd in orders}

                def run_optax_p(r):
                    for lr, sd in sub_o:
                        jax.block_until_ready(train_p(jnp.float32(lr * (1 + 1e-3 * r)), pj, xj,
                                                      yj, keys[sd]))

                first, ts, _, mem = timed(run_optax_p, self.reps)
                per = _median(ts) / len(sub_o)
                self.add(problem, "JAX+optax per config, in-jit permutation", k,
                         f"{len(sub_o)}/{k}", first - per * len(sub_o), per * k, flops, mem,
                         "as above, jax.random.permutation per epoch inside the jitted fn")
                out["optax_perm"] = per * k
        if "torch" in peers and torch is None:
            self.add(problem, "PyTorch per config", k, "-", float("nan"), float("nan"), flops,
                     float("nan"), f"PyTorch {NOT_INSTALLED}")
            out["torch"] = float("nan")
        elif "torch" in peers:
            xt, yt = torch.from_numpy(x), torch.from_numpy(np.asarray(y))
            if kind != "linreg":
                yt = yt.long()
            sub_t = _subset(cfgs, min(s.sub_torch, sub or s.sub_torch))
            # default intra-op threads can be pathological on a loaded 2-core box (OpenMP
            # oversubscription: 100x slower seen): probe default vs 1 thread, use the faster
            default_threads = torch.get_num_threads()
            probe = {}
            for th in dict.fromkeys((default_threads, 1)):
                torch.set_num_threads(th)
                t = time.perf_counter()
                st, _ = torch_train(kind, p0, xt, yt, sub_t[0][0], sub_t[0][1], epochs, b, 20)
                probe[th] = (time.perf_counter() - t) / st
            threads = min(probe, key=probe.get)
            torch.set_num_threads(threads)
            steps_box = [0]

            def run_torch(r):
                steps_box[0] = 0
                for lr, sd in sub_t:
                    st, _ = torch_train(kind, p0, xt, yt, lr * (1 + 1e-3 * r), sd, epochs, b,
                                        s.peer_step_cap)
                    steps_box[0] += st

            try:
                first, ts, _, mem = timed(run_torch, self.reps, warm=False)
            finally:
                torch.set_num_threads(default_threads)
            frac = steps_box[0] / (len(sub_t) * total_steps)
            run = _median(ts) / len(sub_t) / frac * k
            meas = f"{len(sub_t)}/{k}" + (f" x {100 * frac:.2g}% steps" if frac < 1 else "")
            self.add(problem, "PyTorch per config", k, meas, float("nan"), run, flops, mem,
                     f"torch {torch.__version__}, {threads} thread(s) (probe ms/step: "
                     + ", ".join(f"{th} thr {1e3 * v:.2g}" for th, v in probe.items()) + ")")
            out["torch"] = run
        if "numpy" in peers:
            sub_n = _subset(cfgs, min(s.sub_numpy, sub or s.sub_numpy))
            steps_box = [0]

            def run_np(r):
                steps_box[0] = 0
                for lr, sd in sub_n:
                    st, _ = numpy_train(kind, p0, x, y, lr * (1 + 1e-3 * r), orders[sd], b,
                                        s.peer_step_cap)
                    steps_box[0] += st

            first, ts, _, mem = timed(run_np, self.reps, warm=False)
            frac = steps_box[0] / (len(sub_n) * total_steps)
            run = _median(ts) / len(sub_n) / frac * k
            meas = f"{len(sub_n)}/{k}" + (f" x {100 * frac:.2g}% steps" if frac < 1 else "")
            self.add(problem, "NumPy loop per config", k, meas, float("nan"), run, flops, mem,
                     "textbook Adam loop")
            out["numpy"] = run
        return out

    def jaxgd_sweep(self, problem, kind, data, grid_fn, flops, note="", label="jaxgd",
                    loss=None, **kw):
        """Time ``jaxgd.sweep`` with ``grid_fn(r)`` (new values every call). Without
        tuning keywords in ``kw`` this is the sweep a user writes (the defaults:
        ``metrics="full"``, ``eval_every=1``); a tuned call is labelled so by the caller.
        ``loss``: another loss for the ``kind``'s parameters (else the kind's own)."""
        import jaxgd

        x, y = data
        p0 = params0(kind, x.shape[1], self.s.e_hidden)
        loss = MODELS[kind][0] if loss is None else loss
        res = {}

        def call(r):
            res["sw"] = jaxgd.sweep(loss, p0, (x, y), optimizer="adam", grid=grid_fn(r), **kw)

        first, ts, rec, mem = timed(call, self.reps, self.log)
        run = _median(ts)
        self.recompiles += rec
        k = len(res["sw"].table)
        self.add(problem, label, k, f"{k}/{k}", first - run, run, flops, mem,
                 (note + "; " if note else "") + f"recompiles in timed reps: {rec}")
        return run, first - run, res["sw"]

    def ratios(self):
        for prob in {r["problem"] for r in self.rows if r["problem"] != "memory"}:
            rows = [r for r in self.rows if r["problem"] == prob]
            base = [r for r in rows if r["implementation"].startswith("jaxgd")]
            if not base:
                continue
            t = base[0]["run_s"]
            for r in rows:
                r["speedup_of_jaxgd"] = r["run_s"] / t


def _subset(cfgs, m):
    """m configurations spread over the list (always the first and the last)."""
    if m >= len(cfgs):
        return list(cfgs)
    idx = np.unique(np.linspace(0, len(cfgs) - 1, max(1, m)).round().astype(int))
    return [cfgs[i] for i in idx]


# ----------------------------------------------------------------------------- problems


def problem_a(bn: Bench):
    import jax.numpy as jnp

    import jaxgd

    s = bn.s
    x, y = jaxgd.datasets.noisy_line(16, seed=0)
    iters, lr = s.a_iters, 1e-4
    flops = linear_flops(16, 1, None, iters, 1)

    def textbook(r, iters=s.a_text_iters):
        w, b = 0.0, 0.0
        xv, yv = x[:, 0].astype(np.float64), y.astype(np.float64)
        for _ in range(iters):
            err = w * xv + b - yv
            w -= lr * 2.0 * float(np.mean(err * xv))
            b -= lr * 2.0 * float(np.mean(err))
        return w, b

    first, ts, _, mem = timed(textbook, bn.reps, warm=False)
    t_text = _median(ts) * iters / s.a_text_iters
    w_ref, b_ref = textbook(0, iters)  # the reference parameters: all iterations
    meas = "1/1" + (f" x {s.a_text_iters} it" if s.a_text_iters < iters else "")
    bn.add("A", "NumPy loop (textbook)", 1, meas, float("nan"), t_text, flops,
           mem, "float64 NumPy, vectorised over the 16 points")

    def loss(p, batch):
        xb, yb = batch
        return jnp.mean((xb[:, 0] * p["w"] + p["b"] - yb) ** 2)

    t_rows = problem_a_jaxgd(bn, loss, x, y, iters, lr, flops, (w_ref, b_ref))
    t_bare_j, _ = problem_a_bare(bn, loss, x, y, iters, lr, flops)
    t_fit = t_rows["defaults"]
    bn.target("A: jaxgd at the defaults vs textbook loop (x faster)", t_text / t_fit, ">=", 100,
              "fit() with no tuning keywords: a history row and stop checks every epoch")
    bn.target("A: jaxgd at the defaults / bare lax.scan recording J", t_fit / t_bare_j, "<=", 3)
    bn.target("A: jaxgd eval_every=1000 vs textbook loop (x faster)",
              t_text / t_rows["eval_every=1000"], ">=", 250)


def problem_a_jaxgd(bn: Bench, loss, x, y, iters, lr, flops, ref) -> dict[str, float]:
    """A with ``jaxgd.fit``: the defaults (headline), then tuned rows, labelled."""
    import jax.numpy as jnp
    import optax

    import jaxgd

    box, t_rows = {}, {}
    variants = (("defaults", "jaxgd (defaults)", {}),
                ("eval_every=1000", "jaxgd, tuned: eval_every=1000", {"eval_every": 1000}),
                ("metrics=batch", "jaxgd, tuned: metrics='batch'", {"metrics": "batch"}))
    for key, name, kw in variants:

        def call(r, kw=kw):
            box["res"] = jaxgd.fit(
                loss, {"w": jnp.zeros(()), "b": jnp.zeros(())}, (x, y), optimizer=optax.sgd,
                hparams={"learning_rate": lr * (1 + 1e-9 * r)}, batch_size=None,
                epochs=iters, shuffle=False, **kw)

        first, ts, rec, mem = timed(call, bn.reps, bn.log)
        t_fit = t_rows[key] = _median(ts)
        bn.recompiles += rec
        p = box["res"].params
        err = max(abs(float(p["w"]) - ref[0]), abs(float(p["b"]) - ref[1]))
        args = ", ".join(f"{k}={v!r}" for k, v in kw.items()) or "no tuning keywords"
        bn.add("A", name, 1, "1/1", first - t_fit, t_fit, flops, mem,
               f"fit({args}); history rows: {len(box['res'].history['loss'])}; "
               f"|params - textbook| = {err:.1e}; recompiles: {rec}")
    return t_rows


def problem_a_bare(bn: Bench, loss, x, y, iters, lr, flops) -> tuple[float, float]:
    """The bare jitted ``lax.scan`` of the same SGD steps, recording the loss J at every
    step (what a history row every epoch is measured against) and not."""
    import jax
    import jax.numpy as jnp

    def make(record):
        @jax.jit
        def bare(lr_, xj, yj):
            def step(p, _):
                j, g = jax.value_and_grad(loss)(p, (xj, yj))
                return jax.tree.map(lambda a, b: a - lr_ * b, p, g), (j if record else None)

            return jax.lax.scan(step, {"w": jnp.zeros(()), "b": jnp.zeros(())}, None,
                                length=iters)

        return bare

    xj, yj = jnp.asarray(x), jnp.asarray(y)
    out = []
    for record, name in ((True, "JAX bare lax.scan, J every step"),
                         (False, "JAX bare lax.scan, no J")):
        fn = make(record)
        first, ts, _, mem = timed(
            lambda r, fn=fn: jax.block_until_ready(fn(jnp.float32(lr), xj, yj)), bn.reps)
        out.append(_median(ts))
        bn.add("A", name, 1, "1/1", first - out[-1], out[-1], flops, mem,
               "jitted lax.scan of SGD steps, no stop checks")
    return out[0], out[1]


def problem_memory(bn: Bench):
    """fit with an enormous epoch budget that stops early (loss_target): the rise of the
    peak RSS and the history kept. History is run in blocks of evaluations, so memory
    follows the evaluations run, not ``epochs``."""
    import jax.numpy as jnp

    import jaxgd
    from jaxgd import program

    x, y = jaxgd.datasets.noisy_line(16, seed=0)

    def loss(p, batch):
        xb, yb = batch
        return jnp.mean((xb[:, 0] * p["w"] + p["b"] - yb) ** 2)

    for epochs in (10**6, 10**9):
        box = {}

        def call(r, epochs=epochs):
            box["res"] = jaxgd.fit(loss, {"w": jnp.zeros(()), "b": jnp.zeros(())}, (x, y),
                                   hparams={"learning_rate": 1e-4 * (1 + 1e-9 * r)},
                                   epochs=epochs, loss_target=0.01)

        first, ts, rec, mem = timed(call, bn.reps, bn.log)
        res = box["res"]
        rows = len(res.history["loss"])
        prealloc = epochs * 5 * 4 / 2**20
        bn.add("memory", f"jaxgd fit(epochs={epochs:.0e}, loss_target) defaults", 1, "1/1",
               first - _median(ts), _median(ts), 0.0, mem,
               f"stop: {res.stop_reason} after {res.epochs_run} epochs; history rows kept: "
               f"{rows}; device history block <= {program.HISTORY_BLOCK_BYTES / 2**20:.0f} "
               f"MiB; a history preallocated by epochs would hold {prealloc:,.0f} MB")


def problem_b(bn: Bench, data):
    from ._common import NOT_INSTALLED

    s = bn.s
    k = s.k_lr
    flops = linear_flops(s.n, s.d, s.batch, s.epochs, k)
    run, comp, _ = bn.jaxgd_sweep(
        "B", "linreg", data, lambda r: {"learning_rate": lr_grid(k, jitter=r)}, flops,
        note="sweep() defaults (metrics='full': a forward pass over the data per epoch), "
        "one Feistel order", label="jaxgd (defaults)", epochs=s.epochs, batch_size=s.batch,
        seed=0)
    run_batch, _, _ = bn.jaxgd_sweep(
        "B", "linreg", data, lambda r: {"learning_rate": lr_grid(k, jitter=r)}, flops,
        note="no pass over the data", label="jaxgd, tuned: metrics='batch'",
        epochs=s.epochs, batch_size=s.batch, seed=0, metrics="batch")
    cfgs = [(lr, 0) for lr in lr_grid(k)]
    peers = bn.peers("B", "linreg", cfgs, data, s.n, s.batch, s.epochs, flops, perm_in_jit=True)
    gf = flops / run / 1e9
    bn.target("B: jaxgd vs JAX+optax per config (x faster)", peers["optax_perm"] / run, ">=",
              100, "peer draws jax.random.permutation per epoch in its jitted function")
    bn.target("B: same, peer with precomputed orders (x faster)", peers["optax"] / run, ">=",
              100, f"bound at 100% of peak: {peers['optax'] / (flops / bn.peak / 1e9):.0f}x")
    bn.target("B: jaxgd vs PyTorch per config (x faster)", peers["torch"] / run, ">=", 300,
              "moonshot 1000x" if np.isfinite(peers["torch"]) else f"PyTorch {NOT_INSTALLED}")
    floor = handwritten_floor(bn, data, k)
    b_vs_evaluating_floor(bn, data, k, flops)
    bn.target("B: achieved share of matmul peak at the defaults (%)", 100 * gf / bn.peak,
              ">=", 25, f"{gf:.1f} of {bn.peak:.1f} GFLOP/s; hand-written floor with the "
              f"same shuffle: {100 * flops / floor / 1e9 / bn.peak:.0f}%")
    gfb = flops / run_batch / 1e9
    bn.target("B: achieved share of matmul peak, metrics='batch' (%)", 100 * gfb / bn.peak,
              ">=", 30, f"{gfb:.1f} GFLOP/s (moonshot 40%)")
    problem_b_keys_state(bn, data)
    return run


KEEP = 0.9  # the feature mask's keep probability (problem B with a key)


def _jax_mse_key(p, batch, *, key):
    """B's linear model with a random feature mask drawn from the step's key (each
    feature kept with probability KEEP); evaluation passes (``key=None``) use the
    expectation ``KEEP * w``."""
    import jax
    import jax.numpy as jnp

    x, y = batch
    w = KEEP * p["w"] if key is None else jnp.where(
        jax.random.bernoulli(key, KEEP, p["w"].shape), p["w"], 0.0)
    return jnp.mean((x @ w + p["b"] - y) ** 2)


def _jax_mse_state(p, batch, *, state, train):
    """B's linear model on centred features, BatchNorm-like: training steps centre with
    the batch mean and move the running mean (the state) towards it; evaluation passes
    centre with the running mean."""
    import jax.numpy as jnp

    x, y = batch
    mu = jnp.mean(x, axis=0) if train else state
    new = 0.9 * state + 0.1 * mu if train else state
    return jnp.mean((x @ p["w"] - mu @ p["w"] + p["b"] - y) ** 2), new


def _jax_mse_key_state(p, batch, *, key, state, train):
    """Both: the feature mask of ``_jax_mse_key`` on the centred model of
    ``_jax_mse_state``."""
    import jax
    import jax.numpy as jnp

    x, y = batch
    w = KEEP * p["w"] if key is None else jnp.where(
        jax.random.bernoulli(key, KEEP, p["w"].shape), p["w"], 0.0)
    mu = jnp.mean(x, axis=0) if train else state
    new = 0.9 * state + 0.1 * mu if train else state
    return jnp.mean((x @ w - mu @ w + p["b"] - y) ** 2), new


def _jax_mse_plumbing(p, batch, *, key, state, train):
    """The plain loss declaring ``key``, ``state`` and ``train`` without using them (the
    state passes through): what jaxgd's key and state handling costs by itself."""
    del key, train
    return _jax_mse(p, batch), state


def problem_b_keys_state(bn: Bench, data) -> None:
    """B's default sweep with losses that use the per-step key (a random feature mask),
    the model state (BatchNorm-like centring) or both, and one that declares both without
    using them, each timed interleaved with the plain loss's sweep (so the machine's load
    drifts alike): their cost per step relative to the plain loss."""
    import jaxgd

    s = bn.s
    k = s.k_lr
    x, y = data
    p0 = params0("linreg", x.shape[1], s.e_hidden)
    flops = linear_flops(s.n, s.d, s.batch, s.epochs, k)
    state0 = np.zeros(s.d, np.float32)
    variants: dict[str, tuple[Any, dict[str, Any], str]] = {  # loss, keywords, note
        "plain": (_jax_mse, {}, "the plain loss, timed interleaved with the rows below"),
        "key": (_jax_mse_key, {}, "random feature mask drawn from the step's key"),
        "state": (_jax_mse_state, {"state": state0},
                  "BatchNorm-like centring, the running feature mean as state"),
        "key + state": (_jax_mse_key_state, {"state": state0}, "feature mask and centring"),
        "key + state unused": (_jax_mse_plumbing, {"state": state0},
                               "declares key, state, train; uses none (state passes through)"),
    }
    variants = {name: variants[name] for name in s.b_variants}

    def call(name, r):
        loss, extra, _ = variants[name]
        return jaxgd.sweep(loss, p0, (x, y), optimizer="adam", epochs=s.epochs,
                           batch_size=s.batch, seed=0,
                           grid={"learning_rate": lr_grid(k, jitter=r)}, **extra)

    first, times = {}, {name: [] for name in variants}
    for name in variants:
        t = time.perf_counter()
        call(name, 0)
        first[name] = time.perf_counter() - t
    c0 = bn.log.count
    for r in range(1, bn.reps + 1):
        for name in variants:
            t = time.perf_counter()
            call(name, r)
            times[name].append(time.perf_counter() - t)
    rec = bn.log.count - c0
    bn.recompiles += rec
    run = {name: _median(ts) for name, ts in times.items()}
    for name, (_, _, note) in variants.items():
        bn.add("B", f"jaxgd (defaults), {name} loss", k, f"{k}/{k}",
               first[name] - run[name], run[name], flops, float("nan"),
               f"{note}; recompiles in timed reps (all rows): {rec}")
    # the ratios from the fastest interleaved repetition of each (the least disturbed by
    # other load on the machine; the rows above give medians)
    best = {name: min(ts) for name, ts in times.items()}
    ratio = {name: best[name] / best["plain"] for name in variants}
    alone = "".join(f"{n} alone {ratio[n]:.2f}x, " for n in ("key", "state") if n in ratio)
    bn.target("B: keys+state cost per step <= 1.10x plain", ratio["key + state"], "<=", 1.10,
              f"feature mask + centring; {alone}fastest of {bn.reps} interleaved reps each")
    bn.target("B: keys+state handling alone (declared, unused) <= 1.10x plain",
              ratio["key + state unused"], "<=", 1.10,
              "what jaxgd adds for a loss with key, state and train, beyond the model's work")


def problem_b_store(bn: Bench, data, b_run: float) -> None:
    """B with ``out=`` (a new folder each call): the time spent in checksums and the
    fingerprint (the program digest included) as a share of the whole call."""
    import sys
    import tempfile

    import jaxgd
    from jaxgd import store

    sweep_mod = sys.modules["jaxgd.sweep"]
    s = bn.s
    k = s.k_lr
    x, y = data
    p0 = params0("linreg", x.shape[1], s.e_hidden)
    spent = [0.0]

    def clocked(fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[0] += time.perf_counter() - t
        return wrapper

    real = (store.checksum, sweep_mod.run_fingerprint, sweep_mod.program_digest)
    store.checksum, sweep_mod.run_fingerprint, sweep_mod.program_digest = map(clocked, real)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            def call(r):
                jaxgd.sweep(MODELS["linreg"][0], p0, (x, y), optimizer="adam",
                            grid={"learning_rate": lr_grid(k, jitter=r)}, metrics="batch",
                            epochs=s.epochs, batch_size=s.batch, seed=0, out=f"{tmp}/r{r}")

            first, ts, rec, mem = timed(call, bn.reps, bn.log)
            spent[0] = 0.0
            call(bn.reps + 1)
            share = spent[0]
    finally:
        store.checksum, sweep_mod.run_fingerprint, sweep_mod.program_digest = real
    run = _median(ts)
    bn.recompiles += rec
    flops = linear_flops(s.n, s.d, s.batch, s.epochs, k)
    bn.add("B out=", "jaxgd (out=)", k, f"{k}/{k}", first - run, run, flops, mem,
           f"checksums + fingerprint {1e3 * share:.1f} ms; B without out= "
           f"{1e3 * b_run:.1f} ms")
    bn.target("B out=: checksums + fingerprint share of the call (%)", 100 * share / run,
              "<=", 5, f"whole out= overhead vs B: {100 * (run / b_run - 1):+.1f}% "
              "(includes writing the files)")


def handwritten_floor(bn: Bench, data, k: int) -> float:
    """B written by hand as ``jit(vmap(...))``: Adam, the same Feistel shuffle shared by
    all configurations, no bookkeeping (no divergence masks, metrics, history). What
    XLA reaches for this problem without a library; returns its median run time."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxgd.data import feistel_permute, feistel_round_keys

    s = bn.s
    x, y = jnp.asarray(data[0]), jnp.asarray(data[1])
    n, b = x.shape[0], s.batch
    steps = n // b  # the problem sizes have no partial batch

    def train(lr):
        opt = optax.adam(lr)
        p = {"w": jnp.zeros(x.shape[1]), "b": jnp.zeros(())}

        def epoch(c, e):
            rk = feistel_round_keys(jax.random.key(0), e)

            def step(c, i):
                p, st = c
                idx = feistel_permute(rk, i * b + jnp.arange(b, dtype=jnp.int32), n)
                xb, yb = x[idx], y[idx]
                g = jax.grad(lambda p: jnp.mean((xb @ p["w"] + p["b"] - yb) ** 2))(p)
                u, st = opt.update(g, st, p)
                return (optax.apply_updates(p, u), st), None

            return jax.lax.scan(step, c, jnp.arange(steps))[0], None

        return jax.lax.scan(epoch, (p, opt.init(p)), jnp.arange(s.epochs))[0][0]

    fn = jax.jit(jax.vmap(train))

    def call(r):
        jax.block_until_ready(fn(jnp.asarray(lr_grid(k, jitter=r), jnp.float32)))

    first, ts, _, mem = timed(call, bn.reps)
    run = _median(ts)
    flops = linear_flops(n, x.shape[1], b, s.epochs, k)
    bn.add("B", "hand-written jit(vmap), same shuffle (floor)", k, f"{k}/{k}", first - run,
           run, flops, mem, "Adam, Feistel order shared by all configs, no masks/metrics")
    return run


def floor_with_evals(x, y, k: int, s: Sizes, *, close_over: bool, batch_means=False):
    """B by hand as ``jit(vmap(...))`` computing what the defaults record: Adam on the
    Feistel order shared by all configurations, the loss over the whole training set
    before the first epoch and after each epoch; with ``batch_means`` also each epoch's
    mean batch loss and mean gradient norm (the defaults' ``batch_loss`` and
    ``grad_norm`` columns). With ``close_over`` the data are constants of the compiled
    program (compiled for these data); else arguments, as in a program compiled once for
    any data of this shape. Returns ``call(lrs)``."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxgd.data import feistel_permute, feistel_round_keys

    n, d, b = x.shape[0], x.shape[1], s.batch
    steps = n // b  # the problem sizes have no partial batch

    def train(lr, x, y):
        opt = optax.adam(lr)

        def full(p):
            return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

        def epoch(c, e):
            rk = feistel_round_keys(jax.random.key(0), e)

            def step(c, i):
                p, st = c
                idx = feistel_permute(rk, i * b + jnp.arange(b, dtype=jnp.int32), n)
                xb, yb = x[idx], y[idx]
                lv, g = jax.value_and_grad(
                    lambda p: jnp.mean((xb @ p["w"] + p["b"] - yb) ** 2))(p)
                u, st = opt.update(g, st, p)
                sums = (lv, optax.global_norm(g)) if batch_means else None
                return (optax.apply_updates(p, u), st), sums

            c, sums = jax.lax.scan(step, c, jnp.arange(steps))
            means = None if sums is None else jax.tree.map(jnp.mean, sums)
            return c, (full(c[0]), means)

        p = {"w": jnp.zeros(d), "b": jnp.zeros(())}
        (p, _), (losses, means) = jax.lax.scan(epoch, (p, opt.init(p)), jnp.arange(s.epochs))
        return p, full({"w": jnp.zeros(d), "b": jnp.zeros(())}), losses, means

    if close_over:
        fn = jax.jit(jax.vmap(lambda lr: train(lr, x, y)))
        return lambda lrs: fn(lrs)
    fn = jax.jit(jax.vmap(train, in_axes=(0, None, None)))
    return lambda lrs: fn(lrs, x, y)


def b_vs_evaluating_floor(bn: Bench, data, k: int, flops: float) -> None:
    """B at the defaults against :func:`floor_with_evals` (data as arguments; and closed
    over, for reference), timed interleaved: a round times each once, in turn; the rows
    give the fastest round and the spread, the target the ratio of the fastest."""
    import jax
    import jax.numpy as jnp

    import jaxgd

    s = bn.s
    x, y = jnp.asarray(data[0]), jnp.asarray(data[1])
    p0 = params0("linreg", x.shape[1])
    calls = {}
    for name, kw in (("args", {}), ("const", {"close_over": True}),
                     ("means", {"batch_means": True})):
        fn = floor_with_evals(x, y, k, s, **{"close_over": False, **kw})
        calls[name] = (lambda r, fn=fn: jax.block_until_ready(
            fn(jnp.asarray(lr_grid(k, jitter=r), jnp.float32))))
    box = {}

    def sweep(r):
        box[r] = jaxgd.sweep(MODELS["linreg"][0], p0, data, optimizer="adam",
                             grid={"learning_rate": lr_grid(k, jitter=r)}, epochs=s.epochs,
                             batch_size=s.batch, seed=0)

    calls["jaxgd"] = sweep
    times = {name: [] for name in calls}
    first = {}
    for name, call in calls.items():
        t = time.perf_counter()
        call(0)
        first[name] = time.perf_counter() - t
    for r in range(1, max(5, bn.reps) + 1):
        for name, call in (calls.items() if r % 2 else reversed(calls.items())):
            t = time.perf_counter()
            call(r)
            times[name].append(time.perf_counter() - t)
    fast = {name: min(ts) for name, ts in times.items()}
    # the same numbers: the floor's losses (init, each epoch) against jaxgd's history
    _, _, losses, (bl, gn) = floor_with_evals(x, y, k, s, close_over=False, batch_means=True)(
        jnp.asarray(lr_grid(k, jitter=0), jnp.float32))
    gap = 0.0
    for col, mine in (("loss", losses), ("batch_loss", bl), ("grad_norm", gn)):
        hist = np.asarray(box[0].history[col], np.float64).reshape(k, -1)
        gap = max(gap, float(np.max(np.abs(hist - np.asarray(mine, np.float64).reshape(k, -1))
                                    / np.maximum(np.abs(hist), 1e-12))))

    def spread(name):
        return f"fastest of {len(times[name])} interleaved rounds, slowest {max(times[name]):.3f} s"

    for name, label, how in (
            ("args", "data as arguments", "compiled once for any data"),
            ("const", "data closed over", "data compiled in as constants"),
            ("means", "data as arguments, + batch means",
             "also each epoch's mean batch loss and gradient norm")):
        bn.add("B", f"hand-written jit(vmap) + full-data loss per epoch, {label}", k,
               f"{k}/{k}", first[name] - fast[name], fast[name], flops, float("nan"),
               f"Adam, same Feistel order, the loss over all N at init and after each "
               f"epoch; {how}; {spread(name)}; its loss, batch_loss and grad_norm / "
               f"jaxgd's history: max relative difference {gap:.1e}")
    bn.add("B", "jaxgd (defaults), timed with the floors above", k, f"{k}/{k}",
           first["jaxgd"] - fast["jaxgd"], fast["jaxgd"], flops, float("nan"),
           spread("jaxgd"))
    bn.target("B at the defaults vs the hand-written floor computing the same (x)",
              fast["args"] / fast["jaxgd"], ">=", 0.9,
              f"floor {fast['args']:.3f} s with the data as arguments, jaxgd "
              f"{fast['jaxgd']:.3f} s; with the batch means too the floor takes "
              f"{fast['means']:.3f} s ({fast['means'] / fast['jaxgd']:.2f}x); with the data "
              f"closed over {fast['const']:.3f} s ({fast['const'] / fast['jaxgd']:.2f}x)")


def problem_c(bn: Bench, data, b_run):
    s = bn.s
    k = s.c_seeds * s.c_lrs
    flops = linear_flops(s.n, s.d, s.batch, s.epochs, k)
    run, _, _ = bn.jaxgd_sweep(
        "C", "linreg", data,
        lambda r: {"seed": list(range(s.c_seeds)), "learning_rate": lr_grid(s.c_lrs, jitter=r)},
        flops, note=f"sweep() defaults; {s.c_seeds} seeds x {s.c_lrs} lrs, per-seed Feistel "
        "order", label="jaxgd (defaults)", epochs=s.epochs, batch_size=s.batch)
    cfgs = [(lr, sd) for sd in range(s.c_seeds) for lr in lr_grid(s.c_lrs)]
    bn.peers("C", "linreg", cfgs, data, s.n, s.batch, s.epochs, flops, s.other_peers,
             perm_in_jit="optax" in s.other_peers)
    if b_run is not None:
        # same total work as B only when K_B == seeds * lrs; compare per configuration
        kb = s.k_lr
        ratio = (run / k) / (b_run / kb)
        bn.target("C time / B time (per configuration), defaults", ratio, "<=", 1.5,
                  f"C {run:.3f} s for {k}, B {b_run:.3f} s for {kb}")


def problem_d(bn: Bench, data):
    import jaxgd

    from ._common import NOT_INSTALLED

    s = bn.s
    n = min(s.d_n, len(data[1]))
    x, y = data[0][:n], data[1][:n]
    p0 = params0("linreg", s.d)
    lrs = s.d_lrs
    k = len(s.d_batches) * lrs
    flops = sum(linear_flops(n, s.d, b, s.epochs, lrs) for b in s.d_batches)
    alone, comps = [], []
    for b in s.d_batches:
        def call(r, b=b):
            jaxgd.sweep(_jax_mse, p0, (x, y), optimizer="adam",
                        grid={"learning_rate": lr_grid(lrs, jitter=r)},
                        epochs=s.epochs, batch_size=b, seed=0)

        first, ts, rec, _ = timed(call, bn.reps, bn.log)
        bn.recompiles += rec
        alone.append(_median(ts))
        comps.append(first - _median(ts))
    run, comp, _ = bn.jaxgd_sweep(
        "D", "linreg", (x, y),
        lambda r: {"batch_size": list(s.d_batches), "learning_rate": lr_grid(lrs, jitter=r)},
        flops, note=f"N={n}; {len(s.d_batches)} groups (compile cached from the groups run "
        "alone); alone: " + ", ".join(f"B={'N' if b is None else b}: {t:.3f}s (compile "
                                      f"{c:.2f}s)" for b, t, c in
                                      zip(s.d_batches, alone, comps, strict=True)),
        epochs=s.epochs, seed=0)
    # peers: one run per batch-size group, extrapolated to its lrs; summed
    tot: dict[str, list[float]] = {}
    meas: dict[str, str] = {}
    peer_comp: list[float] = []  # the compile of a hand-written jitted optax loop, per group
    for b in s.d_batches:
        fl = linear_flops(n, s.d, b, s.epochs, lrs)
        start = len(bn.rows)
        out = bn.peers("D", "linreg", [(lr, 0) for lr in lr_grid(lrs)], (x, y), n, b,
                       s.epochs, fl, s.other_peers, sub=s.d_sub)
        for r in bn.rows[start:]:
            meas.setdefault(r["implementation"], []).append(r["measured"])
            if r["implementation"] == "JAX+optax per config":
                peer_comp.append(r["compile_s"])
        del bn.rows[start:]
        for name, t in out.items():
            tot.setdefault(name, []).append(t)
    labels = {"optax": "JAX+optax per config", "torch": "PyTorch per config",
              "numpy": "NumPy loop per config"}
    for name, ts in tot.items():
        m = meas.get(labels[name], [])
        if not np.all(np.isfinite(ts)):  # a peer that is not installed
            bn.add("D", labels[name], k, "-", float("nan"), float("nan"), flops, float("nan"),
                   f"PyTorch {NOT_INSTALLED}")
            continue
        bn.add("D", labels[name], k, "per group: " + "; ".join(m), float("nan"), sum(ts),
               flops, float("nan"),
               f"N={n}; sum over batch-size groups: " + ", ".join(f"{t:.2g}s" for t in ts))
    bn.target("D time / sum of groups alone", run / sum(alone), "<=", 1.2,
              f"{run:.3f} s vs {sum(alone):.3f} s")
    bn.target("D: worst compile per group (s)", max(comps), "<=", 1.0,
              ", ".join(f"{c:.2f}" for c in comps)
              + ("; a jitted optax loop of one configuration, same group (no metrics, no "
                 "stop checks): " + ", ".join(f"{c:.2f}" for c in peer_comp)
                 if peer_comp else ""))


def problem_e(bn: Bench):
    s = bn.s
    x, y = digits_data()
    n, d = x.shape
    lrs = lr_grid(s.e_configs, 1e-4, 3e-1)
    for kind in s.e_models:
        label = {"softmax": "E softmax", "mlp": "E MLP"}[kind]
        if kind == "softmax":
            flops = linear_flops(n, d, s.e_batch, s.e_epochs, s.e_configs, out=10)
        else:
            flops = mlp_flops(n, d, s.e_hidden, 10, s.e_batch, s.e_epochs, s.e_configs)
        bn.jaxgd_sweep(label, kind, (x, y),
                       lambda r: {"learning_rate": lr_grid(s.e_configs, 1e-4, 3e-1, r)},
                       flops, note=f"digits {n}x{d}, B={s.e_batch}, {s.e_epochs} epochs",
                       epochs=s.e_epochs, batch_size=s.e_batch, seed=0)
        bn.peers(label, kind, [(lr, 0) for lr in lrs], (x, y), n, s.e_batch, s.e_epochs,
                 flops, s.other_peers)


def problem_h(bn: Bench, data) -> None:
    """Host-fed data (``bench_feed.py``): B's sweep from a memmap vs device memory, and
    the peak RSS of training on a memmapped file larger than the RSS rise allowed."""
    from . import bench_feed

    s = bn.s
    x, y = data if data is not None else regression_data(s.n, s.d)
    r = bench_feed.throughput(np.asarray(x), np.asarray(y), s.batch, s.epochs, s.k_lr,
                              bn.reps)
    nan = float("nan")
    flops = linear_flops(s.n, s.d, s.batch, s.epochs, s.k_lr)
    what = f"B's sweep, steps={r['steps']}, metrics='batch'"
    bn.add("H", "jaxgd (host-fed memmap, feed='host')", s.k_lr, f"{s.k_lr}/{s.k_lr}", nan,
           r["host_s"], flops, nan, f"{what}; blocks built in a background thread")
    bn.add("H", "jaxgd (the same data in device memory)", s.k_lr, f"{s.k_lr}/{s.k_lr}", nan,
           r["device_s"], flops, nan, f"{what}; timed interleaved with the row above")
    bn.target("H: host-fed memmap vs device data, throughput (x)", r["ratio"], ">=", 0.9,
              "median of interleaved rounds, compile excluded")
    m = bench_feed.rss(s.h_file_mb, 63, s.batch, -(-s.h_file_mb * 2**20 // (256 * s.batch)),
                       timeout=s.child_timeout)
    bn.add("memory", f"jaxgd fit host-fed from a {m['file_mb']} MB memmap", 1, "1/1", nan,
           m["seconds"], 0.0, m["peak_rise_mb"],
           f"every one of {m['n']} samples read once; peak RSS {m['peak_mb']:.0f} MB "
           f"(file / peak RSS {m['file_per_peak']:.1f}x), {m['rss_before_mb']:.0f} MB "
           f"before the call (the JAX runtime), a rise of {m['peak_rise_mb']:.0f} MB (file / "
           f"rise {m['file_per_rise']:.1f}x; compiling the call's program included; fresh "
           "process, VmHWM)")
    bn.target("H: memmapped file size / peak RSS (x)", m["file_per_peak"], ">=",
              8.0 if s.h_file_mb >= 4096 else 1.0 if s.h_file_mb >= 512 else 0.01,
              f"a {m['file_mb']} MB file, peak RSS {m['peak_mb']:.0f} MB")
    bn.target("H: peak RSS rise / memmapped file size", m["peak_rise_mb"] / m["file_mb"],
              "<=", 0.05 if s.h_file_mb >= 4096 else 0.25 if s.h_file_mb >= 512 else 10.0,
              f"{m['peak_rise_mb']:.0f} MB for a {m['file_mb']} MB file")


def problem_f(bn: Bench) -> None:
    """Problem set F (``bench_f.py``): rows, targets and ``bn.f_rows``."""
    from . import bench_f

    nan = float("nan")
    rows = bench_f.run_f(bench_f.F_SIZES[bn.s.f_sizes], bn.f_reps, plan_rows=bn.f_plan_rows)
    bn.f_rows += rows
    for r in rows:
        prob, k = f"F {r['problem']} {r['mode']}", r["configs"]
        for key, impl, note in (
                ("jaxgd", f"jaxgd {r['mode']}" + ("" if "plan=" in r["mode"] else " (defaults)"),
                 f"{r['note']}; plan {r['plan']}; parity with both "
                 f"peers: {r['parity']:.1e} (relative max difference of final params)"),
                ("loop", "peer 0a: jitted step + Python loop", "runs one after another"),
                ("scan", "peer 0b: hand jit(lax.scan)", "runs one after another")):
            bn.add(prob, impl, k, f"{k}/{k}", r[f"{key}_compile_s"], r[f"{key}_run_s"], nan,
                   nan, note)
        what = "fit" if r["mode"] == "fit" else f"{r['mode']} of {k} / {k} peer runs"
        bn.target(f"F {r['problem']}: {what}, jaxgd / faster peer, run", r["ratio_run"], "<=",
                  bench_f.TARGET, "min of interleaved rounds, compile excluded")
        bn.target(f"F {r['problem']}: {what}, jaxgd / faster peer, first call",
                  r["ratio_first_call"], "<=", bench_f.TARGET, "compile included")


# ----------------------------------------------------------------------------- scaling


def child_main(spec: dict[str, Any]) -> dict[str, Any]:
    """One scaling point in a fresh process: B-like sweep of K lrs on N samples.

    Memory: the peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` once the data
    is loaded) above the RSS at that moment, for the first call (compile included) and
    for the timed calls (reset again after the first call).
    """
    import jax
    import jax.numpy as jnp

    import jaxgd

    x, y = regression_data(spec["n"], spec["d"])
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    jax.block_until_ready((xj, yj))
    p0 = params0("linreg", spec["d"])
    k = spec["k"]

    def call(r):
        return jaxgd.sweep(_jax_mse, p0, (xj, yj), optimizer="adam",
                           grid={"learning_rate": lr_grid(k, jitter=r)}, metrics="batch",
                           epochs=spec["epochs"], batch_size=spec["batch"], seed=0)

    ok = _reset_hwm()
    base = _proc_status("VmRSS")
    t = time.perf_counter()
    call(0)
    first = time.perf_counter() - t
    peak_first = _proc_status("VmHWM")
    ok = _reset_hwm() and ok
    base2 = _proc_status("VmRSS")
    ts = []
    for r in range(1, spec["reps"] + 1):
        t = time.perf_counter()
        call(r)
        ts.append(time.perf_counter() - t)
    peak_reps = _proc_status("VmHWM")
    run = _median(ts)
    nan = float("nan")
    return {
        **spec, "devices_seen": jax.device_count(), "first_s": first, "run_s": run,
        "compile_s": first - run,
        "peak_first_call_MB": (peak_first - base) if ok and peak_first and base else nan,
        "peak_run_MB": (peak_reps - base2) if ok and peak_reps and base2 else nan,
        "data_MB": (x.nbytes + y.nbytes) / 2**20,
        "flops": linear_flops(spec["n"], spec["d"], spec["batch"], spec["epochs"], k),
    }


def run_child(spec: dict[str, Any], timeout: int) -> dict[str, Any]:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    flags = " ".join(f for f in flags.split() if "force_host_platform_device_count" not in f)
    env["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count={spec['devices']}"
                        ).strip()
    cmd = [sys.executable, "-m", "experiments.bench", "--child", json.dumps(spec)]
    root = Path(__file__).resolve().parent.parent
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                           cwd=root)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timeout after {timeout} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("CHILD "):
            return json.loads(line[6:])
    return {**spec, "error": (p.stderr or p.stdout)[-400:]}


def scaling(bn: Bench, out: Path):
    import pandas as pd

    s = bn.s
    base = {"n": s.scale_n, "d": s.d, "batch": s.batch, "epochs": s.scale_epochs,
            "reps": bn.reps, "devices": 1}
    specs = []
    for k in s.scale_k:
        specs.append({**base, "k": k, "axis": "configs"})
    for n in s.scale_ns:
        specs.append({**base, "n": n, "k": s.scale_k_base, "axis": "samples"})
    for dev in s.devices:
        specs.append({**base, "k": s.scale_k_base, "devices": dev, "axis": "devices"})
    cache: dict[tuple, dict] = {}
    rows = []
    for sp in specs:
        key = (sp["n"], sp["k"], sp["devices"])
        if key not in cache:
            t = time.perf_counter()
            res = run_child({k: v for k, v in sp.items() if k != "axis"}, s.child_timeout)
            res["wall_s"] = time.perf_counter() - t
            cache[key] = res
            print(f"  child N={sp['n']} K={sp['k']} devices={sp['devices']}: "
                  + (f"{res['run_s']:.3f} s, run peak +{res['peak_run_MB']:.1f} MB"
                     if "error" not in res else res["error"][-200:]), flush=True)
        rows.append({"axis": sp["axis"], **cache[key]})
    df = pd.DataFrame(rows)
    for col in ("run_s", "compile_s", "peak_first_call_MB", "peak_run_MB", "flops"):
        if col not in df:
            df[col] = np.nan
    df["GFLOP/s"] = df["flops"] / df["run_s"] / 1e9
    # the memory line: the largest-K sweep vs 1 configuration, same N
    kk = df[df.axis == "configs"].sort_values("k")
    if len(kk) >= 2 and kk["peak_run_MB"].notna().all():
        lo, hi = kk.iloc[0], kk.iloc[-1]
        extra = hi["peak_run_MB"] - lo["peak_run_MB"]
        copies = (hi["k"] - lo["k"]) * hi["data_MB"]
        bn.target(f"memory: {int(hi['k'])}-config sweep minus 1-config (MB)", extra, "<=",
                  float(copies) / 10,
                  f"run peak RSS +{hi['peak_run_MB']:.1f} vs +{lo['peak_run_MB']:.1f} MB, "
                  f"first call (compile incl.) +{hi['peak_first_call_MB']:.0f} vs "
                  f"+{lo['peak_first_call_MB']:.0f} MB (fresh processes, N={int(hi['n'])}); "
                  f"data {hi['data_MB']:.1f} MB, a copy per config would add {copies:.0f} MB")
        bn.rows.append({
            "problem": "memory", "implementation": "jaxgd", "configs": int(hi["k"]),
            "measured": f"{int(hi['k'])} vs {int(lo['k'])}", "compile_s": hi["compile_s"],
            "run_s": hi["run_s"], "ms_per_config": 1e3 * hi["run_s"] / hi["k"],
            "speedup_of_jaxgd": float("nan"), "GFLOP/s": hi["flops"] / hi["run_s"] / 1e9,
            "pct_peak": 100 * hi["flops"] / hi["run_s"] / 1e9 / bn.peak,
            "peak_rss_MB": hi["peak_run_MB"],
            "note": f"fresh process, N={int(hi['n'])}, {int(hi['epochs'])} epoch; 1-config "
                    f"sweep: +{lo['peak_run_MB']:.1f} MB; data {hi['data_MB']:.1f} MB held "
                    f"once (a copy per config = {copies:.0f} MB)",
        })
    cols = ["axis", "n", "k", "devices", "epochs", "run_s", "compile_s", "GFLOP/s",
            "peak_first_call_MB", "peak_run_MB", "data_MB"]
    if "error" in df:
        cols.append("error")
    df = df[[c for c in cols if c in df]]
    plot_scaling(df, out)
    return df


def plot_scaling(df, out: Path):
    import matplotlib.pyplot as plt

    from ._common import save_figure

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    fig.subplots_adjust(wspace=0.5)
    for ax, axis, xcol, xlabel in ((axes[0], "configs", "k", "configurations K"),
                                   (axes[1], "samples", "n", "samples N")):
        sub = df[df.axis == axis].sort_values(xcol)
        if sub.empty or "run_s" not in sub:
            continue
        ax.plot(sub[xcol], sub["run_s"], "o-", label="run time (s)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds")
        ax2 = ax.twinx()
        ax2.plot(sub[xcol], sub["peak_run_MB"], "s--", color="C1",
                 label="run peak RSS rise (MB)")
        ax2.plot(sub[xcol], sub["peak_first_call_MB"], "^:", color="C2",
                 label="first call (compile) peak RSS rise (MB)")
        ax2.set_ylabel("MB", color="C1")
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="upper left")
    axes[0].set_title("time and memory vs configurations")
    axes[1].set_title("time and memory vs N")
    sub = df[df.axis == "devices"].sort_values("devices")
    if not sub.empty and "run_s" in sub:
        axes[2].bar([str(int(v)) for v in sub["devices"]], sub["run_s"])
        axes[2].set_xlabel("forced host devices")
        axes[2].set_ylabel("run time (s)")
        axes[2].set_title("same sweep on 1-8 forced CPU devices")
    save_figure(fig, out, "scaling")


def plot_speedups(df, bn: Bench, out: Path):
    import matplotlib.pyplot as plt

    from ._common import save_figure

    sub = df[(df.implementation != "jaxgd") & df["speedup_of_jaxgd"].notna()
             & (df.problem != "memory")]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(sub) + 1.2))
    labels = [f"{p}: {i}" for p, i in zip(sub.problem, sub.implementation, strict=True)]
    colors = [("C0" if "JAX" in i else "C1" if "PyTorch" in i else "C2")
              for i in sub.implementation]
    y = np.arange(len(sub))[::-1]
    ax.barh(y, sub["speedup_of_jaxgd"], color=colors)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1, color="k", lw=0.8)
    ax.set_xlabel("jaxgd speed-up (peer time / jaxgd time, log scale)")
    ax.set_title(f"jaxgd speed-up per problem and peer (matmul peak {bn.peak:.0f} GFLOP/s)")
    save_figure(fig, out, "speedup")


# ----------------------------------------------------------------------------- main


def run(out: Path, sizes: Sizes, reps: int, problems, do_scaling=True,
        f_reps: int | None = None) -> dict[str, Any]:
    import pandas as pd

    from ._common import save_table

    t0 = time.perf_counter()
    log = CompileLog()
    with log.watch():
        peak = matmul_peak(sizes.peak_reps)
        print(f"fp32 matmul peak (2048^2, jit): {peak:.1f} GFLOP/s", flush=True)
        bn = Bench(sizes, reps, peak, log)
        bn.f_reps = f_reps
        data = regression_data(sizes.n, sizes.d) if set(problems) & {"B", "C", "D"} else None
        b_run = None
        for prob in problems:
            t = time.perf_counter()
            if prob == "A":
                problem_a(bn)
            elif prob == "B":
                b_run = problem_b(bn, data)
                problem_b_store(bn, data, b_run)
            elif prob == "C":
                problem_c(bn, data, b_run)
            elif prob == "D":
                problem_d(bn, data)
            elif prob == "E":
                problem_e(bn)
            elif prob == "M":
                problem_memory(bn)
            elif prob == "H":
                problem_h(bn, data)
            elif prob == "F":
                problem_f(bn)
            print(f"problem {prob}: {time.perf_counter() - t:.1f} s", flush=True)
        if any(p in problems for p in "BCDE"):
            bn.target("recompiles when only values change", bn.recompiles, "<=", 0,
                      "XLA compilations logged during the timed jaxgd repetitions")
    scale_df = None
    if do_scaling:
        t = time.perf_counter()
        scale_df = scaling(bn, out)
        print(f"scaling: {time.perf_counter() - t:.1f} s", flush=True)
    bn.ratios()
    df = pd.DataFrame(bn.rows)
    tg = pd.DataFrame(bn.targets)
    files = save_table(df, out, "bench") + save_table(tg, out, "targets")
    if scale_df is not None:
        files += save_table(scale_df, out, "scaling")
    f_df = None
    if bn.f_rows:
        from .bench_f import f_table

        f_df = f_table(bn.f_rows)
        files += save_table(f_df, out, "f")
    plans_df = None
    if bn.f_plan_rows:
        from .bench_f import plan_table

        plans_df = plan_table(bn.f_plan_rows)
        files += save_table(plans_df, out, "f_plans")
    plot_speedups(df, bn, out)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
               f"{platform.python_implementation()} {platform.python_version()}")
    pd.options.display.float_format = "{:.4g}".format
    show = df.copy()
    print(f"\nmachine: {machine}; fp32 matmul peak {peak:.1f} GFLOP/s; reps {reps}")
    print(show.to_markdown(index=False, floatfmt=".3g"))
    print()
    print(tg.to_markdown(index=False, floatfmt=".3g"))
    if scale_df is not None:
        print()
        print(scale_df.to_markdown(index=False, floatfmt=".3g"))
    if f_df is not None:
        print()
        print(f_df.to_markdown(index=False, floatfmt=".3g"))
    if plans_df is not None:
        print()
        print(plans_df.to_markdown(index=False, floatfmt=".3g"))
    print(f"\nbench done in {time.perf_counter() - t0:.1f} s -> {out}")
    return {"table": df, "targets": tg, "scaling": scale_df, "f": f_df, "f_plans": plans_df,
            "peak_gflops": peak,
            "files": [str(f) for f in files]}


def main(argv=None, prog: str | None = None) -> dict[str, Any] | None:
    p = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").strip().splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="reduced peers and scaling (a few minutes)")
    p.add_argument("--tiny", action="store_true", help="very small sizes (CI smoke test)")
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions (median; default 3, 2 with --quick or --tiny; "
                   "F: interleaved rounds, min, default up to 5, 3 with --quick, up to 25 for "
                   "rows of short rounds)")
    p.add_argument("--problems", default=",".join(DEFAULT_PROBLEMS),
                   help="subset, e.g. A,B,C (default A-E,M,H; F, only when named: networks "
                   "against the loop a user would write)")
    p.add_argument("--no-scaling", action="store_true", help="skip the subprocess figures")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child is not None:
        print("CHILD " + json.dumps(child_main(json.loads(a.child))), flush=True)
        return None
    probs = [q.strip().upper() for q in a.problems.split(",") if q.strip()]
    bad = [q for q in probs if q not in PROBLEMS]
    if bad:
        p.error(f"unknown problem(s) {bad}; choose from {','.join(PROBLEMS)}")
    f_reps = a.reps  # F: interleaved rounds (its sizes' own unless given)
    if a.reps is None:
        a.reps = 2 if a.quick or a.tiny else 3
    if a.reps < 1:
        p.error("--reps must be >= 1")
    sizes = TINY if a.tiny else QUICK if a.quick else FULL
    return run(a.out, sizes, a.reps, probs, do_scaling=not a.no_scaling, f_reps=f_reps)


if __name__ == "__main__":
    main()
