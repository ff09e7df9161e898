"""The ``jaxgd`` command: run sweeps from TOML configs, redraw figures, print tables.

    jaxgd sweep [CONFIG.toml] [--set KEY=VALUE ...] [--out DIR] [--chunk-size N] [--quiet]
                [--coordinator HOST:PORT --num-processes N --process-id I]
    jaxgd plot DIR
    jaxgd show DIR [--sort COL] [--top N]
    jaxgd export DIR --to {orbax,tensorboard,mlflow,wandb} DEST [--row N] [--name NAME]
    jaxgd demo [--out DIR] [--quick]
    jaxgd bench [--quick] ...
    jaxgd bench --gpu [--out DIR] ...     (the accelerator benchmark: experiments/bench_gpu.py)

User errors (a bad config, a bad value, a bad option, a missing folder, a folder locked
by another run), operating-system errors (disk full, read-only folder, no permission:
the path and the reason) and a missing optional package (named, with its ``pip
install`` command) print one line ``jaxgd: error: ...`` on stderr and exit with status 2.

JAX is imported lazily: with ``--coordinator`` the command calls
``jax.distributed.initialize`` before any JAX operation.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

__all__ = ["main", "summary", "missing_dependency"]

PROG = "jaxgd"


class UserError(Exception):
    """An error of the user's making: reported as one line, exit status 2."""


