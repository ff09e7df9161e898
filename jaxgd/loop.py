"""The XLA:CPU loop machinery of the compiled program: the [stream, config] vmaps, the
packed while-loop carry, and the loop over evaluations in sub-blocks.

Used by :mod:`jaxgd.program` (which holds what one configuration does); nothing here
knows about training.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


def single(keys, tc) -> tuple[bool, bool]:
    """(one stream, one configuration): axes of size 1 are not vmapped (XLA would copy and
    transpose the parameters at every step for them)."""
    one_stream = keys.shape[0] == 1
    leaves = jax.tree.leaves(tc)
    one_config = one_stream and bool(leaves) and all(a.shape[1] == 1 for a in leaves)
    return one_stream, one_config


def vmapped(fn, in_axes_c, in_axes_s, one_stream, one_config, by_map=False):
    """``fn`` vmapped over configurations and streams (axes of size 1 dropped); with
    ``by_map`` the configurations run one after another (:func:`mapped`) instead."""
    if one_config:
        return fn
    fn = mapped(fn, in_axes_c) if by_map else jax.vmap(fn, in_axes=in_axes_c)
    return fn if one_stream else jax.vmap(fn, in_axes=in_axes_s)


def mapped(fn, in_axes):
    """``fn`` over the leading axis of the arguments whose ``in_axes`` entry is 0 (the
    others passed whole), as ``jax.lax.map``: one configuration after another inside the
    program, each with its own (unbatched) arithmetic."""
    def run(*args):
        axes = in_axes if isinstance(in_axes, tuple | list) else (in_axes,) * len(args)
        if any(a not in (0, None) for a in axes):
            raise ValueError(f"mapped: in_axes={in_axes!r} must be 0 or None")
        at = [i for i, a in enumerate(axes) if a == 0]

        def one(xs):
            full = list(args)
            for i, x in zip(at, xs, strict=True):
                full[i] = x
            return fn(*full)

        return jax.lax.map(one, tuple(args[i] for i in at))
    return run


def squeeze(one_stream, one_config, tc, keys, tidx, vidx):
    sq = lambda t: None if t is None else jax.tree.map(lambda a: a[0], t)  # noqa: E731
    if one_config:
        tc = jax.tree.map(lambda a: a[0, 0], tc)
    elif one_stream:
        tc = sq(tc)
    if one_stream:
        keys, tidx, vidx = keys[0], sq(tidx), sq(vidx)
    return tc, keys, tidx, vidx


def unsqueeze(one_stream, one_config, tree):
    """Outputs with their leading [stream, config] axes back."""
    if one_config:
        return jax.tree.map(lambda a: a[None, None], tree)
    if one_stream:
        return jax.tree.map(lambda a: a[None], tree)
    return tree


def layout(keys, tc) -> tuple[bool, bool]:
    """(one stream, one configuration): the axes of size 1 the program's state drops."""
    return single(keys, tc)


def state_axes(state, keys, tc):
    """A program state with its leading [stream, config] axes (whatever its layout)."""
    return unsqueeze(*single(keys, tc), state)


def state_layout(state, keys, tc):
    """A state with leading [stream, config] axes in the program's layout for
    ``keys``/``tc`` (the inverse of :func:`state_axes`)."""
    one_s, one_c = single(keys, tc)
    if one_c:
        return jax.tree.map(lambda a: a[0, 0], state)
    return jax.tree.map(lambda a: a[0], state) if one_s else state


class Packed(NamedTuple):
    """A pytree's scalar leaves stacked by dtype (booleans with int32): one array per
    group; its other leaves as they are, one entry each."""

    groups: tuple[jax.Array, ...]


def stored(dt):
    """The dtype a leaf is stacked as: booleans as int32 (they join the int32 leaves of
    their shape: one buffer less to update), anything else as itself."""
    return jnp.dtype(jnp.int32) if jnp.dtype(dt) == jnp.bool_ else jnp.dtype(dt)


