"""Figures of a sweep (matplotlib, Agg): only those that fit the sweep's axes.

* ``loss_curves.png``: training loss against epoch for every configuration (log y),
  coloured by learning rate, the best configuration highlighted, diverged ones dashed
  red with an x where they stopped;
* ``final_loss_vs_lr.png``: final loss against learning rate (log x), one line per batch
  size (mean over seeds and folds, min-max band): the U with its divergence edge, red x
  where configurations diverged;
* ``heatmap_lr_batch_size.png``: learning rate x batch size, colour = final loss (log),
  diverged cells hatched;
* ``cv_learning_rate.png`` (with ``folds``): cross-validation mean and standard
  deviation of ``final_val_loss`` per learning rate;
* ``search_rungs.png`` (an adaptive search that pruned configurations: halving,
  Hyperband, the median rule): each configuration's monitored loss until it was pruned
  or finished, the pruning points as dashed lines;
* ``pbt_lineage.png`` (PBT): each member's explored values over time.

Every file is written atomically (a killed process never leaves half a PNG).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from .history import index_name


def _row_name(hist) -> str:
    """The history column that indexes the rows: "step" (a step budget) or "epoch"."""
    return index_name(hist)


def _row_index(hist, default=None):
    return hist.get(_row_name(hist), default)

__all__ = ["plot_sweep"]

LR = "learning_rate"
BS = "batch_size"
NOT_LINE_AXES = (LR, "seed", "fold")
MAX_LINES = 10


def plot_sweep(sw: Any, out: str | Path | None = None, show: bool = False) -> list[str]:
    """Draw every figure that applies to ``sw`` and write PNGs into ``out``.

    Args:
      sw: a :class:`jaxgd.SweepResult` (fresh or from :func:`jaxgd.load`).
      out: folder for the PNG files (created); ``None`` writes nothing (with ``show``).
      show: also open the figures with ``matplotlib.pyplot.show()``.

    Returns:
      The paths written, as strings.
    """
    if out is None and not show:
        raise ValueError("plot needs out=folder (to write PNGs) or show=True")
    figs = []
    for name, fn in (("loss_curves", _loss_curves), ("final_loss_vs_lr", _final_vs_lr),
                     ("heatmap_lr_batch_size", _heatmap), ("cv_learning_rate", _cv),
                     ("search_rungs", _search_rungs), ("pbt_lineage", _pbt_lineage)):
        fig = fn(sw, show)
        if fig is not None:
            figs.append((name, fig))
    from .history import metric_names

    for m in metric_names(sw.history):  # the loss's own metrics (e.g. accuracy)
        fig = _metric_curves(sw, show, m)
        if fig is not None:
            figs.append((f"metric_{m}", fig))
    paths = []
    if out is not None:
        from .store import atomic_write_bytes

        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"out={str(out)!r} cannot be created: {e.strerror}") from e
        for name, fig in figs:
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
            path = out / f"{name}.png"
            atomic_write_bytes(path, buf.getvalue())
            paths.append(str(path))
    if show:
        import matplotlib.pyplot as plt

        plt.show()
    else:
        for _, fig in figs:
            fig.clear()
    return paths


# ----------------------------------------------------------------------------- search


def _search_rungs(sw, show: bool):
    """Successive halving / Hyperband: each configuration's monitored loss until it was
    pruned (thin) or finished (thick), the rungs as dashed lines."""
    t = sw.table
    if "pruned" not in set(t["stop_reason"]):
        return None
    metric = "val_loss" if "val_loss" in sw.history else "loss"
    fig = _figure(show, figsize=(7, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    ep = np.asarray(_row_index(sw.history), float) + 1
    ran = t["epochs_run"].to_numpy()
    for i in range(len(t)):
        done = t["stop_reason"].iloc[i] != "pruned"
        ax.plot(ep[i], sw.history[metric][i], lw=2.0 if done else 0.7,
                marker="" if done else ".", ms=3,  # a run pruned at the first rung: 1 point
                color="C3" if done else "0.55", alpha=1.0 if done else 0.6)
    for e in sorted(set(ran[t["stop_reason"] == "pruned"])):
        ax.axvline(e, ls="--", lw=0.8, color="C0")
    _positive_log(ax, np.asarray(sw.history[metric], float))
    steps = int(t["steps_run"].sum())
    kept = int((t["stop_reason"] != "pruned").sum())
    ax.set_title(f"adaptive search: {len(t)} configurations, {kept} not pruned; "
                 f"{steps} optimizer steps", fontsize=10)
    ax.set_xlabel(_row_name(sw.history))
    ax.set_ylabel(metric)
    return fig


def _pbt_lineage(sw, show: bool):
    """PBT: each member's explored hyper-parameters over the epochs (dots: the member
    copied another's state there)."""
    lin = getattr(sw, "lineage", None)
    if lin is None or lin.empty:
        return None
    names = [c for c in lin.columns if c not in ("config", "epoch", "parent")]
    end = int(sw.table["epochs_run"].max())
    fig = _figure(show, figsize=(7, 3.2 * len(names)))
    for k, name in enumerate(names):
        ax = fig.add_subplot(len(names), 1, k + 1)
        for j, (member, rows) in enumerate(lin.groupby("config", sort=True)):
            rows = rows.sort_values("epoch", kind="stable")
            x = np.append(rows["epoch"].to_numpy(float), end)
            y = np.append(rows[name].to_numpy(float), rows[name].to_numpy(float)[-1])
            ax.step(x, y, where="post", lw=1.2, color=f"C{j % 10}", label=f"{member}")
            moved = rows[rows["epoch"] > 0]
            ax.plot(moved["epoch"], moved[name], "o", ms=3, color=f"C{j % 10}")
        _positive_log(ax, lin[name].to_numpy(float))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        if k == 0:
            ax.set_title(f"PBT: {lin['config'].nunique()} members' hyper-parameters",
                         fontsize=10)
    return fig