# ----------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``jaxgd: error: ...``, exit 2), not a
    usage block."""

    def error(self, message: str):
        raise UserError(f"{message} (see '{self.prog} --help')")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Gradient-descent sweeps as one compiled JAX program per group.",
        epilog="Run 'jaxgd COMMAND --help' for a command's options. "
               "Config format: experiments/configs/README.md",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser(
        "sweep", help="run a sweep from a TOML config (or the built-in default)",
        description="Run every configuration of a sweep, save table/history/params and "
                    "figures in --out, print a summary. Re-running with the same --out "
                    "resumes: finished chunks are kept.")
    s.add_argument("config", nargs="?", help="TOML config (default: the built-in "
                   "learning rate x batch size x seed sweep on the diabetes data)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set a key of the config (repeatable), VALUE a TOML value: "
                        "--set train.epochs=20 --set 'sweep.learning_rate=[1e-3, 1e-2]'")
    s.add_argument("--out", help="output folder (default: runs/<config stem>)")
    s.add_argument("--track", action="append", default=[], type=_track_arg,
                   metavar="KIND:DIR",
                   help="also write every configuration live to a tracker (repeatable): "
                        "tensorboard:DIR, mlflow:DIR (or mlflow:sqlite:///runs.db), "
                        "wandb:DIR (offline runs); replaces the config's [track] entry "
                        "of the same KIND")
    s.add_argument("--chunk-size", type=_positive_int, metavar="N",
                   help="most configurations per compiled call")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    s.add_argument("--top", type=_nonneg_int, default=10, metavar="N",
                   help="rows of the summary table (default 10; 0 = all)")
    s.add_argument("--no-plots", action="store_true", help="skip the figures")
    g = s.add_argument_group("several hosts (jax.distributed)")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="address of process 0's coordinator service")
    g.add_argument("--num-processes", type=_positive_int, metavar="N")
    g.add_argument("--process-id", type=_nonneg_int, metavar="I")
    g.add_argument("--init-timeout", type=_positive_int, default=300, metavar="S",
                   help="seconds to wait for all processes (default 300)")

    pl = sub.add_parser("plot", help="redraw the figures of a saved run",
                        description="Redraw the figures of a saved run folder (PNG files "
                                    "written beside its results).")
    pl.add_argument("dir", help="run folder (written by 'jaxgd sweep' or sweep(out=...))")
    pl.add_argument("--out", help="where to write the PNGs (default: DIR)")

    sh = sub.add_parser("show", help="print the table of a saved run",
                        description="Print the results table of a saved run folder.")
    sh.add_argument("dir", help="run folder")
    sh.add_argument("--sort", metavar="COL", help="sort by this column (default: the "
                    "sweep's metric, final_val_loss with a validation set else final_loss). "
                    "A cross-validation run shows settings averaged over folds, sorted by "
                    "final_val_loss_mean: COL may be any column of that table (e.g. "
                    "final_val_loss_std), or a per-fold column to list every fold")
    sh.add_argument("--desc", action="store_true", help="sort descending")
    sh.add_argument("--top", type=_nonneg_int, default=20, metavar="N",
                    help="rows to print (default 20; 0 = all)")

    _export_parser(sub)
    for name, what in (("demo", "the gradient-descent demo experiments"),
                       ("bench", "the benchmarks")):
        d = sub.add_parser(name, help=f"run {what} (experiments.{name})", add_help=False,
                           description=f"Run {what}: forwards its arguments to "
                                       f"experiments.{name}.main(argv), e.g. --out DIR "
                                       "--quick.")
        d.add_argument("args", nargs=argparse.REMAINDER, help=f"arguments of experiments.{name}")
    return p


def _track_arg(text: str) -> str:
    """A ``--track`` value, checked as ``track=`` is (argparse reports the message)."""
    from .options import track_targets

    try:
        track_targets("--track", text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _export_parser(sub) -> None:
    ex = sub.add_parser(
        "export", help="write a saved run to orbax or an experiment tracker",
        description="Write a saved run folder elsewhere: one configuration's parameters "
                    "(and model state) as an orbax checkpoint, or every configuration as "
                    "a run of TensorBoard (event files), MLflow (a local store or a "
                    "tracking URI) or W&B (offline runs).")
    ex.add_argument("dir", help="run folder")
    ex.add_argument("--to", nargs=2, required=True, metavar=("KIND", "DEST"),
                    help="orbax, tensorboard, mlflow or wandb, and where to write")
    ex.add_argument("--row", type=_nonneg_int, metavar="N",
                    help="orbax: the table row position (0-based; the config column of "
                         "'jaxgd show' for a whole sweep); default: the best configuration")
    ex.add_argument("--no-state", action="store_true",
                    help="orbax: the parameters only, without the model state")
    ex.add_argument("--overwrite", action="store_true",
                    help="orbax: replace a non-empty DEST")
    ex.add_argument("--name", help="trackers: the sweep's name (MLflow experiment, W&B "
                                   "group); default: the run folder's name")


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{s!r} must be > 0")
    return v


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{s!r} must be >= 0")
    return v


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxgd`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _RUN["out"] = None
    try:
        if argv and argv[0] in ("demo", "bench"):  # everything after goes to the experiment
            return _cmd_experiment(argv[0], argv[1:])
        args = _parser().parse_args(argv)
        if args.command == "sweep":
            return _cmd_sweep(args)
        if args.command == "plot":
            return _cmd_plot(args)
        if args.command == "show":
            return _cmd_show(args)
        if args.command == "export":
            return _cmd_export(args)
        return _cmd_experiment(args.command, args.args)
    except ImportError as e:  # a missing (optional) dependency: name it and how to install
        msg = missing_dependency(e)
        if msg is None:
            raise
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _RUN["interrupt_handled"] = True
        out = _RUN["out"]
        print(f"{PROG}: interrupted" + (f"; finished chunks are kept in {out} - run the same "
                                        "command again to resume" if out else ""),
              file=sys.stderr)
        return 130
    except BaseException as e:  # noqa: BLE001 - filtered below, bugs are re-raised
        if isinstance(e, OSError) and e.errno in _OS_ERRNOS:
            # disk full, read-only, no permission, ...: the path and the reason
            msg = f"{e.filename}: {e.strerror}" if e.filename else (e.strerror or str(e))
            print(f"{PROG}: error: {' '.join(msg.split())}", file=sys.stderr)
            return 2
        if not _is_user_error(e):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2


def _os_errnos() -> frozenset[int]:
    import errno

    names = ("ENOSPC", "EDQUOT", "EACCES", "EPERM", "EROFS", "ENOENT", "ENOTDIR", "EISDIR",
             "EEXIST", "ELOOP", "EFBIG", "ENAMETOOLONG", "EMFILE", "ENFILE", "EIO")
    return frozenset(getattr(errno, n) for n in names if hasattr(errno, n))


# operating-system errors reported as one line naming the path (exit 2)
_OS_ERRNOS = _os_errnos()

# what the running command writes to, for the Ctrl-C message
_RUN: dict[str, str | None] = {"out": None}


# import name -> what to pip install; the test extra's packages
_PACKAGES = {"sklearn": "scikit-learn", "torch": "torch==2.13.0", "yaml": "pyyaml",
             "orbax": "orbax-checkpoint", "mlflow": "mlflow-skinny"}
_TEST_EXTRA = ("torch", "scipy", "pytest", "hypothesis")
_TRACK_EXTRA = ("tensorboardX", "mlflow", "wandb")


def missing_dependency(e: ImportError) -> str | None:
    """One line naming the missing package of ``e`` and the command that installs it; None
    when ``e`` is not a missing third-party package (e.g. a broken jaxgd import)."""
    import re

    name, cause = None, e
    while cause is not None and not name:  # pandas re-raises ImportError from the original
        if isinstance(cause, ModuleNotFoundError):
            name = cause.name
        cause = cause.__cause__ or cause.__context__
    if not name:  # pandas' wordings: "Missing optional dependency 'x'", "`Import x` failed"
        m = re.search(r"[Mm]issing optional dependency '([\w.\-]+)'|`[Ii]mport ([\w.\-]+)` "
                      r"failed", str(e))
        name = (m.group(1) or m.group(2)) if m else None
    if not name:
        return None
    top = name.split(".")[0]
    if top in ("jaxgd", "experiments", "tests"):
        return None
    pkg = _PACKAGES.get(top, top)
    extra = (' (or the test extra: pip install -e ".[test]")' if top in _TEST_EXTRA else
             ' (or the track extra: pip install -e ".[track]")' if top in _TRACK_EXTRA else "")
    return f"the Python package {top!r} is not installed; install it with: pip install {pkg}{extra}"


def _is_user_error(e: BaseException) -> bool:
    """Config errors, and ValueError/TypeError/FileNotFoundError/RuntimeError raised by
    jaxgd's own validation (the innermost frame is in the jaxgd package, not in JAX)."""
    from .config import ConfigError

    if isinstance(e, UserError | ConfigError):
        return True
    if not isinstance(e, ValueError | TypeError | FileNotFoundError | RuntimeError):
        return False
    tb = e.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    here = str(Path(__file__).resolve().parent)
    return last is not None and str(Path(last).resolve()).startswith(here)


