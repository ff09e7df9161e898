"""A population: the configurations of a sweep as training states the host holds between
program calls, for an adaptive search (:mod:`jaxgd.search`) to act on.

Each member (one configuration) keeps its program state, its history so far and its
traced hyper-parameters on the host. The population advances members from one evaluation
to another through the :class:`jaxgd.engine.Engine` (in chunks of a width it chooses, see
:meth:`Population.width`), ranks them by a recorded metric, stops or copies them, saves
and restores itself at a boundary (``out=``), and gives its members back as the chunk
records a sweep's results are built from. What a search method calls:

* :meth:`Population.advance` (the active members of a list, from one evaluation to
  another); :attr:`Population.members` (``(group, row) -> Member``) and
  :meth:`Population.config` (a member's index in the sweep);
* :meth:`Population.value` / :meth:`Population.series` (its recorded metric);
* :meth:`Population.stop` (prune), :meth:`Population.copy_state` (exploit) and
  :meth:`Population.set_hparams` (explore);
* :meth:`Population.checkpoint` at its boundaries (restored by the sweep before the
  method runs, which gets the saved boundary as ``resume``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from .engine import (
    ChunkInputs,
    ChunkPlan,
    CompileClock,
    Engine,
    block_of,
    chunk_inputs,
    chunk_record,
    device_state,
    plan_chunks,
    slot_configs,
    state_shapes,
)
from .groups import Group
from .history import PACKED, UNRANKED, HistoryLayout, evaluation_rows
from .observers import Call
from .outputs import finalize
from .processes import agree_cached, agree_floats
from .program import history_layout
from .spec import DIVERGED, evals_of
from .stops import code as stop_code

PRUNED = stop_code("pruned")

Key = tuple[int, int]  # (group index, row in the group): a member


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


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


class Population:
    """The members of a sweep's groups, advanced by ``engine``.

    Args:
      engine: the run's engine (data, mesh, observers).
      groups: the sweep's groups (:mod:`jaxgd.groups`).
      cfgs: every configuration of the sweep (dicts), indexed by ``Row.config``.
      epochs, chunk_size, memory_budget: the sweep's options (chunk planning).
      compact: survivors in narrower programs: True, False or "auto" (see
        :meth:`width`).
      store: the run folder (``out=``) boundaries are saved to, or None.
      grid, random: the sweep's axes as given (a method's priors, e.g. PBT's).
    """

    def __init__(self, engine: Engine, groups: list[Group], cfgs, epochs: int,
                 chunk_size=None, memory_budget=None, compact: bool | str = True,
                 store=None, grid=None, random=None):
        self.engine, self.groups, self.cfgs, self.epochs = engine, groups, cfgs, epochs
        self.chunk_size, self.memory_budget = chunk_size, memory_budget
        self.compact, self.store, self.grid, self.random = compact, store, grid, random
        self.members = {(gi, r): Member(dict(g.numeric[r]))
                        for gi, g in enumerate(groups) for r in range(len(g.rows))}
        self.widths: dict[int, int] = {}  # per group: the width of its first call
        # per group: (compile s, s per lane-evaluation), as measured in this search
        self.costs: dict[int, tuple[float, float]] = {}
        self.compiled: set[tuple[int, int, int]] = set()  # (group, streams, width)

    # ------------------------------------------------------------ reading members

    def config(self, key: Key) -> int:
        """The member's index in the sweep's configurations."""
        return self.groups[key[0]].rows[key[1]].config

    def evals(self) -> tuple[int, int]:
        """(epochs per evaluation, evaluations of the run)."""
        return evals_of(self.groups[0].prepared.spec)

    def layout_of(self, gi: int) -> HistoryLayout:
        """The columns of group ``gi``'s history."""
        g = self.groups[gi]
        return history_layout(g.prepared.spec, g.numeric[0])

    def series(self, key: Key, name: str) -> np.ndarray:
        """A member's recorded values of ``name`` so far (one per evaluation run)."""
        m, cols = self.members[key], self.layout_of(key[0])
        if name in cols.scalars:
            return np.concatenate([h[PACKED][:, cols.index(name)] for h in m.hist])
        return np.concatenate([h[name] for h in m.hist])

    def value(self, key: Key, metric: str, mode: str) -> float:
        """The member's ranking value: ``metric`` at its last evaluation with a finite
        value (worst for a diverged member)."""
        m = self.members[key]
        if m.state is not None and int(m.state.reason) == DIVERGED:
            return math.inf if mode == "min" else -math.inf
        series = self.series(key, metric)
        finite = series[np.isfinite(series)]
        return float(finite[-1]) if finite.size else math.nan

    def diverged(self, key: Key) -> bool:
        m = self.members[key]
        return m.state is not None and int(m.state.reason) == DIVERGED

    def check_metric(self, metric: str) -> None:
        """Refuse a metric that this sweep does not record."""
        for gi in range(len(self.groups)):
            names = set(self.layout_of(gi).recorded()) - set(UNRANKED)
            if metric not in names:
                raise ValueError(f"search metric={metric!r} is not recorded by this sweep; "
                                 f"recorded: {sorted(names)}")

    # ------------------------------------------------------------ acting on members

    def stop(self, key: Key) -> None:
        """Stop an active member (``stop_reason="pruned"``); it keeps what it reached."""
        m = self.members[key]
        if m.active:
            m.pruned = True
            m.state = m.state._replace(active=np.zeros_like(m.state.active))

    def copy_state(self, child: Key, parent: Key) -> None:
        """The child continues from a copy of the parent's complete state, but for its
        ``init_loss``: the loss the child itself started from (on its own data and batch
        order), which its table row records and its ``diverge_factor`` test measures
        from."""
        own = self.members[child].state.init_loss
        new = jax.tree.map(np.copy, self.members[parent].state)
        self.members[child].state = new._replace(init_loss=np.copy(own))

    def set_hparams(self, key: Key, values: dict[str, Any]) -> None:
        """New values of traced hyper-parameters for the member's next calls."""
        m = self.members[key]
        m.numeric = {**m.numeric, **values}

    # ------------------------------------------------------------ advancing

    def advance(self, keys: Iterable[Key], start: int, end: int, desc: str) -> None:
        """Run the given members that are still active from evaluation ``start`` to
        ``end``."""
        by_group: dict[int, list[int]] = {}
        for gi, r in keys:
            if self.members[(gi, r)].active:
                by_group.setdefault(gi, []).append(r)
        for gi, rows in sorted(by_group.items()):
            self._advance_group(gi, sorted(rows), start, end, desc)

    def _advance_group(self, gi: int, rows: list[int], start: int, end: int,
                       desc: str) -> None:
        """Evaluations ``start``..``end`` of group ``gi``'s rows ``rows`` from their states
        (or their initial state when ``start`` is 0), in chunks of :meth:`width`."""
        g = self.groups[gi]
        sub = Group(g.prepared, [g.rows[r] for r in rows],
                    [self.members[(gi, r)].numeric for r in rows],
                    [g.key_bits[r] for r in rows] if g.key_bits else [])
        for p in plan_chunks([sub], self.chunk_size, self.memory_budget, self.epochs,
                             self.engine.ndev):
            C = max(len(v) for v in p.per_stream)
            width = self.width(gi, p, end - start)
            for ci in range(-(-C // width)):
                ch = chunk_inputs(sub, p.streams, p.per_stream, ci, width,
                                  self.engine.fold_split)
                self._advance_chunk(gi, rows, ch, start, end, desc)

    def _advance_chunk(self, gi: int, rows: list[int], ch: ChunkInputs, start: int,
                       end: int, desc: str) -> None:
        """One program call: the members of ``ch`` from ``start`` to ``end``; their
        states, outputs and history kept on the host, the speed measured."""
        g = self.groups[gi]
        S, width = ch.grid_rows.shape
        call = Call(g.prepared.spec, gi, len(self.groups), S * width, start, end, desc,
                    configs=slot_configs(g, ch, rows))
        a = self.engine.advance(
            g.prepared, ch, start, end, call, pad=True,
            state=None if start == 0 else lambda keys, traced: self._states(gi, rows, ch, keys,
                                                                          traced))
        st = a.host_state()
        ran = max(1, int(np.max(a.out.evals_run)) - start)
        self.costs[gi] = (max(a.compile_s, self.costs.get(gi, (0.0, 0.0))[0]),
                          max(0.0, a.seconds - a.compile_s) / (ran * S * width))
        self.compiled.add((gi, S, width))
        for s, c in zip(*np.nonzero(ch.valid), strict=True):
            m = self.members[(gi, rows[ch.grid_rows[s, c]])]
            at = lambda x: np.array(x[s, c])  # noqa: E731
            m.state = jax.tree.map(at, st)
            m.hist.append({k: at(v) for k, v in a.hist.items()})

    def width(self, gi: int, p: ChunkPlan, n_evals: int) -> int:
        """The width of a call: the group's first call takes a plain sweep's width
        (``top``); later calls take ``top`` or, for fewer configurations, a narrower power
        of two: always with ``compact=True``, never with False, and with "auto" when its
        compute plus a compile (unless that shape was compiled in this search) costs less
        than ``top``'s compute, at the speed and compile time measured in this search.
        Processes agree on the measurements."""
        S, need = len(p.streams), p.width
        top = self.widths.setdefault(gi, need)
        narrow = min(top, -(-_pow2(need) // self.engine.ndev) * self.engine.ndev)
        if narrow >= top or self.compact is False:
            return top
        if self.compact is True or gi not in self.costs:
            return narrow
        comp, per_lane = self.costs[gi]
        comp = max(comp, CompileClock.longest.get(self.groups[gi].prepared.spec, 0.0))
        comp, per_lane = agree_floats([comp, per_lane])

        def cost(w):
            return n_evals * S * w * per_lane + (0.0 if (gi, S, w) in self.compiled else comp)

        return narrow if cost(narrow) < cost(top) else top

    def _states(self, gi: int, rows: list[int], ch: ChunkInputs, keys, traced):
        """The members' states stacked [S, width] (padding: a stopped copy), in the
        program's layout, on the mesh."""
        S, W = ch.grid_rows.shape
        slots = [self.members[(gi, rows[r])].state for r in ch.grid_rows.reshape(-1)]
        st = jax.tree.map(lambda *xs: np.stack(xs).reshape((S, W) + np.shape(xs[0])), *slots)
        st = st._replace(active=st.active & ch.valid)
        return device_state(st, keys, traced, self.engine.mesh)

    # ------------------------------------------------------------ checkpoint / restore

    def checkpoint(self, where: dict[str, Any]) -> None:
        """Save the members (states, histories, hyper-parameters) and the method's
        position ``where`` at a boundary (out=)."""
        if self.store is None:
            return
        arrays, members = {}, []
        for (gi, r), m in self.members.items():
            if m.state is None:
                continue
            for i, leaf in enumerate(jax.tree.leaves(m.state)):
                arrays[f"{gi}/{r}/s{i}"] = np.asarray(leaf)
            for k in m.hist[0]:
                arrays[f"{gi}/{r}/h/{k}"] = np.concatenate([h[k] for h in m.hist])
            members.append([gi, r, {k: np.asarray(v).item() for k, v in m.numeric.items()},
                            m.pruned])
        self.store.save_search(arrays, where=where, members=members)

    def restore(self) -> dict[str, Any] | None:
        """The members as saved at the last boundary of this search (out=), and where
        that was; None to start from the beginning."""
        got = agree_cached(self.store.load_search() if self.store is not None else None)
        if got is None:
            return None
        arrays, meta = got
        treedefs: dict[int, Any] = {}
        for gi, r, numeric, pruned in meta["members"]:
            if gi not in treedefs:
                treedefs[gi] = self.state_treedef(gi)
            m = self.members[(gi, r)]
            n = treedefs[gi].num_leaves
            saved = sum(1 for k in arrays if k.startswith(f"{gi}/{r}/s"))
            if saved != n:
                raise ValueError(
                    f"the search state saved in {self.store.path} holds {saved} arrays per "
                    f"member where this version of jaxgd's program state has {n} (saved by "
                    f"another version): remove "
                    f"{self.store.path / 'chunks' / 'search.npz'} to restart the search")
            m.state = jax.tree.unflatten(treedefs[gi],
                                         [arrays[f"{gi}/{r}/s{i}"] for i in range(n)])
            pre = f"{gi}/{r}/h/"
            m.hist = [{k[len(pre):]: v for k, v in arrays.items() if k.startswith(pre)}]
            m.numeric, m.pruned = {**m.numeric, **numeric}, bool(pruned)
        return meta["where"]

    def replay(self) -> None:
        """Tell the engine's observers the history rows that restored members hold (as
        blocks of a call read back, ``cached=True``), before the search goes on."""
        if not self.engine.rows_wanted:
            return
        for (gi, r), m in sorted(self.members.items()):
            if m.state is None or not m.hist:
                continue
            g = self.groups[gi]
            part = {k: np.concatenate([h[k] for h in m.hist])[None, None] for k in m.hist[0]}
            configs = np.full((1, 1), self.config((gi, r)), np.int64)
            n = part[PACKED].shape[2]
            call = Call(g.prepared.spec, gi, len(self.groups), 1, 0, n, "restored",
                        cached=True, configs=configs)
            self.engine.notify("block_rows", call,
                               block_of(g.prepared, self.layout_of(gi), configs, 0, part))

    def state_treedef(self, gi: int):
        """The structure of one configuration's program state in group ``gi`` (traced,
        not compiled)."""
        g = self.groups[gi]
        row = g.rows[0]
        ch = chunk_inputs(g, [(row.seed, row.fold if row.fold is not None else -1)], [[0]],
                          0, 1, self.engine.fold_split)
        return jax.tree.structure(state_shapes(g.prepared, ch, self.engine.data))

    # ------------------------------------------------------------ results

    def results(self) -> list[dict[str, Any]]:
        """The members as the results of chunks (one per group), their histories padded
        to every evaluation (NaN where a member did not run)."""
        results = []
        _, n_evals = self.evals()
        for gi, g in enumerate(self.groups):
            spec = g.prepared.spec
            rows = [r for r in range(len(g.rows)) if self.members[(gi, r)].state is not None]
            if not rows:
                continue
            ms = [self.members[(gi, r)] for r in rows]
            hist = {}
            for k in ms[0].hist[0]:
                n = evaluation_rows(k, n_evals, spec.epochs)
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
            out["history"] = self.layout_of(gi).unpack(hist, dt)
            results.append(chunk_record(out, [g.rows[r].config for r in rows]))
        return results