# XLA:CPU never fuses a concatenate of more than 8 operands (its instruction fusion's
# ``kMaxConcatenateArguments``): a stack of 9 scalars made by one concatenation becomes 9
# kernels and a copy instead of one fusion, at every iteration of the loop whose carry it
# packs. A longer stack of scalars (``lead`` 0) is built from concatenations of at most
# this many (:func:`_stack`, still one fused kernel); with configuration axes (``lead`` >
# 0) groups hold at most this many leaves.
MAX_STACK = 8


def _bitwise(dt) -> bool:
    """Whether a stack of dtype ``dt`` can be assembled from its bits (:func:`_stack`)."""
    return jnp.dtype(dt).kind in "iuf" and jnp.dtype(dt).itemsize in (1, 2, 4, 8)


def _stack(xs: list[jax.Array]) -> jax.Array:
    """``jnp.stack(xs)`` as one fusable kernel: a concatenation of at most
    :data:`MAX_STACK` operands; a longer stack is the bitwise or of the bits of such
    concatenations, each padded with zeros to its place (elementwise, so XLA fuses it
    into one kernel; each entry is its leaf bit for bit)."""
    if len(xs) <= MAX_STACK:
        return jnp.stack(xs)
    dt = xs[0].dtype
    bits = jnp.dtype(f"uint{8 * dt.itemsize}")
    n = len(xs)
    out = None
    for i in range(0, n, MAX_STACK):
        part = jnp.stack(xs[i:i + MAX_STACK])
        u = jax.lax.bitcast_convert_type(part, bits)
        u = jax.lax.pad(u, bits.type(0),
                        [(i, n - i - part.shape[0], 0)] + [(0, 0, 0)] * (part.ndim - 1))
        out = u if out is None else out | u
    return jax.lax.bitcast_convert_type(out, dt)