def _init_distributed(args) -> bool:
    """``jax.distributed.initialize`` from the flags; True when several processes."""
    flags = (args.coordinator, args.num_processes, args.process_id)
    if all(f is None for f in flags):
        return False
    if any(f is None for f in flags):
        raise UserError("--coordinator, --num-processes and --process-id go together")
    if args.process_id >= args.num_processes:
        raise UserError(f"--process-id {args.process_id} must be < --num-processes "
                        f"{args.num_processes}")
    host, sep, port = args.coordinator.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"--coordinator {args.coordinator!r} must be HOST:PORT")
    import jax

    kw = dict(coordinator_address=args.coordinator, num_processes=args.num_processes,
              process_id=args.process_id, initialization_timeout=args.init_timeout,
              heartbeat_timeout_seconds=max(10, min(100, args.init_timeout)),
              shutdown_timeout_seconds=max(10, min(300, args.init_timeout)))
    if host.strip("[]") in ("127.0.0.1", "localhost", "::1"):
        kw["coordinator_bind_address"] = args.coordinator  # listen on loopback only
    jax.distributed.initialize(**kw)
    # the runtime catches SIGTERM for its preemption notices and carries on; a user's
    # `kill` or a scheduler's SIGTERM must end the process (its files are atomic, its
    # lock dies with it), also while it waits in a collective
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return True


def _cmd_sweep(args) -> int:
    from .config import read_config

    # validate the file first (no JAX operation), then start the runtime, then build
    cfg = read_config(args.config, overrides=args.set)
    multi = _init_distributed(args)
    import jax

    from .config import build

    out = Path(args.out) if args.out else Path("runs") / cfg.stem
    _RUN["out"] = str(out)
    t0 = time.perf_counter()
    exp = build(cfg)
    lead = jax.process_index() == 0
    if lead and not args.quiet:
        i = exp.info
        n_cfg = _count_configs(exp)
        print(f"{PROG}: {cfg.file}: {i['dataset']} ({i['n']} x {i['features']}, {i['task']}), "
              f"model {i['model']}, loss {i['loss']}, {n_cfg} configurations, "
              f"{len(jax.devices())} device(s), {jax.process_count()} process(es) -> {out}",
              flush=True)
    kw = {}
    if args.chunk_size:
        kw["chunk_size"] = args.chunk_size
    # every process asks for the same program (progress included); process 0 draws
    if args.track:
        kinds = {t.split(":", 1)[0] for t in args.track}
        kw["track"] = [t for t in cfg.track if t.split(":", 1)[0] not in kinds] + args.track
    sw = exp.run(out=str(out), progress=not args.quiet, **kw)
    elapsed = time.perf_counter() - t0
    if lead:
        _record_config(cfg, out, args)
        figs = [] if args.no_plots else sw.plot(out)
        print(summary(sw, top=args.top, title=f"{len(sw)} configurations in {elapsed:.1f} s"))
        print(f"results: {out}/table.csv" + (f"; figures: {', '.join(Path(f).name for f in figs)}"
                                             if figs else ""))
    if multi:
        jax.distributed.shutdown()
    return 0


