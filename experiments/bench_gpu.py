r"""GPU benchmark: problems B and C at 256 and 4096 configurations, d = 64 and 1024, and F.

One short command for a lent accelerator (also runs on CPU, with smaller sizes):

- **B** (as in ``experiments/bench.py``): linear regression, Adam, N = 65 536, B = 256, 3 epochs,
  K log-spaced learning rates, one shared shuffle order, for K in {256, 4096} and
  d in {64, 1024}, through ``jaxgd.sweep`` at its defaults (what a user writes: numpy
  data in, no tuning keywords; the default full-data pass per epoch included), plus a
  labelled extra row per shape with ``metrics="batch"``;
- **C**: as B with 8 seeds x K/8 learning rates, each seed its own shuffle;
- **the per-configuration peer**: plain JAX + optax, one jitted ``lax.scan`` training
  function per configuration (the learning rate is an argument, so it compiles once per
  d; shuffle orders precomputed), configurations run one after another. It runs a
  subset of ``--peer-sub`` configurations and is extrapolated linearly to K (the
  "measured" column says so);
- **data-axis rows** (with several devices): B at the first (d, K) on a ``("config",
  "data")`` mesh of all devices as all-config ``(n, 1)`` and all-data ``(1, n)``;
- **a data-check row** (diagnostic): ``jaxgd.data.validate_data`` on the same data, the
  host-side check and transfer that every ``sweep`` call pays before its program runs;
- **the measured matmul peak**: a jitted ``x @ y`` of two n x n matrices (n = 8192 on an
  accelerator, 2048 on CPU), measured before and after the rows (the higher median kept),
  in fp32 at the default precision (what jaxgd's programs run
  at: on NVIDIA GPUs from Ampere on, XLA may use TF32 tensor cores for it), fp32 at
  ``precision="highest"`` (true fp32) and bf16.

- **problem set F** (``experiments/bench_f.py``, after B and C, within ``--f-budget`` seconds,
  default 240): a flax CNN with BatchNorm + dropout and an MLP on digits (the MLP also with a step
  budget), a character transformer, A, B and C, each as ``fit`` and as a sweep of N learning rates
  against the loop a user would write (a jitted optax step in a Python loop, and a hand-written
  ``jit(lax.scan)``), N peer runs one after another; ratios jaxgd / faster peer (target <= 1), run
  and first call (compile included) apart; the final parameters must agree (else the section reports
  the parity error and the exit code is 1). Sizes: F's ``quick`` sizes (``tiny`` with ``--tiny``):
  its Python loops are dispatch-bound, so the full sizes would spend most of a lent device's time in
  the peers. Then, per problem, the plans' choice (``bench_f.measure_plans``): its sweep under every
  execution plan forced (``plan=`` vmap | map x ``loop=`` scan | host) and at ``"auto"``, in one
  run: compile and run seconds per plan, which one auto chose (and what it measured).

FLOPs count the matrix products exactly as ``experiments/bench.py`` does: 4*b*d per
configuration per step (forward 2bd, gradient 2bd), every real batch (short last batches
included). The default (``metrics="auto"``: ``"full"`` for epochs) end-of-epoch pass over
all N samples is work jaxgd does on top and is *not* counted: the rate is the rate of useful
training work.

Timing: ``jax.block_until_ready`` (``sweep`` returns host arrays, so its call is complete
when it returns); the first call is run apart (compile + run), then the median of
``--reps`` calls with new hyper-parameter values each time; compile = first - median.
XLA compilations during the timed calls are counted from JAX's compile log.
Memory: on a device with ``memory_stats()`` (GPU) the allocator's peak bytes in use since
the start of the process, read after each row (it never decreases: within the B rows of
one d the sizes grow, so a new high belongs to that row; later rows show the peak so
far); on CPU the rise of the process's peak RSS during the row's timed calls. What to
expect at the full sizes (XLA:CPU's memory analysis of jaxgd's compiled program, not run):
the data 256 MB (held once), and as temporaries ~1.1 GB for B at K = 4096, d = 1024 (the
default full-data metrics pass holds a [K, N] fp32 residual, 4*K*N bytes; jaxgd's
``memory_budget`` chunk plan counts the loss's intermediates on all N samples, so at the
default 2 GiB budget K = 4096 runs as two chunks), ~0.08 GB
with ``metrics="batch"``, ~3.1 GB for C at K = 4096: far inside an H200's memory.

Budget: ``--budget`` seconds (default 200) for the rows; once spent, the remaining rows
are written as "skipped (budget)" (a row already started finishes with one timed call).
The JSON (strict: NaN written as null) and the markdown are rewritten after every row,
so a run cut short still leaves its rows. Exit code 0, or 1 if a row failed (its error
and traceback are in its row and on stderr; the other rows still run).

Run on a lent CUDA device (one H200: expected about 2 minutes for B and C, and F within
its 4-minute budget; not yet run on a GPU; the device tool sends the checkout, nothing
needs installing), ``timeout_s`` about 540 (``--problems B,C``: about 300)::

    mkdir -p $OUT/gpu && set -o pipefail && PYTHONUNBUFFERED=1 PYTHONPATH=. \
      python3 -m experiments.bench_gpu --out $OUT/gpu 2>&1 | tee $OUT/gpu/log.txt

``$OUT/gpu/gpu_bench.md`` holds what goes into the README: replace the line "No GPU was
lent ..." under "## Performance" with a sub-section "### GPU (<device kind>)" holding the
device line, the matmul-peak table, the rows table and the targets table (the notes stay
in the file). ``$OUT/gpu/gpu_bench.json`` holds the raw numbers (every repetition's time,
FLOPs, peaks, stop reasons, F's rows under ``"f"``). To rerun a part: ``--ds 1024 --ks 4096``
(and ``--budget``), ``--problems F`` (F alone) or ``--problems B,C``.

On CPU: ``--tiny`` (~30 s, the CI smoke test) or ``--medium`` (N = 16 384, d in {64, 256},
K in {256, 1024}; ~3 minutes) to check scaling; the full sizes on a 2-core CPU take many
minutes per row and the budget cuts them short.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from .bench import (
    CompileLog,
    _jax_mse,
    _subset,
    linear_flops,
    lr_grid,
    make_optax_train,
    np_orders,
    params0,
    peak_rss,
    regression_data,
)

DEFAULT_OUT = Path("demo_out") / "bench_gpu"
MD_NAME = "gpu_bench.md"
JSON_NAME = "gpu_bench.json"


@dataclasses.dataclass(frozen=True)
class GpuSizes:
    name: str = "full"
    n: int = 65_536
    batch: int = 256
    epochs: int = 3
    ds: tuple = (64, 1024)
    ks: tuple = (256, 4096)
    c_seeds: int = 8
    peer_sub: int = 8  # per-configuration peer: configurations actually run per d
    peak_n_accel: int = 8192
    peak_n_cpu: int = 2048
    peak_reps: int = 5
    reps: int = 3
    f_sizes: str = "quick"  # problem set F (bench_f.F_SIZES): a Python loop of the full A
    # (16 x 100 000 dispatches per sweep call) would take most of a lent device's time


FULL = GpuSizes()
MEDIUM = dataclasses.replace(FULL, name="medium", n=16_384, ds=(64, 256), ks=(256, 1024),
                             peer_sub=4)
# tiny: one d (each shape costs three compilations, seconds each on a loaded CPU)
TINY = dataclasses.replace(FULL, name="tiny", n=2048, batch=64, epochs=2, ds=(8,),
                           ks=(8, 16), c_seeds=2, peer_sub=2, peak_n_accel=1024,
                           peak_n_cpu=256, peak_reps=3, reps=2, f_sizes="tiny")
SIZES = {"full": FULL, "medium": MEDIUM, "tiny": TINY}

PEAK_KINDS = (  # key, label, dtype name, precision
    ("fp32", "fp32, default precision", "float32", None),
    ("fp32_highest", "fp32, precision=highest", "float32", "highest"),
    ("bf16", "bf16", "bfloat16", None),
)


# ----------------------------------------------------------------------------- device


def device_info() -> dict[str, Any]:
    import jax
    import jaxlib
    import optax

    import jaxgd

    dev = jax.devices()[0]
    stats = _memory_stats()
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device": str(dev),
        "device_count": jax.device_count(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "optax": optax.__version__,
        "jaxgd": getattr(jaxgd, "__version__", "?"),
        "python": platform.python_version(),
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "memory_limit_MB": (stats.get("bytes_limit", 0) / 2**20) if stats else None,
        "default_matmul_precision": str(jax.config.jax_default_matmul_precision),
    }


def _memory_stats() -> dict[str, int] | None:
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # some backends raise instead of returning None
        return None
    return stats or None


def device_peak_mb() -> float:
    stats = _memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return float("nan")
    return stats["peak_bytes_in_use"] / 2**20


def measure_peaks(n: int, reps: int) -> dict[str, dict[str, Any]]:
    """Jitted ``x @ y`` (n x n) rate in GFLOP/s per dtype/precision, median of ``reps``."""
    import jax
    import jax.numpy as jnp

    k1, k2 = jax.random.split(jax.random.key(0))
    out = {}
    for key, label, dtype, prec in PEAK_KINDS:
        dt = jnp.dtype(dtype)
        x = jax.random.normal(k1, (n, n), jnp.float32).astype(dt)
        y = jax.random.normal(k2, (n, n), jnp.float32).astype(dt)
        f = jax.jit(lambda a, b, prec=prec: jnp.matmul(a, b, precision=prec))
        t = time.perf_counter()
        f(x, y).block_until_ready()
        first = time.perf_counter() - t
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            f(x, y).block_until_ready()
            ts.append(time.perf_counter() - t)
        med = float(statistics.median(ts))
        out[key] = {"label": label, "n": n, "dtype": dtype, "precision": prec or "default",
                    "first_s": first, "times_s": ts, "run_s": med,
                    "GFLOP/s": 2.0 * n**3 / med / 1e9}
        del x, y
    return out


# ----------------------------------------------------------------------------- rows


class Budget:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()


def time_calls(fn, reps: int, budget: Budget, log: CompileLog | None):
    """``fn(0)`` once (compile + run), then ``fn(1..)`` up to ``reps`` times while the
    budget lasts (at least once). Returns (first_s, [rep_s], recompiles, rss_rise_MB)."""
    t = time.perf_counter()
    fn(0)
    first = time.perf_counter() - t
    c0 = log.count if log is not None else 0
    times: list[float] = []
    with peak_rss() as rss:
        for r in range(1, reps + 1):
            if times and budget.left() <= 0:
                break
            t = time.perf_counter()
            fn(r)
            times.append(time.perf_counter() - t)
    rec = (log.count - c0) if log is not None else 0
    return first, times, rec, rss[0]


class GpuBench:
    def __init__(self, sizes: GpuSizes, reps: int, budget: Budget, out: Path,
                 info: dict[str, Any], peaks: dict[str, dict[str, Any]]):
        self.s = sizes
        self.reps = reps
        self.budget = budget
        self.out = out
        self.info = info
        self.peaks = peaks
        self.log = CompileLog()
        self.rows: list[dict[str, Any]] = []
        self.data: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # -- data, loaded once per d
    def xy(self, d: int):
        if d not in self.data:
            self.data[d] = regression_data(self.s.n, d)
        return self.data[d]

    def flops(self, d: int, k: int) -> float:
        return linear_flops(self.s.n, d, self.s.batch, self.s.epochs, k)

    def row(self, problem, impl, d, k, fn=None, *, measured=None, scale=1.0, flops=None,
            note="", log=True):
        """Time ``fn(r)`` and append a row. ``scale`` multiplies the measured time (the
        extrapolation of a subset to K configurations)."""
        s = self.s
        base = {"problem": problem, "implementation": impl, "d": d, "configs": k,
                "n": s.n, "batch": s.batch, "epochs": s.epochs,
                "measured": measured or f"{k}/{k}", "reps": 0, "first_s": math.nan,
                "compile_s": math.nan, "times_s": [], "run_s": math.nan,
                "flops": self.flops(d, k) if flops is None else flops,
                "GFLOP/s": math.nan, "device_peak_MB": math.nan, "rss_rise_MB": math.nan,
                "recompiles": None, "status": "ok", "note": note}
        if fn is None or self.budget.left() <= 0:
            base["status"] = "skipped (budget)"
            return self._append(base)
        try:
            first, times, rec, rss = time_calls(fn, self.reps, self.budget,
                                                self.log if log else None)
        except Exception as e:  # keep going: a lent device is not to be wasted
            first_line = (str(e).splitlines() or [""])[0][:200]
            base["status"] = f"error: {type(e).__name__}: {first_line}"
            base["traceback"] = traceback.format_exc()[-2000:]
            return self._append(base)
        med = float(statistics.median(times))
        run = med * scale
        base.update(reps=len(times), first_s=first, times_s=times, run_s=run,
                    compile_s=first - med, recompiles=rec if log else None,
                    device_peak_MB=device_peak_mb(), rss_rise_MB=rss)
        if base["flops"]:
            base["GFLOP/s"] = base["flops"] / run / 1e9
        return self._append(base)

    def _pct(self, row):
        gf = row["GFLOP/s"]
        for key in self.peaks:
            row[f"pct_{key}"] = 100.0 * gf / self.peaks[key]["GFLOP/s"] if gf == gf else math.nan

    def set_peaks(self, again: dict[str, dict[str, Any]]):
        """Keep, per kind, the faster of the two peak measurements (before and after the
        rows: a peak read while the machine was busy would flatter every share)."""
        for key, v in again.items():
            first = self.peaks[key]
            best = v if v["GFLOP/s"] > first["GFLOP/s"] else first
            self.peaks[key] = dict(best, before_GFLOP_s=first["GFLOP/s"],
                                   after_GFLOP_s=v["GFLOP/s"])
        for row in self.rows:
            self._pct(row)

    def _append(self, row):
        gf = row["GFLOP/s"]
        self._pct(row)
        self.rows.append(row)
        t = row["run_s"]
        print(f"  [{self.budget.elapsed():6.1f} s] {row['problem']:<3} {row['implementation']:<34}"
              f" d={row['d']:<5} K={row['configs']:<5} "
              + (f"run {t:.4g} s, compile {row['compile_s']:.3g} s, {gf:.4g} GFLOP/s"
                 if row["status"] == "ok" else row["status"]), flush=True)
        write_outputs(self.out, self.result())
        return row

    def result(self) -> dict[str, Any]:
        return {"info": self.info, "sizes": dataclasses.asdict(self.s), "reps": self.reps,
                "budget_s": self.budget.seconds, "elapsed_s": self.budget.elapsed(),
                "peaks": self.peaks, "rows": self.rows, "targets": targets(self.rows)}

    # -- the rows
    def sweep_row(self, problem, d, k, metrics=None, mesh_shape=None):
        import jaxgd

        s = self.s
        impl = "jaxgd sweep (defaults)" if metrics is None else f"jaxgd sweep, metrics={metrics!r}"
        if mesh_shape is not None:
            impl = f"jaxgd sweep, mesh (config, data) = {mesh_shape}"
        if self.budget.left() <= 0:  # before making the data
            return self.row(problem, impl, d, k)
        x, y = self.xy(d)
        p0 = params0("linreg", d)
        if problem == "B":
            grid = lambda r: {"learning_rate": lr_grid(k, jitter=r)}  # noqa: E731
            kw = {"seed": 0}
            what = "one shared shuffle order"
        else:
            lrs = k // s.c_seeds
            grid = lambda r: {"seed": list(range(s.c_seeds)),  # noqa: E731
                              "learning_rate": lr_grid(lrs, jitter=r)}
            kw = {}
            what = f"{s.c_seeds} seeds x K/{s.c_seeds} lrs, each seed its own shuffle"
        extra = {} if metrics is None else {"metrics": metrics}
        if mesh_shape is not None:
            import jax

            extra["mesh"] = jax.sharding.Mesh(
                np.asarray(jax.devices()).reshape(mesh_shape), ("config", "data"))
        box = {}

        def call(r):
            box["sw"] = jaxgd.sweep(_jax_mse, p0, (x, y), optimizer="adam", grid=grid(r),
                                    epochs=s.epochs, batch_size=s.batch, **kw, **extra)

        row = self.row(problem, impl, d, k, call,
                       note=f"{what}; numpy data in (checked and moved to the device per call)"
                       + ("; the default full-data metrics pass holds a [K, N] residual, "
                          f"4*K*N bytes ({4 * k * s.n / 2**20:.0f} MB here)"
                          if metrics is None else "; tuned (extra row)"))
        if "sw" in box:
            tab = box["sw"].table
            row["configs_returned"] = len(tab)
            if "stop_reason" in tab:
                row["stop_reasons"] = {str(a): int(b) for a, b in
                                       tab["stop_reason"].value_counts().items()}
            if len(tab) != k and row["status"] == "ok":
                row["status"] = f"error: sweep returned {len(tab)} rows, expected {k}"
        return row

    def peer_rows(self, d):
        import jax
        import jax.numpy as jnp

        s = self.s
        impl = "JAX+optax per config"
        if self.budget.left() <= 0:
            return [self.row("B", impl, d, k) for k in s.ks]
        x, y = self.xy(d)
        kmax = max(s.ks)
        sub = _subset(list(lr_grid(kmax)), s.peer_sub)
        train = make_optax_train("linreg", s.n, s.batch, s.epochs)
        xj, yj = jax.device_put(x), jax.device_put(y)
        pj = jax.tree.map(jnp.asarray, params0("linreg", d))
        order = jax.device_put(np_orders(s.n, s.epochs, 0))

        def call(r):
            for lr in sub:
                jax.block_until_ready(train(jnp.float32(lr * (1 + 1e-3 * r)), pj, xj, yj, order))

        note = ("one jitted lax.scan per config (lr an argument: compiled once), run one "
                f"after another; {len(sub)} configs run, time per config x K (extrapolated)")
        rows = []
        first_row = None
        for k in s.ks:
            if first_row is None:
                first_row = self.row("B", impl, d, k, call, measured=f"{len(sub)}/{k}",
                                     scale=k / len(sub), note=note)
                rows.append(first_row)
                continue
            # the same measurement, extrapolated to another K
            r = dict(first_row, configs=k, measured=f"{len(sub)}/{k}", flops=self.flops(d, k))
            if r["status"] == "ok":
                r["run_s"] = first_row["run_s"] * k / first_row["configs"]
                r["GFLOP/s"] = r["flops"] / r["run_s"] / 1e9
            self._append(r)
            rows.append(r)
        return rows

    def check_row(self, d):
        from jaxgd.data import validate_data

        impl = "data check + transfer (diagnostic)"
        if self.budget.left() <= 0:
            return self.row("B", impl, d, 1, flops=0.0)
        x, y = self.xy(d)

        def call(r):
            validate_data((x, y))

        row = self.row("B", impl, d, 1, call, flops=0.0,
                        log=False,
                        note="jaxgd.data.validate_data: host finiteness check + device_put "
                        f"of {(x.nbytes + y.nbytes) / 2**20:.0f} MB, paid by every sweep call")
        row["compile_s"] = math.nan  # nothing compiles: first call minus median is noise
        write_outputs(self.out, self.result())
        return row


# ----------------------------------------------------------------------------- plan


def run_f_rows(sizes: GpuSizes, budget_s: float, enabled: bool) -> dict[str, Any]:
    """Problem set F (``bench_f.py``) within its own budget; a failure (a parity error
    included) is recorded with its traceback, never hidden."""
    from . import bench_f

    budget, skipped = Budget(budget_s), []
    res: dict[str, Any] = {"sizes": sizes.f_sizes, "budget_s": budget_s, "rows": [],
                           "plans": [], "skipped": skipped, "error": None}
    if not enabled:
        return res
    try:
        res["rows"] = bench_f.run_f(bench_f.F_SIZES[sizes.f_sizes], budget_left=budget.left,
                                    skipped=skipped, echo=lambda m: print(m, flush=True),
                                    plan_rows=res["plans"])
    except Exception as e:  # noqa: BLE001 - recorded in the output, exit code 1
        res["error"] = f"error: {type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc()
    res["elapsed_s"] = budget.elapsed()
    return res


def run(out: Path, sizes: GpuSizes, reps: int, budget_s: float, f_budget_s: float = 240.0,
        problems=("B", "C", "F")) -> dict[str, Any]:
    import jax

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    info = device_info()
    on_cpu = info["platform"] == "cpu"
    pn = sizes.peak_n_cpu if on_cpu else sizes.peak_n_accel
    print(f"device: {info['device_kind']} ({info['platform']}, {info['device_count']} "
          f"device(s)); jax {info['jax']}; sizes {sizes.name}; budget {budget_s:g} s",
          flush=True)
    peaks = measure_peaks(pn, sizes.peak_reps)
    for v in peaks.values():
        print(f"  matmul peak {v['label']} ({pn}^2): {v['GFLOP/s']:.1f} GFLOP/s", flush=True)
    budget = Budget(budget_s)
    bn = GpuBench(sizes, reps, budget, out, info, peaks)
    with bn.log.watch():
        # most important first (the budget skips from the end); sizes grow within a block
        shapes = [(d, k) for d in sizes.ds for k in sizes.ks]
        if "B" in problems:
            for d in sizes.ds:
                for k in sizes.ks:
                    bn.sweep_row("B", d, k)
                bn.peer_rows(d)
        if "C" in problems:
            for d, k in shapes:
                bn.sweep_row("C", d, k)
        if "B" in problems:
            for d, k in shapes:
                bn.sweep_row("B", d, k, metrics="batch")
            for d in sizes.ds:
                bn.check_row(d)
            if info["device_count"] > 1:  # the data axis: all-config vs all-data
                nd = info["device_count"]
                for shape in [(nd, 1), (1, nd)]:
                    bn.sweep_row("B", sizes.ds[0], sizes.ks[0], mesh_shape=shape)
    bn.data.clear()
    bn.set_peaks(measure_peaks(pn, sizes.peak_reps))
    for v in bn.peaks.values():
        print(f"  matmul peak {v['label']}: {v['before_GFLOP_s']:.1f} before the rows, "
              f"{v['after_GFLOP_s']:.1f} after; the higher is used", flush=True)
    res = bn.result()
    res["f"] = run_f_rows(sizes, f_budget_s, "F" in problems)
    res["wall_s"] = time.perf_counter() - t0
    files = write_outputs(out, res)
    print()
    print(render_markdown(res))
    print(f"bench_gpu done in {res['wall_s']:.1f} s (rows {budget.elapsed():.1f} s of a "
          f"{budget_s:g} s budget) -> {', '.join(str(f) for f in files)}", flush=True)
    jax.clear_caches()
    return res


# ----------------------------------------------------------------------------- targets


def _find(rows, problem, impl, d, k):
    for r in rows:
        if (r["problem"] == problem and r["implementation"] == impl and r["d"] == d
                and r["configs"] == k and r["status"] == "ok"):
            return r
    return None


def targets(rows) -> list[dict[str, Any]]:
    """The benchmark plan's targets this run can speak to, per (d, K)."""
    out = []
    shapes = sorted({(r["d"], r["configs"]) for r in rows if r["problem"] == "B"
                     and r["implementation"] == "jaxgd sweep (defaults)"})
    for d, k in shapes:
        b = _find(rows, "B", "jaxgd sweep (defaults)", d, k)
        bb = _find(rows, "B", "jaxgd sweep, metrics='batch'", d, k)
        peer = _find(rows, "B", "JAX+optax per config", d, k)
        c = _find(rows, "C", "jaxgd sweep (defaults)", d, k)

        def add(name, value, op, goal, note=""):
            ok = (value >= goal if op == ">=" else value <= goal) if value == value else None
            out.append({"target": name, "d": d, "configs": k, "measured": value,
                        "goal": f"{op} {goal:g}", "met": ok, "note": note})

        nan = math.nan
        add("B defaults vs per-config JAX (x faster)",
            peer["run_s"] / b["run_s"] if b and peer else nan, ">=", 100,
            "peer extrapolated from a subset")
        add("B defaults: % of fp32 matmul peak", b["pct_fp32"] if b else nan, ">=", 25,
            "peak at default precision")
        add("B metrics='batch': % of fp32 matmul peak", bb["pct_fp32"] if bb else nan, ">=",
            30)
        add("C time / B time (defaults)", c["run_s"] / b["run_s"] if b and c else nan, "<=", 1.5)
    return out


