"""Execution plans: how the configurations of one compiled group run in its program.

``"vmap"`` batches a stream's configurations into one vectorised step (their forward
passes on the shared batch become one matrix product); ``"map"`` runs them one after
another inside the same program (``jax.lax.map``), each with the unbatched arithmetic a
single configuration has. Both compute the same numbers (to float rounding; the same
bits where XLA emits the same arithmetic for both).

``sweep(plan="auto")`` starts per group from :func:`choose_plan`, a rule on the size of
the parameters, and keeps it in a short run (measuring both plans would compile every
group twice, and a group's compile takes longer than its run in most sweeps); in a run
long enough that trying the other plan costs little, :mod:`jaxgd.autoplan` measures both
(with the ``loop=`` candidates) and keeps the fastest. Measured with
``experiments/bench_f.py``'s quick sizes (4 configurations, 2-core CPU, interleaved,
fastest of 3-5 calls, in seconds, vmap / map / four hand ``jit(scan)`` runs in turn):
linear regression B (65 parameters) 0.031 / 0.048 / 0.035; MLP 64-256-256-10 (85 002)
0.36 / 0.26 / 0.29; flax CNN with BatchNorm (38 298) 17.8 / 8.4 / 8.3. Batching
networks' steps makes XLA:CPU run batched matrix products and convolutions that are no
faster per configuration than one at a time, plus transposes and copies of the
parameters at every step; a tiny model's step is dominated by per-kernel overhead,
which batching shares. With the host loop (``loop="host"``, the rule for a convolution on
the CPU) ``"map"`` runs each configuration's own jitted calls in turn
(:func:`jaxgd.hostloop.host_block`): the same flax CNN sweep of 4, 0.97 s vmapped against
0.34 s one by one.
"""

from __future__ import annotations

import jax

from .spec import ProgramSpec, updates_per_evaluation

# "auto" maps configurations with at least this many parameter elements (see above)
MAP_MIN_PARAMS = 1 << 12
# ... in the scan plan only when an evaluation has at least this many updates: inside a
# program ``lax.map`` runs an evaluation's own work (its history row, the divergence
# guard, the stop checks) once per configuration, where vmap runs it once for them all.
# The quick MLP sweep of 4 with a step budget (an evaluation per update) ran 0.24 s
# vmapped against 0.39 s mapped; with 29 updates per evaluation both 0.23 s
MAP_MIN_UPDATES = 8


def choose_plan(plan: str, spec: ProgramSpec, params, n_configs: int, ndev: int) -> str:
    """The plan of a group by rule (``"auto"``'s default candidate, see
    :mod:`jaxgd.autoplan`): ``plan`` itself unless ``"auto"``, which gives ``"map"`` for
    several configurations per device whose parameters have at least
    :data:`MAP_MIN_PARAMS` elements (in the scan plan, evaluations of at least
    :data:`MAP_MIN_UPDATES` updates), else ``"vmap"`` (one configuration per stream has
    nothing to batch: ``"vmap"``, which drops the axis)."""
    if plan != "auto":
        return plan
    size = sum(int(getattr(x, "size", 1)) for x in jax.tree.leaves(params))
    per_device = -(-n_configs // max(1, ndev))
    few = spec.loop != "host" and updates_per_evaluation(spec) < MAP_MIN_UPDATES
    return "map" if per_device > 1 and size >= MAP_MIN_PARAMS and not few else "vmap"


def with_plans(groups, plan: str, ndev: int) -> list[str]:
    """Set each group's program plan by rule (its spec's ``config_plan``); returns them
    in group order."""
    chosen = []
    for g in groups:
        p = g.prepared
        c = choose_plan(plan, p.spec, p.params, len(g.rows), ndev)
        g.prepared = p._replace(spec=p.spec._replace(config_plan=c))
        chosen.append(c)
    return chosen