def _record_config(cfg, out: Path, args) -> None:
    """``out/config.toml``: the configuration that ran, overrides set (functions by name:
    a run folder holds no code)."""
    from .config import to_toml
    from .store import atomic_write_bytes

    cmd = " ".join([f"{PROG} sweep", *([args.config] if args.config else []),
                    *(f"--set {o}" for o in args.set)])
    head = (f"The configuration of this run: {cmd}\n"
            "Functions appear by name; running it again imports them (jaxgd sweep only).")
    atomic_write_bytes(out / "config.toml", to_toml(cfg, head).encode("utf-8"))


def _count_configs(exp) -> int:
    from .axes import expand_configs

    kw = exp.sweep_kwargs
    n = len(expand_configs(kw.get("grid"), kw.get("random")))
    return n * (kw.get("folds") or 1) if "fold" not in (kw.get("grid") or {}) else n


def _cmd_plot(args) -> int:
    from .results import load

    sw = load(args.dir)
    paths = sw.plot(args.out or args.dir)
    for p in paths:
        print(p)
    if not paths:
        print(f"{PROG}: no figure applies to this sweep", file=sys.stderr)
    return 0


def _cmd_show(args) -> int:
    from .results import load

    sw = load(args.dir)
    print(summary(sw, sort=args.sort, top=args.top, descending=args.desc,
                  title=f"{args.dir}: {len(sw)} configurations"))
    return 0


def _cmd_export(args) -> int:
    from .results import load
    from .trackers import KINDS, export

    kind, dest = args.to
    if kind not in ("orbax", *KINDS):
        raise UserError(f"--to {kind!r} must be one of orbax, {', '.join(KINDS)}")
    orbax_only = [f for f, v in (("--row", args.row is not None), ("--no-state", args.no_state),
                                 ("--overwrite", args.overwrite)) if v]
    if kind != "orbax" and orbax_only:
        raise UserError(f"{orbax_only[0]} applies to --to orbax only")
    if kind == "orbax" and args.name is not None:
        raise UserError("--name applies to the trackers only")
    if kind == "orbax":
        from ._checks import require

        require("orbax.checkpoint", "an orbax checkpoint")  # before loading the run
        sw = load(args.dir)
        row = sw.best().index if args.row is None else args.row
        if row >= len(sw):
            raise UserError(f"--row {row} is not a row position in 0..{len(sw) - 1}")
        path = sw.export_orbax(dest, row=row, state=not args.no_state,
                               overwrite=args.overwrite)
        print(f"{args.dir}: row {row} (config {int(sw.table['config'].iloc[row])}) -> {path}")
        return 0
    names = export(args.dir, kind, dest, name=args.name)
    print(f"{args.dir}: {len(names)} run(s) -> {kind} {dest}")
    return 0


def _cmd_experiment(name: str, rest: list[str]) -> int:
    import importlib

    shown = name
    if name == "bench" and "--gpu" in rest:  # the accelerator benchmark (bench_gpu.py)
        name, rest, shown = "bench_gpu", [a for a in rest if a != "--gpu"], "bench --gpu"

    try:
        mod = importlib.import_module(f"experiments.{name}")
        fn = mod.main
    except ImportError as e:
        if missing_dependency(e) is not None:
            raise  # one line naming the package, exit 2 (main)
        print(f"{PROG}: error: 'jaxgd {name}' needs experiments/{name}.py with main(argv) "
              f"(run it from a source checkout of jaxgd): {e}", file=sys.stderr)
        return 2
    except AttributeError as e:
        print(f"{PROG}: error: 'jaxgd {name}' needs experiments/{name}.py with main(argv) "
              f"(run it from a source checkout of jaxgd): {e}", file=sys.stderr)
        return 2
    import inspect

    try:
        takes_prog = "prog" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_prog = False
    rc = fn(rest, prog=f"{PROG} {shown}") if takes_prog else fn(rest)
    return rc if isinstance(rc, int) else 0