# ----------------------------------------------------------------------------- output


def _fmt(v, spec=".3g"):
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if v != v else format(v, spec)
    return str(v)


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [[_fmt(v) for v in r] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in cells]
    return "\n".join(lines)


def render_markdown(res: dict[str, Any]) -> str:
    info, s, peaks = res["info"], res["sizes"], res["peaks"]
    parts = [
        "# jaxgd GPU benchmark (experiments/bench_gpu.py)",
        "",
        f"Device: **{info['device_kind']}** ({info['platform']}, {info['device_count']} "
        f"device(s), memory limit {_fmt(info['memory_limit_MB'], '.0f') or 'n/a'} MB); "
        f"host {info['host']}; jax {info['jax']}, jaxlib {info['jaxlib']}, optax "
        f"{info['optax']}, Python {info['python']}.",
        f"Sizes `{s['name']}`: N = {s['n']}, batch {s['batch']}, {s['epochs']} epochs, Adam, "
        f"linear regression; median of up to {res['reps']} timed calls, compile apart; "
        f"rows took {res['elapsed_s']:.0f} s of a {res['budget_s']:g} s budget.",
        "FLOPs: 4*b*d per configuration per step (the default full-data metrics pass not "
        "counted). Peer rows run a subset and are extrapolated (\"measured\" column).",
        "",
        "## Measured matmul peak (jitted x @ y)",
        "",
        md_table(["kind", "n", "run ms", "GFLOP/s", "before / after the rows"],
                 [[v["label"], v["n"], 1e3 * v["run_s"], v["GFLOP/s"],
                   f"{v.get('before_GFLOP_s', v['GFLOP/s']):.4g} / "
                   f"{v.get('after_GFLOP_s', math.nan):.4g}"]
                  for v in peaks.values()]),
        "",
        "## Rows",
        "",
    ]
    mem_col = "peak MB (device)" if info["platform"] != "cpu" else "RSS rise MB"
    head = ["problem", "implementation", "d", "configs", "measured", "reps", "compile s",
            "run s", "ms/config", "GFLOP/s", "% fp32", "% fp32 highest", "% bf16",
            "x vs per-config JAX", mem_col, "recompiles", "status"]
    body = []
    for r in res["rows"]:
        peer = _find(res["rows"], "B", "JAX+optax per config", r["d"], r["configs"])
        speed = (peer["run_s"] / r["run_s"] if peer and r["status"] == "ok"
                 and r["implementation"].startswith("jaxgd") else math.nan)
        mem = r["device_peak_MB"] if info["platform"] != "cpu" else r["rss_rise_MB"]
        body.append([r["problem"], r["implementation"], r["d"], r["configs"], r["measured"],
                     r["reps"], r["compile_s"], r["run_s"], 1e3 * r["run_s"] / r["configs"],
                     r["GFLOP/s"], r["pct_fp32"], r["pct_fp32_highest"], r["pct_bf16"], speed,
                     mem, r["recompiles"], r["status"]])
    parts += [md_table(head, body), "", "## Targets (the benchmark plan's)", ""]
    parts.append(md_table(["target", "d", "configs", "measured", "goal", "met", "note"],
                          [[t["target"], t["d"], t["configs"], t["measured"], t["goal"],
                            {True: "yes", False: "no", None: "n/a"}[t["met"]], t["note"]]
                           for t in res["targets"]]))
    notes = [f"- {r['problem']} {r['implementation']}: {r['note']}"
             for r in res["rows"] if r["note"] and r["status"] == "ok"]
    if notes:
        parts += ["", "## Notes", "", *dict.fromkeys(notes)]
    if res.get("f") is not None:
        parts += ["", *render_f(res["f"])]
    return "\n".join(parts) + "\n"


