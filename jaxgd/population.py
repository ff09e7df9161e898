"""A population: the configurations of an adaptive search between program calls.

Each member keeps its program state, history and traced hyper-parameters on the host;
the population advances members from one evaluation to another in chunks of
:mod:`jaxgd.engine` program calls, ranks them by a recorded metric, and saves and
restores itself at a boundary (``out=``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .engine import (
    COMPILE_SECONDS,
    SPEC_COMPILE,
    ChunkInputs,
    ChunkPlan,
    agree_cached,
    chunk_inputs,
    note_compile,
    plan_chunks,
    program_args,
    to_host,
)
from .groups import Group
from .loop import layout, state_axes, state_layout
from .program import (
    DIVERGED,
    epoch_progress,
    evals_of,
    finalize,
    history_columns,
    metric_history_names,
    program_for,
    run_blocks,
    unpack_history,
)
from .stops import code as stop_code

PRUNED = stop_code("pruned")

@dataclass
class Member:
    """A configuration of an adaptive search between program calls (host arrays)."""

    numeric: dict[str, Any]  # its traced hyper-parameters (PBT changes them)
    state: Any = None  # the program state, no leading axes (None: not started)
    hist: list[dict[str, np.ndarray]] = field(default_factory=list)  # packed, per call
    pruned: bool = False

    @property
    def active(self) -> bool:
        return self.state is None or bool(self.state.active)


class SearchRun(NamedTuple):
    """What the calls of a search share."""

    groups: list[Group]
    data: Any
    val_data: Any
    fold_split: Any
    chunk_size: int | None
    memory_budget: int | None
    epochs: int
    mesh: Any
    ndev: int
    members: dict[tuple[int, int], Member]  # (group, row) -> member
    compact: bool | str  # survivors in narrower programs: True, False or "auto"
    widths: dict[int, int]  # per group: the width of its first call
    costs: dict[int, tuple[float, float]]  # per group: (compile s, s per lane-evaluation)
    compiled: set[tuple[int, int, int]]  # (group, streams, width) compiled in this search
    store: Any  # the run folder (out=), or None: boundaries are saved there


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def advance(run: SearchRun, gi: int, rows: list[int], start: int, end: int,
             desc: str) -> None:
    """Evaluations ``start``..``end`` of group ``gi``'s rows ``rows`` from their states
    (or their initial state when ``start`` is 0), in chunks of :func:`search_width`."""
    g = run.groups[gi]
    sub = Group(g.prepared, [g.rows[r] for r in rows],
                [run.members[(gi, r)].numeric for r in rows],
                [g.key_bits[r] for r in rows] if g.key_bits else [])
    for p in plan_chunks([sub], run.chunk_size, run.memory_budget, run.epochs, run.ndev):
        C = max(len(v) for v in p.per_stream)
        width = search_width(run, gi, p, end - start)
        for ci in range(-(-C // width)):
            ch = chunk_inputs(sub, p.streams, p.per_stream, ci, width, run.fold_split)
            advance_chunk(run, gi, rows, ch, start, end, desc)


def advance_chunk(run: SearchRun, gi: int, rows: list[int], ch: ChunkInputs, start: int,
                   end: int, desc: str) -> None:
    """One program call of a search: the members of ``ch`` from ``start`` to ``end``;
    their states, outputs and history kept on the host, the speed measured."""
    g = run.groups[gi]
    spec, params = g.prepared.spec, g.prepared.params
    S, width = ch.grid_rows.shape
    prog, _ = program_for(spec, params, ch.tc, S * width)
    args, put_scalar = program_args(g, ch, run.data, run.mesh)
    params0, data, val, tc, keys, tidx, vidx, state0 = args
    if start == 0:
        st = prog.init(params0, data, val, tc, keys, tidx, vidx, state0)
    else:
        st = member_states(run, gi, rows, ch, keys, tc)
    t0, c0 = time.perf_counter(), COMPILE_SECONDS[0]
    with epoch_progress(spec, desc=desc):
        st, out, hist = run_blocks(prog, spec, st, start, end,
                                   (data, val, tc, keys, tidx, vidx),
                                   to_host=to_host, put_scalar=put_scalar, pad=True)
    st = jax.tree.map(to_host, state_axes(st, keys, tc))
    comp = note_compile(spec, c0)
    ran = max(1, int(np.max(out.evals_run)) - start)
    run.costs[gi] = (max(comp, run.costs.get(gi, (0.0, 0.0))[0]),
                     max(0.0, time.perf_counter() - t0 - comp) / (ran * S * width))
    run.compiled.add((gi, S, width))
    for s, c in zip(*np.nonzero(ch.valid), strict=True):
        m = run.members[(gi, rows[ch.grid_rows[s, c]])]
        at = lambda a: np.array(a[s, c])  # noqa: E731
        m.state = jax.tree.map(at, st)
        m.hist.append({k: at(v) for k, v in hist.items()})


def search_width(run: SearchRun, gi: int, p: ChunkPlan, n_evals: int) -> int:
    """The width of a search's call: the group's first call takes a plain sweep's width
    (``top``); later calls take ``top`` or, for fewer configurations, a narrower power of
    two: always with ``compact=True``, never with False, and with "auto" when its compute
    plus a compile (unless that shape was compiled in this search) costs less than
    ``top``'s compute, at the speed and compile time measured in this search. Processes
    agree on the measurements."""
    S, need = len(p.streams), p.width
    top = run.widths.setdefault(gi, need)
    narrow = min(top, -(-_pow2(need) // run.ndev) * run.ndev)
    if narrow >= top or run.compact is False:
        return top
    if run.compact is True or gi not in run.costs:
        return narrow
    comp, per_lane = run.costs[gi]
    comp = max(comp, SPEC_COMPILE.get(run.groups[gi].prepared.spec, 0.0))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        comp, per_lane = (float(v) for v in multihost_utils.broadcast_one_to_all(
            np.asarray([comp, per_lane])))

    def cost(w):
        return n_evals * S * w * per_lane + (0.0 if (gi, S, w) in run.compiled else comp)

    return narrow if cost(narrow) < cost(top) else top


def checkpoint(run: SearchRun, where: dict[str, Any]) -> None:
    """Save the members (states, histories, hyper-parameters) at a boundary (out=)."""
    if run.store is None:
        return
    arrays, members = {}, []
    for (gi, r), m in run.members.items():
        if m.state is None:
            continue
        for i, leaf in enumerate(jax.tree.leaves(m.state)):
            arrays[f"{gi}/{r}/s{i}"] = np.asarray(leaf)
        for k in m.hist[0]:
            arrays[f"{gi}/{r}/h/{k}"] = np.concatenate([h[k] for h in m.hist])
        members.append([gi, r, {k: np.asarray(v).item() for k, v in m.numeric.items()},
                        m.pruned])
    run.store.save_search(arrays, where=where, members=members)


def restore(run: SearchRun) -> dict[str, Any] | None:
    """The members as saved at the last boundary of this search (out=), and where that
    was; None to start from the beginning."""
    got = agree_cached(run.store.load_search() if run.store is not None else None)
    if got is None:
        return None
    arrays, meta = got
    treedefs: dict[int, Any] = {}
    for gi, r, numeric, pruned in meta["members"]:
        if gi not in treedefs:
            treedefs[gi] = state_treedef(run, gi)
        m = run.members[(gi, r)]
        saved = sum(1 for k in arrays if k.startswith(f"{gi}/{r}/s"))
        if saved != treedefs[gi].num_leaves:
            raise ValueError(
                f"the search state saved in {run.store.path} holds {saved} arrays per "
                f"member where this version of jaxgd's program state has "
                f"{treedefs[gi].num_leaves} (saved by another version): remove "
                f"{run.store.path / 'chunks' / 'search.npz'} to restart the search")
        m.state = jax.tree.unflatten(treedefs[gi], [arrays[f"{gi}/{r}/s{i}"] for i in
                                                    range(treedefs[gi].num_leaves)])
        pre = f"{gi}/{r}/h/"
        m.hist = [{k[len(pre):]: v for k, v in arrays.items() if k.startswith(pre)}]
        m.numeric, m.pruned = {**m.numeric, **numeric}, bool(pruned)
    return meta["where"]


def state_treedef(run: SearchRun, gi: int):
    """The structure of one configuration's program state in group ``gi`` (traced, not
    compiled)."""
    g = run.groups[gi]
    row = g.rows[0]
    ch = chunk_inputs(g, [(row.seed, row.fold if row.fold is not None else -1)], [[0]], 0,
                      1, run.fold_split)
    spec = g.prepared.spec
    prog, _ = program_for(spec, g.prepared.params, ch.tc, 1)
    shapes = jax.eval_shape(prog.init, None if spec.init_fn is not None else g.prepared.params,
                            run.data, g.prepared.val_data, ch.tc, ch.keys, ch.tidx, ch.vidx,
                            g.prepared.state)
    return jax.tree.structure(shapes)


def member_states(run: SearchRun, gi: int, rows: list[int], ch: ChunkInputs, keys, tc):
    """The members' states stacked [S, width] (padding: a stopped copy), in the
    program's layout, on the mesh."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    S, W = ch.grid_rows.shape
    slots = [run.members[(gi, rows[r])].state for r in ch.grid_rows.reshape(-1)]
    st = jax.tree.map(lambda *xs: np.stack(xs).reshape((S, W) + np.shape(xs[0])), *slots)
    st = st._replace(active=st.active & ch.valid)
    st = state_layout(st, keys, tc)
    if run.mesh is None:
        return jax.tree.map(jnp.asarray, st)
    one_s, one_c = layout(keys, tc)
    sh = NamedSharding(run.mesh, P() if one_c else P("config") if one_s else P(None, "config"))
    return jax.tree.map(lambda a: jax.make_array_from_callback(a.shape, sh, lambda i: a[i]),
                        st)