# ----------------------------------------------------------------------------- helpers


def _figure(show: bool, **kw):
    if show:
        import matplotlib.pyplot as plt

        return plt.figure(**kw)
    from matplotlib.figure import Figure

    return Figure(**kw)


def _bs_value(v: Any) -> float:
    """Batch size -> sortable number (full batch = inf)."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or str(v) == "full":
        return math.inf
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.inf


def _bs_label(v: Any) -> str:
    x = _bs_value(v)
    return "full" if math.isinf(x) else str(int(x))


def _num(col) -> np.ndarray:
    import pandas as pd

    return pd.to_numeric(col, errors="coerce").to_numpy(float)


def _varying(sw, axes: list[str]) -> list[str]:
    return [a for a in axes if sw.table[a].astype(str).nunique() > 1]


def _label(key: tuple, names: list[str]) -> str:
    parts = []
    for n, v in zip(names, key, strict=False):
        parts.append(f"B={_bs_label(v)}" if n == BS else f"{n}={_fmt(v)}")
    return ", ".join(parts) or "all"


def _fmt(v: Any) -> str:
    if isinstance(v, float | np.floating):
        return f"{v:.3g}"
    return str(v)


def _line_groups(sw, line_axes: list[str]) -> list[tuple[tuple, np.ndarray]]:
    """(key, row indices) per combination of ``line_axes`` (batch size numerically)."""
    t = sw.table
    if not line_axes:
        return [((), np.arange(len(t)))]
    keys = list(zip(*[t[a].tolist() for a in line_axes], strict=False))
    uniq: dict[tuple, list[int]] = {}
    for i, k in enumerate(keys):
        uniq.setdefault(tuple(str(x) for x in k), []).append(i)

    def sort_key(k):
        return tuple(_bs_value(x) if a == BS else _try_float(x)
                     for a, x in zip(line_axes, k, strict=True))

    out = []
    for sk in sorted(uniq, key=sort_key):
        rows = np.asarray(uniq[sk])
        out.append((tuple(t[a].iloc[rows[0]] for a in line_axes), rows))
    return out


def _try_float(x: Any) -> Any:
    try:
        return (0, float(x), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(x))


def _cap(sw) -> float:
    """Display ceiling: 10x the largest initial loss (above that a run has blown up)."""
    t = sw.table
    if "init_loss" in t:
        init = _num(t["init_loss"])
        init = init[np.isfinite(init)]
        if init.size and init.max() > 0:
            return float(10 * init.max())
    return math.inf


def _positive_log(ax, values: np.ndarray, axis: str = "y") -> None:
    v = values[np.isfinite(values)]
    if v.size and np.all(v > 0):
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


# ----------------------------------------------------------------------------- figures


def _loss_curves(sw, show: bool):
    loss = np.asarray(sw.history.get("loss", np.empty((0, 0))), float)
    if loss.ndim != 2 or loss.shape[0] == 0 or loss.shape[1] == 0:
        return None
    import matplotlib as mpl

    t = sw.table
    n, e = loss.shape
    epochs = np.arange(1, e + 1)
    ep = np.asarray(_row_index(sw.history, np.empty((0, 0))), float)
    if ep.shape == loss.shape and np.isfinite(ep).any(axis=0).all():
        epochs = np.nanmax(ep, axis=0) + 1  # with eval_every > 1: the epoch of each row
    diverged = t["diverged"].to_numpy(bool) if "diverged" in t else np.zeros(n, bool)
    runs = t["epochs_run"].to_numpy(int) if "epochs_run" in t else np.full(n, e)
    fig = _figure(show, figsize=(7, 4.5))
    ax = fig.add_subplot()
    ok = loss[~diverged]
    finite_ok = ok[np.isfinite(ok)]
    finite_all = loss[np.isfinite(loss)]
    ref = finite_ok if finite_ok.size else finite_all
    if ref.size == 0:
        ax.text(0.5, 0.5, "no finite loss", ha="center", va="center", transform=ax.transAxes)
        return fig
    log = bool(np.all(finite_all > 0))
    cap = _cap(sw)
    lo, hi = float(ref.min()), float(min(ref.max(), cap))
    if log:
        ylim = (lo / 1.5, hi * 3)
    else:
        pad = 0.05 * (hi - lo or 1.0)
        ylim = (lo - pad, hi + 4 * pad)
    lr = _num(t[LR]) if LR in t else None
    cmap = mpl.colormaps["viridis"]
    norm = None
    if lr is not None and np.isfinite(lr).any() and np.nanmin(lr) > 0:
        lmin, lmax = np.nanmin(lr), np.nanmax(lr)
        norm = mpl.colors.LogNorm(lmin, lmax if lmax > lmin else lmin * 1.0001)
    alpha = max(0.15, min(0.8, 8 / max(n, 1)))
    blown = False
    for i in range(n):
        y = loss[i]
        color = cmap(norm(lr[i])) if norm is not None and np.isfinite(lr[i]) else "0.5"
        if diverged[i]:
            ax.plot(epochs, np.clip(y, None, ylim[1]), ls="--", color="tab:red", lw=0.8,
                    alpha=min(1.0, alpha + 0.2))
            fin = np.nonzero(np.isfinite(y[:max(runs[i], 1)]))[0]
            k = int(fin[-1]) if fin.size else 0
            yv = y[k] if fin.size else ylim[1]
            ax.plot(epochs[k], min(yv, ylim[1]) if np.isfinite(yv) else ylim[1], "x",
                    color="tab:red", ms=7, mew=1.5)
        else:
            ax.plot(epochs, np.clip(y, None, ylim[1]), color=color, lw=0.8, alpha=alpha)
            if np.nanmax(y, initial=-np.inf) > ylim[1]:
                blown = True
    try:
        b = sw.best().index
        ax.plot(epochs, loss[b], color="black", lw=2.4, label=f"best: {_config_label(sw, b)}")
    except ValueError:
        pass
    if diverged.any():
        ax.plot([], [], "x--", color="tab:red", label=f"diverged ({int(diverged.sum())})")
    if blown:
        ax.plot([], [], color="0.5", label="clipped at 10x the initial loss")
    if log:
        ax.set_yscale("log")
    ax.set_ylim(*ylim)
    ax.set_xlim(1, max(float(epochs[-1]), 2))
    ax.set_xlabel(_row_name(sw.history))
    ax.set_ylabel("training loss")
    ax.set_title(f"Loss curves ({n} configurations)")
    if norm is not None:
        sm = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(sm, ax=ax, label="learning rate")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    return fig


def _metric_curves(sw, show: bool, m: str):
    """A metric of the loss per evaluation: training (solid) and validation (dashed),
    one line per configuration (the best by the default metric in black)."""
    h = np.asarray(sw.history.get(m, np.empty((0, 0))), float)
    if h.ndim != 2 or h.shape[0] == 0 or not np.isfinite(h).any():
        return None
    ep = np.asarray(_row_index(sw.history, np.empty((0, 0))), float)
    epochs = (np.nanmax(ep, axis=0) + 1 if ep.shape == h.shape and np.isfinite(ep).any(
        axis=0).all() else np.arange(1, h.shape[1] + 1))
    fig = _figure(show, figsize=(7, 4.5))
    ax = fig.add_subplot()
    val = np.asarray(sw.history[f"val_{m}"], float) if f"val_{m}" in sw.history else None
    alpha = max(0.15, min(0.8, 8 / max(h.shape[0], 1)))
    for i in range(h.shape[0]):
        ax.plot(epochs, h[i], color="C0", lw=0.8, alpha=alpha)
        if val is not None:
            ax.plot(epochs, val[i], color="C1", lw=0.8, ls="--", alpha=alpha)
    try:
        b = sw.best().index
        ax.plot(epochs, h[b], color="black", lw=2.2, label=f"best: {_config_label(sw, b)}")
        if val is not None:
            ax.plot(epochs, val[b], color="black", lw=2.2, ls="--")
    except ValueError:
        pass
    ax.plot([], [], color="C0", label=f"{m} (training data)")
    if val is not None:
        ax.plot([], [], color="C1", ls="--", label=f"val_{m}")
    ax.set_xlabel(_row_name(sw.history))
    ax.set_ylabel(m)
    ax.set_title(f"{m} ({h.shape[0]} configurations)")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return fig


def _config_label(sw, i: int) -> str:
    row = sw.table.iloc[i]
    parts = []
    for a in _varying(sw, sw.axes()):
        if a == "fold":
            continue
        parts.append(f"B={_bs_label(row[a])}" if a == BS else f"{a}={_fmt(row[a])}")
    return ", ".join(parts) or f"config {i}"


def _pbt(sw) -> bool:
    """PBT changes the members' hyper-parameters as they train: a final loss is not the
    result of the starting value in the table's axis column (see the lineage figure)."""
    return getattr(sw, "lineage", None) is not None