# ----------------------------------------------------------------------------- tables


def summary(sw, sort: str | None = None, top: int = 10, descending: bool = False,
            title: str | None = None) -> str:
    """The summary of a sweep as text: stop reasons, the best, the top rows by a metric.

    With folds (and no ``sort``), settings are averaged over folds (``sw.cv_table()``).
    """
    import numpy as np
    import pandas as pd

    from ._checks import closest

    t = sw.table
    metric = sw.default_metric()
    lines = [title] if title else []
    if "stop_reason" in t:
        counts = t["stop_reason"].value_counts()
        lines.append("stop reasons: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    axes = sw.axes()
    cv = "fold" in t and "final_val_loss" in t
    cv_df = sw.cv_table("final_val_loss") if cv else None
    if cv_df is not None and (sort is None or sort in cv_df.columns):
        df = cv_df
        sort = sort or "final_val_loss_mean"
        lines.append(f"cross-validation over {sw.folds or t['fold'].nunique()} folds, "
                     f"sorted by {sort}" + (" (descending)" if descending else "") + ":")
    else:
        if sort is not None and sort not in t:
            valid = list(t.columns) + (list(cv_df.columns) if cv_df is not None else [])
            close = closest(sort, valid)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise UserError(f"--sort {sort!r} is not a column{hint}; columns: {valid}")
        sort = sort or metric
        cols = ["config", *[c for a in axes for c in (a, f"final_{a}") if c in t]]
        cols += [c for c in ("final_loss", "best_loss", "final_val_loss", "best_val_loss",
                             "epochs_run", "stop_reason") if c in t and c not in cols]
        if sort not in cols:
            cols.append(sort)
        df = t[cols]
        lines.append(f"sorted by {sort}" + (" (descending)" if descending else "") + ":")
    df = df.sort_values(sort, ascending=not descending, na_position="last", kind="stable")
    shown = df if not top else df.head(top)
    lines.append(shown.to_markdown(index=False, tablefmt="simple", floatfmt=".4g"))
    if top and len(df) > top:
        lines.append(f"... {len(df) - top} more rows (--top 0 for all)")
    # the best is the sweep's, whatever the display order: by folds' mean with folds
    if cv_df is not None:
        key = "final_val_loss_mean"
        m = pd.to_numeric(cv_df[key], errors="coerce").replace([np.inf, -np.inf], np.nan)
        if m.notna().any():
            row = cv_df.loc[m.idxmin()]
            desc = ", ".join(f"{a}={row[a]}" for a in axes if a in row)
            lines.append(f"best: {desc}: mean final_val_loss over folds = "
                         f"{float(row[key]):.6g}")
            return "\n".join(lines)
    try:
        b = sw.best()
        # PBT: a member's value at the start, then the one it ended with
        desc = ", ".join(f"{a}={b.row[a]}" + (f" (at the end {b.row[f'final_{a}']:.6g})"
                                               if f"final_{a}" in b.row else "")
                         for a in axes if a in b.row)
        lines.append(f"best: config {int(b.row['config'])} ({desc}): {metric} = "
                     f"{float(b.row[metric]):.6g}")
    except (ValueError, KeyError):
        lines.append("best: none (no finite metric)")
    return "\n".join(lines)


def _on_sigint(signum, frame) -> None:
    """Ctrl-C: raise KeyboardInterrupt; and since Python drops an exception raised while a
    garbage-collection callback (JAX has one) runs, signal again every 0.5 s until
    :func:`main` has handled it."""
    import threading

    if not _RUN.get("interrupt_handled"):
        t = threading.Timer(0.5, lambda: None if _RUN.get("interrupt_handled")
                            else os.kill(os.getpid(), signal.SIGINT))
        t.daemon = True
        t.start()
    raise KeyboardInterrupt


def console_main() -> int:
    """The ``jaxgd`` console script: :func:`main`, and after an interruption (exit status
    130) the process ends at once, as the message says, without tearing down the JAX
    runtime while its threads may still be running a program (which can crash the
    interpreter's shutdown). Finished files are complete: every write is atomic."""
    signal.signal(signal.SIGINT, _on_sigint)
    rc = main()
    _RUN["interrupt_handled"] = True
    if rc == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console_main())
