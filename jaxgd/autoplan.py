"""Execution plans chosen by measurement: ``loop="auto"`` and ``plan="auto"``.

A group's program can run its updates as a scan inside the program or as a host loop over
a jitted step (``loop=``, :mod:`jaxgd.hostloop`), and its configurations batched or one
after another (``plan=``, :mod:`jaxgd.plans`). The options left at ``"auto"`` give the
candidates: (scan | host) x (vmap | map), each where it applies (the host loop: device
data in one process; map: several configurations per device). The rules
(:func:`jaxgd.hostloop.resolve_loop`, :func:`jaxgd.plans.choose_plan`) pick the default
candidate.

:func:`choose` decides for one group:

1. A run too short to pay for trials keeps the rules' choice without measuring: unless
   ``2 x candidates`` evaluations are at most :data:`TRIAL_SHARE` of the evaluations
   still to run (over all the group's calls), nothing is measured; nor when an update
   is dispatch-bound (fewer than :data:`MIN_UPDATE_FLOPS` estimated by
   :func:`update_flops`): there the scan over vmapped configurations is fastest.
2. The default candidate is measured (:func:`trial`: its compile and
   first evaluation, then calls of n, 2n, 4n, ... evaluations timed until one takes
   :data:`TIMED_MIN_S` or a trial's evaluations would pass ``1 / candidates`` of
   :data:`TRIAL_SHARE` of the run's, from a fresh initial state, the results discarded;
   its seconds per evaluation are the last call's). The others are tried only when their
   estimated cost, ``(candidates - 1) x`` what the default's trial took (its compile,
   or the longest this process saw for it if already compiled, first evaluation, timed
   calls), is below :data:`TRIAL_SHARE` of the estimated run
   (evaluations to run x the default's seconds per evaluation; an upper bound when
   stop conditions end configurations early). A host-loop candidate whose jitted calls
   per evaluation (:func:`host_calls`: one per update, and per configuration when
   ``plan="map"`` runs them one by one) would take longer at :data:`DISPATCH_S` each than
   the default's measured evaluation cannot win and is not tried.
3. The candidate with the fastest measured evaluation runs the training, from the
   untouched initial state (or checkpoint). Every candidate computes the same numbers (to
   float rounding; the same bits where XLA emits the same arithmetic), so the choice never
   changes a result beyond rounding, and a resumed run may choose anew.

With several processes every process runs the same trials and process 0's timings decide
(:func:`jaxgd.engine.agree_floats`). Host-fed data (``feed=``) and adaptive searches keep
the rules' choice. The trials are recorded as :class:`Trial` rows: ``plan_trials`` of
``FitResult`` / ``SweepResult`` and ``result.json``; times are the measured ones, absent
for a candidate not tried.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from .engine import (
    ChunkInputs,
    ChunkPlan,
    CompileClock,
    Engine,
    agree_floats,
    chunk_inputs,
    program_args,
)
from .feed import HostData
from .hostloop import program_for
from .prepare import Prepared
from .spec import ProgramSpec, evals_of, loop_name

# the trials may cost at most this share of the run's estimated time
TRIAL_SHARE = 0.1
# an update of fewer floating-point operations (estimated: 6 x batch x parameters, a dense
# model's forward and backward pass) costs less than dispatching one host-loop call or
# one configuration of a map: the scan over vmapped configurations is fastest, and
# nothing is measured (a 100 000-update fit of the seed's line spent a third of its
# time on the trial)
MIN_UPDATE_FLOPS = 1e6
# a lower bound of one jitted call's dispatch from the host (seconds): a host-loop candidate
# whose calls per evaluation take longer than the default's measured evaluation at this
# pace cannot win and is not tried (its first evaluation alone could take minutes: one
# call per update and configuration with plan="map")
DISPATCH_S = 1e-5
# a trial times calls of 1, 2, 4, ... evaluations until one takes at least this long
TIMED_MIN_S = 0.05
# the wall clock of a timed call (a function returning seconds)
clock = time.perf_counter


class Trial(NamedTuple):
    """One candidate's measurement: its compile seconds and the seconds of one evaluation
    (the updates between two evaluations and the evaluation)."""

    group: int
    plan: str  # "vmap" | "map"
    loop: str  # "scan" | "host" (jaxgd.spec.loop_name)
    compile_s: float
    eval_s: float
    chosen: bool


def candidates(spec: ProgramSpec, loop_opt: Any, plan_opt: str, n_configs: int,
               ndev: int) -> list[tuple[str, str]]:
    """The (config plan, loop) pairs a group may run, the rules' choice (``spec``'s)
    first: the other loop when ``loop="auto"`` on device data in one process, the other
    plan when ``plan="auto"`` with several configurations per device."""
    loops = [spec.loop]
    if loop_opt == "auto" and not spec.fed and jax.process_count() == 1:
        loops.append("host" if spec.loop == "scan" else "scan")
    plans = [spec.config_plan]
    if plan_opt == "auto" and -(-n_configs // max(1, ndev)) > 1:
        plans.append("map" if spec.config_plan == "vmap" else "vmap")
    return [(p, lp) for p in plans for lp in loops]


def with_candidate(spec: ProgramSpec, cand: tuple[str, str]) -> ProgramSpec:
    """``spec`` running candidate ``cand`` (a host loop chosen here: one update per call)."""
    plan, lp = cand
    if lp == spec.loop:
        return spec._replace(config_plan=plan)
    return spec._replace(config_plan=plan, loop=lp, host_steps=1)


def worth_measuring(n_candidates: int, evals_left: int) -> bool:
    """Whether the trials' evaluations (two per candidate) are at most
    :data:`TRIAL_SHARE` of the ``evals_left`` evaluations still to run."""
    return n_candidates > 1 and 2 * n_candidates <= TRIAL_SHARE * evals_left


def worth_trying(n_candidates: int, evals_left: int, compile_s: float, eval_s: float,
                 timed_s: float) -> bool:
    """Whether trying the other candidates (each costing what the default's trial did: its
    compile, a first evaluation and the timed calls) costs less than :data:`TRIAL_SHARE`
    of the estimated run (``evals_left`` evaluations at the default's ``eval_s``)."""
    return ((n_candidates - 1) * (compile_s + eval_s + timed_s)
            < TRIAL_SHARE * evals_left * eval_s)


def host_calls(spec: ProgramSpec, n_configs: int, ndev: int) -> int:
    """The jitted calls of one evaluation of ``spec`` in the host loop (one update per call,
    an epoch's start and the evaluation's own), times the configurations of a call
    when they run one by one (``plan="map"`` on one device); 0 for the scan."""
    if spec.loop != "host":
        return 0
    K, _ = evals_of(spec)
    plan = spec.plan
    per = K if spec.by_steps else K * (1 + plan.full_steps + int(plan.last_batch_size > 0))
    one_by_one = spec.config_plan == "map" and ndev == 1
    return (per + 2) * (n_configs if one_by_one else 1)


def update_flops(prep: Prepared) -> float:
    """A configuration's update, estimated as a dense model's: 6 x the samples of a batch
    x the parameters' elements."""
    size = sum(int(getattr(x, "size", 1)) for x in jax.tree.leaves(prep.params))
    return 6.0 * prep.spec.plan.batch_size * size


def trial(engine: Engine, prep: Prepared, ch: ChunkInputs, timer: Callable[[], float],
          min_s: float, max_evals: int) -> tuple[float, float, float]:
    """Measure ``prep``'s program on the inputs ``ch`` (device data only; at least two
    evaluations): (compile seconds, seconds per evaluation, seconds of the timed
    calls). Evaluation 0 runs from a fresh initial state (compiling: JAX's compile
    events counted), then calls of n, 2n, 4n, ... evaluations (n a tenth of
    ``max_evals``, at least 1; at most a history block's) are timed by ``timer`` until
    one takes ``min_s`` (process 0's timing, so that every process makes the same calls)
    or the next would pass ``max_evals`` evaluations in all (or the run's); the last one
    gives the seconds per evaluation. (Starting at a tenth keeps the calls few where an
    evaluation costs less than dispatching a call: a 100 000-evaluation fit of the
    seed's line made 13 calls from n = 1, 3 now.)
    The results are discarded and no observer is told; the program stays compiled
    (cached) for the run that follows."""
    prep = engine.sharded(prep)
    spec = prep.spec
    prog, _ = program_for(spec, prep.params, ch.traced.values, ch.grid_rows.size)
    args, put_scalar = program_args(prep, ch, engine.data, engine.mesh)
    params0, data, val, traced, keys, tidx, vidx, state0 = args
    rest = (data, val, traced, keys, tidx, vidx)

    def block(st, at, stop):
        return jax.block_until_ready(prog.block(st, put_scalar(np.int32(at)),
                                                put_scalar(np.int32(stop)), *rest))[0]

    with CompileClock() as clock:
        st = block(prog.init(params0, data, val, traced, keys, tidx, vidx, state0), 0, 1)
        compile_s = clock.note(spec, 0.0)  # remembered as this spec's compile
    limit, at, spent = min(evals_of(spec)[1], max_evals), 1, 0.0
    n = max(1, min(prog.rows, max_evals // 10))
    while True:
        t0 = timer()
        st = block(st, at, at + n)
        secs = agree_floats([timer() - t0])[0]  # every process makes the same calls
        spent, at = spent + secs, at + n
        if secs >= min_s or 2 * n > prog.rows or at + 2 * n > limit:
            break
        n *= 2
    jax.effects_barrier()  # the trial's progress callbacks done before the run's start
    return compile_s, secs / n, spent


def choose(engine: Engine, prep: Prepared, ch: ChunkInputs, group: int, evals_left: int,
           loop_opt: Any, plan_opt: str) -> tuple[ProgramSpec, list[Trial]]:
    """The spec a group runs (see the module docstring) and its trials (empty when none
    was measured). ``ch``: the inputs of one of its calls; ``evals_left``: the
    evaluations its calls still run, summed."""
    spec = prep.spec
    cands = candidates(spec, loop_opt, plan_opt, ch.grid_rows.size, engine.ndev)
    if isinstance(engine.data, HostData) or not worth_measuring(len(cands), evals_left):
        return spec, []
    if evals_of(spec)[1] < 2:  # a trial times the second evaluation
        return spec, []
    if update_flops(prep) < MIN_UPDATE_FLOPS:  # dispatch-bound: the rules' scan
        return spec, []
    # a candidate's trial runs at most its share of TRIAL_SHARE of the evaluations
    cap = max(2, int(TRIAL_SHARE * evals_left / len(cands)))
    known = CompileClock.longest.get(engine.sharded(prep).spec, 0.0)  # compiled before
    tried = []
    for i, cand in enumerate(cands):
        cspec = with_candidate(spec, cand)
        if i and host_calls(cspec, ch.grid_rows.size, engine.ndev) * DISPATCH_S >= tried[0][1][1]:
            continue  # its dispatches alone take longer than the default's evaluation
        got = trial(engine, prep._replace(spec=cspec), ch, clock, TIMED_MIN_S, cap)
        tried.append((cand, agree_floats(list(got))))  # process 0's timings decide
        # the others' compiles estimated by the default's (this one's, or an earlier)
        c = agree_floats([max(tried[0][1][0], known)])[0]
        if i == 0 and not worth_trying(len(cands), evals_left, c, *tried[0][1][1:]):
            break
    best = min(range(len(tried)), key=lambda i: tried[i][1][1])
    chosen = with_candidate(spec, tried[best][0])
    trials = [Trial(group, p, loop_name(with_candidate(spec, (p, lp))), c, e, i == best)
              for i, ((p, lp), (c, e, _)) in enumerate(tried)]
    return chosen, trials


def choose_groups(engine: Engine, plans: list[ChunkPlan], loop_opt: Any, plan_opt: str,
                  store=None) -> tuple[list[Trial], bool]:
    """Decide every group of a plain sweep's chunk ``plans`` (:func:`choose`; each group
    measured on its first call's inputs, the estimated run its calls not yet in the run
    folder ``store``): each group's spec set to its choice; returns the trials and
    whether any chunk is read back from ``store`` (computed by an earlier call, whose
    plans this call need not share)."""
    trials: list[Trial] = []
    read_back = False
    for gi in dict.fromkeys(p.group_index for p in plans):
        mine = [p for p in plans if p.group_index == gi]
        g, first = mine[0].group, mine[0]
        todo = sum(1 for p in mine for ci in range(p.n_chunks)
                   if store is None or engine.load_chunk(store, p, ci,
                                                         f"{p.tag}_c{ci:05d}") is None)
        read_back |= todo < sum(p.n_chunks for p in mine)
        ch = chunk_inputs(g, first.streams, first.per_stream, 0, first.width,
                          engine.fold_split)
        spec, got = choose(engine, g.prepared, ch, gi, todo * evals_of(g.prepared.spec)[1],
                           loop_opt, plan_opt)
        g.prepared = g.prepared._replace(spec=spec)
        trials += got
    return trials, read_back


def table(trials: list[Trial]):
    """The trials as a DataFrame (columns as :class:`Trial`'s fields), or None when none
    was measured."""
    if not trials:
        return None
    import pandas as pd

    return pd.DataFrame([t._asdict() for t in trials], columns=list(Trial._fields))


def record(res, groups, trials: list[Trial], read_back: bool = False, store=None,
           options: tuple[Any, str] = ("scan", "vmap")) -> None:
    """Record on a sweep's result the plan each group ran (``res.plans``), their loops
    (``res.loop``) and the trials (``res.plan_trials``). With chunks read back from the run
    folder ``store`` or calls resumed from its checkpoints (``read_back``) under an
    ``"auto"`` option (``options``: ``loop``, ``plan``), an earlier call may have measured
    and run other plans: the folder's own record when it has one (a finished sweep
    called again), else None (unknown)."""
    from .store import recorded_plan

    res.plans = [g.prepared.spec.config_plan for g in groups]
    res.loop = ",".join(dict.fromkeys(loop_name(g.prepared.spec) for g in groups))
    res.plan_trials = table(trials)
    if read_back and store is not None and "auto" in options:
        rec = recorded_plan(store.path)
        res.plans, res.loop = rec["plans"], rec["loop"]
        res.plan_trials = rec["plan_trials"] if not trials else res.plan_trials