def _final_vs_lr(sw, show: bool):
    t = sw.table
    if LR not in t or "final_loss" not in t or _pbt(sw):
        return None
    lr = _num(t[LR])
    if len(np.unique(lr[np.isfinite(lr)])) < 2:
        return None
    axes = sw.axes()
    line_axes = [a for a in _varying(sw, axes) if a not in NOT_LINE_AXES]
    groups = _line_groups(sw, line_axes)
    connect = True
    if len(groups) > MAX_LINES:  # too many lines (random search): points per batch size
        line_axes = [a for a in line_axes if a == BS]
        groups = _line_groups(sw, line_axes)
        connect = False
    final = _num(t["final_loss"])
    div = t["diverged"].to_numpy(bool) if "diverged" in t else np.zeros(len(t), bool)
    fig = _figure(show, figsize=(7, 4.5))
    ax = fig.add_subplot()
    import matplotlib.transforms as mtrans

    top = mtrans.blended_transform_factory(ax.transData, ax.transAxes)
    any_div = any_over = False
    cap = _cap(sw)
    colors = [f"C{k % 10}" for k in range(len(groups))]
    for (key, rows), color in zip(groups, colors, strict=False):
        xs = np.unique(lr[rows][np.isfinite(lr[rows])])
        mean, lo, hi, frac = [], [], [], []
        for x in xs:
            r = rows[lr[rows] == x]
            v = final[r][~div[r] & np.isfinite(final[r])]
            mean.append(v.mean() if v.size else np.nan)
            lo.append(v.min() if v.size else np.nan)
            hi.append(v.max() if v.size else np.nan)
            frac.append(div[r].mean() if r.size else 0.0)
        mean, lo, hi, frac = map(np.asarray, (mean, lo, hi, frac))
        label = _label(key, line_axes)
        over = mean > cap
        any_over |= bool(over.any())
        mean, lo, hi = (np.minimum(a, cap) for a in (mean, lo, hi))
        ax.plot(xs, mean, "o-" if connect else "o", color=color, ms=3.5, lw=1.4,
                label=label, alpha=1.0 if connect else 0.6)
        ax.plot(xs[over], mean[over], "^", color=color, ms=7)
        if connect and np.any(hi > lo):
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)
        d = frac > 0
        if d.any():
            any_div = True
            # diverged: a red x at the top of the axes; partly diverged points ringed red
            allx = d & ~np.isfinite(mean)
            ax.plot(xs[allx], np.full(allx.sum(), 0.97), "x", color="tab:red", ms=8, mew=2,
                    transform=top, clip_on=False)
            part = d & np.isfinite(mean)
            ax.plot(xs[part], mean[part], "o", mfc="none", mec="tab:red", ms=8, mew=1.5)
            first = xs[d].min()
            ax.axvline(first, color="tab:red", lw=0.8, ls=":", alpha=0.6)
    if any_div:
        ax.plot([], [], "x", color="tab:red", ms=8, mew=2, label="diverged (all seeds)")
        ax.plot([], [], "o", mfc="none", mec="tab:red", ms=8, label="diverged (some)")
    if any_over:
        ax.plot([], [], "^", color="0.4", ms=7, label="> 10x initial loss (clipped)")
    ax.set_xscale("log")
    _positive_log(ax, final[~div])
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final training loss")
    extra = [a for a in ("seed", "fold") if a in _varying(sw, axes)]
    ax.set_title("Final loss against learning rate"
                 + (f" (mean over {', '.join(extra)}; band: min-max)" if extra else ""),
                 fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, title="batch size" if line_axes == [BS] else None,
              title_fontsize=8)
    return fig