def render_f(f: dict[str, Any]) -> list[str]:
    """The problem-set-F section: one row per (problem, fit / sweep), ratios jaxgd / peer."""
    from .bench_f import COLUMNS, PLAN_COLUMNS, TARGET

    head = [lab for _, lab in COLUMNS]
    body = [[{True: "met", False: "unmet"}.get(r[k], r[k]) if k.startswith("met")
             else r[k] for k, _ in COLUMNS] for r in f["rows"]]
    parts = ["## Problem set F: jaxgd against the user's loop (peer 0)", "",
             f"Sizes `{f['sizes']}` (experiments/bench_f.py); target jaxgd / faster peer "
             f"<= {TARGET:g}; rows took {f.get('elapsed_s', 0.0):.0f} s of a "
             f"{f['budget_s']:g} s budget.", ""]
    if body:
        parts.append(md_table(head, body))
    if f.get("plans"):
        parts += ["", "### The plans' choice: each sweep under every execution plan", "",
                  md_table([lab for _, lab in PLAN_COLUMNS],
                           [[("yes" if r[k] else "") if k == "auto" else r[k]
                             for k, _ in PLAN_COLUMNS] for r in f["plans"]])]
    if f["skipped"]:
        parts += ["", "Skipped (budget): " + ", ".join(f["skipped"]) + "."]
    if f["error"]:
        parts += ["", f"F stopped: {f['error']}"]
    notes = dict.fromkeys(f"- {r['problem']}: {r['note']}" for r in f["rows"])
    if notes:
        parts += ["", *notes]
    return parts


