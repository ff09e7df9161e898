"""Groups: configurations that share one compiled program.

Axes that change array shapes or program structure (``batch_size``, ``optimizer``,
``accumulate``, ``schedule``, shape axes, non-numeric values) split a sweep's
configurations (:mod:`jaxgd.axes`) into groups; inside a group every numeric value is a
traced array of one program (:func:`jaxgd.prepare.split_hparams` splits each
configuration's hyper-parameters). Next on the path: :mod:`jaxgd.engine` runs the groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import numpy as np

from . import lossform
from .axes import STREAM_AXES, STRUCTURAL_AXES, shape_axes, shape_of, shaped_init
from .options import Options
from .prepare import Prepared, prepare, split_hparams


class Row(NamedTuple):
    """A configuration of a group: its index in the sweep, its seed and fold."""

    config: int
    seed: int
    fold: int | None


@dataclass
class Group:
    """Configurations that share one compiled program (equal shapes and structure)."""

    prepared: Prepared
    rows: list[Row] = field(default_factory=list)
    numeric: list[dict[str, Any]] = field(default_factory=list)  # per row: traced values
    key_bits: list[Any] = field(default_factory=list)  # per row: words of its loss key


def make_groups(loss, params, data, cfgs, all_idx, opts: Options, fold_split) -> list[Group]:
    """Validate every configuration and group them (nothing is compiled yet)."""
    base_hp = dict(opts.hparams or {})
    base = opts.pick(STRUCTURAL_AXES + ("seed",))
    shape_names = shape_axes(opts.init)
    known_struct = set(STRUCTURAL_AXES) | set(STREAM_AXES) | set(shape_names)
    groups: dict[Any, Group] = {}
    for i in all_idx:
        c = cfgs[i]
        full = {**base, **{k: v for k, v in c.items() if k in known_struct}}
        if full["batch_size"] == "full":
            full["batch_size"] = None
        shape = shape_of(opts.init, shape_names, {**base_hp, **c}, i, c)
        hp = {k: v for k, v in {**base_hp, **c}.items() if k not in known_struct}
        fold = c.get("fold")
        n_train = None if fold is None else len(fold_split[fold][0])
        key_struct = (
            lossform.hashable(full["optimizer"]), full["batch_size"], full["accumulate"],
            full["schedule"], n_train, tuple(sorted(hp)), shape,
            # non-numeric values (e.g. nesterov=True/False) change the program: own group
            tuple(sorted((k, v) for k, v in hp.items()
                         if isinstance(v, bool | str) or v is None)),
        )
        g = groups.get(key_struct)
        if g is None:
            program_opts = opts.replace(**{k: full[k] for k in STRUCTURAL_AXES}, hparams=hp)
            init_fn = shaped_init(opts.init, shape, i, c) if shape else opts.init
            try:
                prep = prepare(loss, params, data, program_opts, init_fn=init_fn,
                               data_checked=True, n_train=n_train,
                               val_from_index=fold is not None)
            except (ValueError, TypeError) as e:
                raise type(e)(f"configuration {i} {c}: {e}") from e
            g = groups[key_struct] = Group(prep)
        spec = g.prepared.spec
        try:
            # the base stop keywords fill in: a value on a sweep axis overrides them
            numeric, static, _, _ = split_hparams(loss, spec.opt, spec.schedule, hp, opts)
        except (ValueError, TypeError) as e:
            raise type(e)(f"configuration {i} {c}: {e}") from e
        if tuple(sorted(static.items())) != spec.static_hparams:
            # a static value differs: its own group
            raise ValueError(f"configuration {i} {c}: non-numeric hyper-parameters must be "
                             "the same across a sweep axis")
        g.rows.append(Row(i, int(full["seed"]), fold))
        g.numeric.append(numeric)
        if spec.form.key:  # as fit(..., hparams=hp) derives them (jaxgd.loss_key)
            g.key_bits.append(lossform.key_bits(lossform.key_hparams(hp)))
    return list(groups.values())


def as_model(pg, groups: list[Group]):
    """A parameter group's stacked trained part rebuilt as the model object of the group
    (shape) it was trained in."""
    from .results import ParamGroup

    def sig(tree, lead):
        leaves, treedef = jax.tree.flatten(tree)
        return treedef, [np.shape(x)[lead:] for x in leaves]

    want = sig(pg.params, 1)
    g = next(g for g in groups if sig(g.prepared.params, 0) == want)
    return ParamGroup(pg.rows, g.prepared.combined.rebuild(pg.params))