def _heatmap(sw, show: bool):
    t = sw.table
    if LR not in t or BS not in t or "final_loss" not in t or _pbt(sw):
        return None
    import matplotlib as mpl

    lr = _num(t[LR])
    lrs = np.unique(lr[np.isfinite(lr)])
    bsv = np.asarray([_bs_value(v) for v in t[BS].tolist()])
    bss = np.unique(bsv)
    if lrs.size == 0 or bss.size == 0:
        return None
    final = _num(t["final_loss"])
    div = t["diverged"].to_numpy(bool) if "diverged" in t else np.zeros(len(t), bool)
    grid = np.full((bss.size, lrs.size), np.nan)
    dfrac = np.zeros_like(grid)
    present = np.zeros(grid.shape, bool)
    for i, b in enumerate(bss):
        for j, x in enumerate(lrs):
            r = (bsv == b) & (lr == x)
            if not r.any():
                continue
            present[i, j] = True
            v = final[r & ~div & np.isfinite(final)]
            grid[i, j] = v.mean() if v.size else np.nan
            dfrac[i, j] = div[r].mean()
    fig = _figure(show, figsize=(max(5.0, 0.45 * lrs.size + 2.5), max(2.6, 0.5 * bss.size + 1.6)))
    ax = fig.add_subplot()
    cap = _cap(sw)
    over = np.isfinite(grid) & (grid > cap)
    grid = np.where(over, cap, grid)
    fin = grid[np.isfinite(grid)]
    if fin.size and np.all(fin > 0) and fin.max() > fin.min():
        norm = mpl.colors.LogNorm(fin.min(), fin.max())
    elif fin.size:
        norm = mpl.colors.Normalize(fin.min(), fin.max() if fin.max() > fin.min() else
                                    fin.min() + 1)
    else:
        norm = mpl.colors.Normalize(0, 1)
    cmap = mpl.colormaps["viridis"].with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", origin="lower", cmap=cmap,
                   norm=norm, interpolation="nearest")
    for i in range(bss.size):
        for j in range(lrs.size):
            if not present[i, j]:
                continue
            if dfrac[i, j] > 0:
                ax.add_patch(mpl.patches.Rectangle(
                    (j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", ec="tab:red", lw=0,
                    alpha=0.6))
                if not np.isfinite(grid[i, j]):
                    ax.text(j, i, "div", ha="center", va="center", fontsize=7,
                            color="black", fontweight="bold")
            elif over[i, j]:
                ax.text(j, i, ">", ha="center", va="center", fontsize=8, color="black",
                        fontweight="bold")
    ax.set_xticks(range(lrs.size))
    ax.set_xticklabels([f"{x:.2g}" for x in lrs], rotation=60, fontsize=7)
    ax.set_yticks(range(bss.size))
    ax.set_yticklabels([_bs_label(b) for b in bss])
    ax.set_xlabel("learning rate")
    ax.set_ylabel("batch size")
    ax.set_title("Final training loss (hatched/div: diverged"
                 + (", >: above 10x initial loss)" if over.any() else ")"), fontsize=10)
    fig.colorbar(im, ax=ax, label="final loss")
    return fig


def _cv(sw, show: bool):
    t = sw.table
    if "fold" not in t or "final_val_loss" not in t:
        return None
    try:
        cv = sw.cv_table("final_val_loss")
    except (ValueError, KeyError):
        return None
    axes = [a for a in sw.axes() if a not in ("fold",)]
    varying = [a for a in axes if a in cv and cv[a].astype(str).nunique() > 1]
    xaxis = LR if LR in varying else next(
        (a for a in varying if a not in ("seed",) and np.isfinite(_num(cv[a])).all()), None)
    fig = _figure(show, figsize=(7, 4.5))
    ax = fig.add_subplot()
    mean_c, std_c = "final_val_loss_mean", "final_val_loss_std"
    cap = _cap(sw)
    # folds that diverged per setting
    div_by = None
    div_n = None
    any_over = False
    if "diverged" in t:
        keys = [a for a in axes if a in cv]
        if keys:
            div_by = t.groupby(keys, dropna=False)["diverged"].any().reset_index()
            div_n = t.groupby(keys, dropna=False)["diverged"].sum()
            div_n = div_n[div_n > 0]
    if xaxis is None:
        x = np.arange(len(cv))
        m, s = _num(cv[mean_c]), np.nan_to_num(_num(cv[std_c]))
        ax.errorbar(x, m, yerr=s, fmt="o", capsize=3)
        ax.set_xticks(x)
        ax.set_xticklabels([_label(tuple(r), varying) for r in cv[varying].itertuples(
            index=False)] if varying else ["all"], rotation=30, fontsize=7)
    else:
        line_axes = [a for a in varying if a not in (xaxis, "seed")]
        if len(line_axes) > 2:
            line_axes = [a for a in line_axes if a == BS]
        cvk = cv.copy()
        if div_by is not None:
            cvk = cvk.merge(div_by, on=[a for a in axes if a in cv], how="left")
        if line_axes:
            keys = list(zip(*[cvk[a].astype(str) for a in line_axes], strict=False))
        else:
            keys = [()] * len(cvk)
        uniq = sorted(set(keys), key=lambda k: tuple(
            _bs_value(v) if a == BS else _try_float(v) for a, v in zip(line_axes, k, strict=False)))
        for c, k in enumerate(uniq[:MAX_LINES]):
            sel = np.asarray([kk == k for kk in keys])
            sub = cvk[sel]
            if "seed" in sub:  # average seeds too
                sub = sub.groupby(xaxis, dropna=False).agg(
                    {mean_c: "mean", std_c: "mean",
                     **({"diverged": "any"} if "diverged" in sub else {})}).reset_index()
            sub = sub.sort_values(xaxis)
            x = _num(sub[xaxis])
            raw = _num(sub[mean_c])
            over = np.isfinite(raw) & (raw > cap)
            any_over |= bool(over.any())
            m = np.minimum(raw, cap)
            s = np.nan_to_num(_num(sub[std_c]))
            color = f"C{c % 10}"
            label = _label(tuple(cvk[sel][a].iloc[0] for a in line_axes), line_axes)
            ax.plot(x, m, "o-", color=color, ms=4, label=label if line_axes else "mean")
            ax.plot(x[over], m[over], "^", color=color, ms=7)
            # the band's lower edge bounded like the error bars (stays > 0 on a log axis)
            ax.fill_between(x, m - np.minimum(s, np.abs(m) * 0.999), np.minimum(m + s, cap),
                            color=color, alpha=0.2, lw=0,
                            label=None if line_axes else "± 1 std over folds")
            ax.errorbar(x, m, yerr=[np.minimum(s, np.abs(m) * 0.999), np.minimum(s, cap - m)],
                        fmt="none", ecolor=color, capsize=2, lw=0.8)
            if "diverged" in sub:
                d = sub["diverged"].to_numpy(bool)
                if d.any():
                    ax.plot(x[d], np.where(np.isfinite(m[d]), m[d], np.nan), "x",
                            color="tab:red", ms=8, mew=2)
        if xaxis == LR:
            ax.set_xscale("log")
        mm = _num(cv[mean_c])
        if np.isfinite(mm).any():
            fin = mm[np.isfinite(mm)]
            lo, hi = fin.min(), min(fin.max(), cap)
            if np.all(fin > 0) and hi > 0:
                ax.set_yscale("log")
                ax.set_ylim(lo / 1.5, max(hi * 1.5, lo * 2))
        ax.set_xlabel(xaxis.replace("_", " "))
        if div_n is not None and len(div_n):
            k_folds = sw.folds or int(_num(t["fold"]).max() + 1)
            lo_n, hi_n = int(div_n.min()), int(div_n.max())
            n_txt = f"{hi_n}" if lo_n == hi_n else f"{lo_n}-{hi_n}"
            ax.plot([], [], "x", color="tab:red", ms=8, mew=2,
                    label=f"diverged: {n_txt}/{k_folds} folds")
        if any_over:
            ax.plot([], [], "^", color="0.4", ms=7, label="> 10x initial loss (clipped)")
        ax.legend(fontsize=8)
    ax.set_ylabel("validation loss (final)")
    k = sw.folds or int(_num(t["fold"]).max() + 1)
    ax.set_title(f"{k}-fold cross-validation: mean ± std over folds", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    return fig