def member_value(run: SearchRun, gi: int, m: Member, metric: str, mode: str) -> float:
    """The member's ranking value: ``metric`` at its last evaluation with a finite value
    (worst for a diverged member)."""
    if m.state is not None and int(m.state.reason) == DIVERGED:
        return math.inf if mode == "min" else -math.inf
    series = member_series(run.groups[gi], m, metric)
    finite = series[np.isfinite(series)]
    return float(finite[-1]) if finite.size else math.nan


def member_series(g: Group, m: Member, name: str) -> np.ndarray:
    """A member's recorded values of ``name`` so far."""
    cols = group_history_columns(g)
    if name in cols:
        return np.concatenate([h["scalars"][:, cols.index(name)] for h in m.hist])
    return np.concatenate([h[name] for h in m.hist])


def group_history_columns(g: Group) -> tuple[str, ...]:
    return history_columns(g.prepared.spec, g.prepared.params, g.numeric[0])


def check_search_metric(groups: list[Group], metric: str) -> None:
    for g in groups:
        names = set(group_history_columns(g)) | set(metric_history_names(g.prepared.spec))
        names -= {"epoch", "lr"}
        if metric not in names:
            raise ValueError(f"search metric={metric!r} is not recorded by this sweep; "
                             f"recorded: {sorted(names)}")