def pack_layout(tree, lead: int = 0):
    """(treedef, per leaf: (group, index in group or None for a leaf of its own, dtype),
    group keys) of ``tree``'s leaves; leaves of at most ``lead`` dimensions are stacked
    (scalars, ``lead`` 0: one group per stored dtype; else groups of at most
    :data:`MAX_STACK`)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys: list[tuple[Any, ...]] = []
    where = []
    for leaf in leaves:
        if jnp.ndim(leaf) > lead:  # an array of its own: stacking would only copy it
            keys.append(("own", len(keys)))
            where.append((len(keys) - 1, None, jnp.dtype(leaf.dtype)))
            continue
        kind = (tuple(leaf.shape), stored(leaf.dtype))
        # a full group of this kind starts another (see MAX_STACK)
        limit = len(leaves) if lead == 0 and _bitwise(kind[1]) else MAX_STACK
        free = [g for g, k in enumerate(keys) if k[:2] == kind
                and sum(1 for w in where if w[0] == g) < limit]
        if not free:
            keys.append(kind + (len(keys),))
            free = [len(keys) - 1]
        g = free[0]
        where.append((g, sum(1 for w in where if w[0] == g), jnp.dtype(leaf.dtype)))
    return treedef, where, keys


def pack(tree, lead: int = 0) -> tuple[Packed, Any]:
    """The leaves of ``tree`` of at most ``lead`` dimensions (the scalars of each
    configuration, with ``lead`` configuration axes) stacked by (shape, dtype; booleans
    as int32, see :func:`stored`), the others as they are, and what :func:`unpack` needs
    (it gives each leaf back exactly).

    A while-loop carry of many scalars is many XLA buffers, and XLA:CPU updates each in a
    kernel of its own at every iteration; stacked, an iteration updates one buffer per
    group (a few kernels instead of a dozen per evaluation), and each stack is one fused
    kernel (:func:`_stack`). One buffer per dtype matters most for a small loop:
    XLA:CPU compiles a loop as one function (a call marked ``xla_cpu_small_call``, ~3x
    faster for a full-batch fit of a few points) only while one iteration reads and writes
    less than 1 kB by its cost model, and every further buffer is one more kernel that
    reads again the scalars it is computed from. A larger leaf
    (a weight matrix) is written whole by the kernel that computes it either way:
    stacked, it would be copied at every pack and every unpack (and each copy is one
    more kernel for XLA to compile, about 10 ms).
    """
    treedef, where, keys = pack_layout(tree, lead)
    leaves = jax.tree.leaves(tree)
    groups = []
    for g in range(len(keys)):
        mine = [(x, i) for x, w in zip(leaves, where, strict=True) if w[0] == g
                for i in (w[1],)]
        if mine[0][1] is None:
            groups.append(mine[0][0])
            continue
        groups.append(_stack([x if stored(x.dtype) == x.dtype
                              else x.astype(stored(x.dtype)) for x, _ in mine]))
    return Packed(tuple(groups)), (treedef, tuple(where))


def unpack(packed: Packed, layout) -> Any:
    treedef, where = layout
    leaves = [packed.groups[g] if i is None else packed.groups[g][i] for g, i, _ in where]
    return jax.tree.unflatten(treedef, [x if x.dtype == dt else x.astype(dt)
                                        for x, (_, _, dt) in zip(leaves, where, strict=True)])


# XLA:CPU runs the kernels of a loop body one after another (no thread-pool dispatch)
# only when every buffer the body touches is at most this many bytes (or the body has at
# most 8 kernels): its ThunkExecutor's ``execute_sequential_buffer_threshold``. A history
# block of thousands of rows in the loop carry made every evaluation of a small problem
# pay the concurrent executor's scheduling (~1-2 us); rows are therefore collected in a
# local buffer of at most this size and copied into the block once per sub-block. A loop
# whose buffers stay within about 1 kB in all (a full-batch problem of a few points)
# is compiled by XLA:CPU as one kernel (a call marked ``xla_cpu_small_call``).
SEQUENTIAL_BYTES = 512


def sub_rows(hist: dict[str, jax.Array], rows: int) -> int:
    """Evaluations per sub-block: as many rows (of every configuration) as fit in
    :data:`SEQUENTIAL_BYTES`, at least 1 and at most ``rows``."""
    row_bytes = sum(h.size * h.dtype.itemsize for h in hist.values()) // rows
    return max(1, min(rows, SEQUENTIAL_BYTES // max(1, row_bytes)))


def run_rows(st: Any, hist, rows: int, sub: int, limit, evaluation, take, put_row,
             put_rows, lead: int = 0):
    """Block-local evaluations ``0, 1, ...`` while ``e < rows``, ``e < limit`` and a
    configuration is active: (state, history block).

    The evaluations run in sub-blocks of ``sub``: an inner loop writes their rows into a
    ``sub``-row buffer read from the block at ``at`` (rows not yet written are NaN, so
    reading keeps what is there) and the outer loop writes it back. The last sub-block
    of a block starts at ``rows - sub`` so that it stays inside the block. The same
    evaluations run, with the same conditions, as in one loop over evaluations.
    """
    # the evaluation counter is packed with the state (one buffer less per iteration);
    # ``lead``: the state's configuration axes (its scalars per configuration are stacked)
    _, layout = pack((jnp.zeros((), jnp.int32), st), lead)

    def going(p, stop):
        e, s = unpack(p, layout)
        return (e < stop) & jnp.any(s.active)

    def inner(c):
        p, loc, at = c
        e, s = unpack(p, layout)
        s, row = evaluation(s, e)
        return pack((e + 1, s), lead)[0], put_row(loc, row, e - at), at

    def outer(c):
        p, h = c
        at = jnp.minimum(unpack(p, layout)[0], rows - sub)
        c = (p, take(h, at), at)
        if sub == 1:
            c = inner(c)
        else:
            stop = jnp.minimum(at + sub, limit)
            c = jax.lax.while_loop(lambda c: going(c[0], stop), inner, c)
        p, loc, _ = c
        return p, put_rows(h, loc, at)

    p, hist = jax.lax.while_loop(lambda c: going(c[0], jnp.minimum(rows, limit)), outer,
                                 (pack((jnp.zeros((), jnp.int32), st), lead)[0], hist))
    return unpack(p, layout)[1], hist