def _no_nan(o):
    """NaN -> null, so the JSON is strict (jq, browsers) and not only Python-readable."""
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _no_nan(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_no_nan(v) for v in o]
    return o


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)


def _atomic_write(path: Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_outputs(out: Path, res: dict[str, Any]) -> list[Path]:
    md, js = out / MD_NAME, out / JSON_NAME
    _atomic_write(js, json.dumps(_no_nan(res), indent=1, default=_json_default,
                                 allow_nan=False))
    _atomic_write(md, render_markdown(res))
    return [md, js]


# ----------------------------------------------------------------------------- main


def main(argv=None, prog: str | None = None) -> int:
    """Run the GPU benchmark; returns the exit code (0 ok, 1 a row failed, 2 bad usage)."""
    p = argparse.ArgumentParser(prog=prog or "python -m experiments.bench_gpu",
                                description=(__doc__ or "").strip().splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"output folder (default: {DEFAULT_OUT})")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="very small sizes (CPU smoke test)")
    size.add_argument("--medium", action="store_true", help="N=16384, d 64/256, K 256/1024")
    p.add_argument("--reps", type=int, default=None, help="timed calls per row (median)")
    p.add_argument("--budget", type=float, default=200.0,
                   help="seconds for the rows; later rows are skipped (default 200)")
    p.add_argument("--ds", default=None, help="feature counts d, e.g. 64,1024")
    p.add_argument("--ks", default=None, help="configuration counts K, e.g. 256,4096")
    p.add_argument("--peer-sub", type=int, default=None,
                   help="configurations the per-config JAX peer runs (extrapolated to K)")
    p.add_argument("--problems", default="B,C,F",
                   help="subset of B,C,F (F: bench_f.py's networks against the loop a user "
                   "would write)")
    p.add_argument("--f-budget", type=float, default=240.0,
                   help="seconds for problem set F; later rows are skipped (default 240)")
    try:
        a = p.parse_args(argv)
        if a.reps is not None and a.reps < 1:
            p.error(f"--reps must be >= 1, got {a.reps}")
        if not a.budget > 0 or not math.isfinite(a.budget):
            p.error(f"--budget must be a positive number of seconds, got {a.budget}")
        if a.peer_sub is not None and a.peer_sub < 1:
            p.error(f"--peer-sub must be >= 1, got {a.peer_sub}")
        probs = tuple(q.strip().upper() for q in a.problems.split(",") if q.strip())
        if not probs or any(q not in ("B", "C", "F") for q in probs):
            p.error(f"--problems must be a subset of B,C,F, got {a.problems!r}")
        if not a.f_budget > 0 or not math.isfinite(a.f_budget):
            p.error(f"--f-budget must be a positive number of seconds, got {a.f_budget}")
        if a.out.exists() and not a.out.is_dir():
            p.error(f"--out {a.out} exists and is not a folder")
        sizes = TINY if a.tiny else MEDIUM if a.medium else FULL
        over: dict[str, Any] = {}
        for name in ("ds", "ks"):
            text = getattr(a, name)
            if text is not None:
                try:
                    vals = tuple(int(v) for v in text.split(","))
                except ValueError:
                    vals = ()
                if not vals or min(vals) < 1:
                    p.error(f"--{name} must be positive integers separated by commas, "
                            f"got {text!r}")
                over[name] = vals
        if a.peer_sub is not None:
            over["peer_sub"] = a.peer_sub
        sizes = dataclasses.replace(sizes, **over)
        bad_k = [k for k in sizes.ks if k % sizes.c_seeds]
        if bad_k:
            p.error(f"--ks {bad_k} must be multiples of the {sizes.c_seeds} seeds of C")
    except SystemExit as e:
        return int(e.code or 0)
    res = run(a.out, sizes, a.reps or sizes.reps, a.budget, a.f_budget, probs)
    bad = [r for r in res["rows"] if r["status"].startswith("error")]
    for r in bad:
        print(f"row failed: {r['problem']} {r['implementation']} d={r['d']} "
              f"K={r['configs']}:\n{r.get('traceback', r['status'])}", file=sys.stderr)
    f = res.get("f") or {}
    if f.get("error"):
        print(f"problem set F failed:\n{f['traceback']}", file=sys.stderr)
    return 1 if bad or f.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