def search_results(run: SearchRun) -> list[dict[str, Any]]:
    """The members as the results of chunks (one per group), their histories padded to
    every evaluation (NaN where a member did not run)."""
    results = []
    K, n_evals = evals_of(run.groups[0].prepared.spec)
    for gi, g in enumerate(run.groups):
        spec = g.prepared.spec
        rows = [r for r in range(len(g.rows)) if run.members[(gi, r)].state is not None]
        if not rows:
            continue
        ms = [run.members[(gi, r)] for r in rows]
        hist = {}
        for k in ms[0].hist[0]:
            n = spec.epochs if k == "step_loss" else n_evals
            parts = [np.concatenate([h[k] for h in m.hist]) for m in ms]
            full = np.full((len(ms), n) + parts[0].shape[1:], np.nan, parts[0].dtype)
            for i, part in enumerate(parts):
                full[i, :len(part)] = part[:n]
            hist[k] = full
        # the outputs as the program's finalize gives them (selections only: exact)
        outs = [jax.tree.map(np.asarray, finalize(spec, m.state))._asdict() for m in ms]
        out = {k: jax.tree.map(lambda *xs: np.stack(xs), *[o[k] for o in outs])
               if outs[0][k] is not None else None for k in outs[0] if k != "history"}
        out["reason"] = np.where([m.pruned for m in ms], PRUNED, out["reason"])
        dt = out["init_loss"].dtype
        out["history"] = unpack_history(spec, group_history_columns(g), hist, dt)
        out["config"] = np.asarray([g.rows[r].config for r in rows], np.int64)
        results.append(out)
    return results


def run_members(run: SearchRun, keys: Iterable[tuple[int, int]], start: int, end: int,
                 desc: str) -> None:
    """Run the given members that are still active from ``start`` to ``end``."""
    by_group: dict[int, list[int]] = {}
    for gi, r in keys:
        if run.members[(gi, r)].active:
            by_group.setdefault(gi, []).append(r)
    for gi, rows in sorted(by_group.items()):
        advance(run, gi, sorted(rows), start, end, desc)


