"""Data validation, scaling, splits, k-fold indices, batch plans and epoch permutations.

Host-side helpers (:func:`validate_data`, :func:`fit_standardizer`, :func:`train_val_split`,
:func:`kfold_indices`, :func:`batch_plan`) run with NumPy before anything is traced.
:func:`feistel_permute` is the in-program shuffle: a counter-based pseudo-random
permutation that is jit- and vmap-able and needs no ``[n]``-sized sort per configuration.
Token streams: :func:`window_batch` draws a step's random windows inside the program
(``windows=``), :func:`token_windows` cuts a stream into consecutive windows (validation).
"""

from __future__ import annotations

import math
import numbers
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ._checks import check_positive_int, is_int

__all__ = [
    "BatchPlan",
    "Standardizer",
    "batch_plan",
    "check_orders",
    "epoch_permutation",
    "feistel_permute",
    "feistel_round_keys",
    "fit_standardizer",
    "kfold_indices",
    "standardize",
    "take",
    "token_windows",
    "train_val_split",
    "validate_data",
    "window_batch",
    "window_starts",
]




# ----------------------------------------------------------------------------- validation


def validate_data(data: Any, name: str = "data") -> tuple[Any, int]:
    """Check a data pytree on the host and convert its leaves to ``jnp`` arrays.

    Every leaf must be array-like with a numeric dtype (bool, int, uint or float), at
    least 1-D, finite, and all leaves must share the same leading length ``N > 0``
    (the sample axis). Runs in NumPy, so call it before any ``jit``.

    Args:
      data: a pytree of arrays, e.g. ``(x, y)`` or ``{"x": x, "y": y}``.
      name: how the data is named in error messages.

    Returns:
      ``(arrays, n)``: the pytree with ``jnp`` array leaves (host arrays copied to the
      device; a ``jax.Array`` already there kept as it is, see :func:`placed`), and ``N``.

    Raises:
      TypeError: a leaf is not numeric (strings, objects, complex).
      ValueError: no leaves, a 0-D leaf, lengths differ or are 0, non-finite values.

    Example:
      >>> arrays, n = validate_data((np.ones((4, 2)), np.zeros(4)))
      >>> n
      4
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(data)
    if not leaves:
        raise ValueError(f"{name} has no array leaves: {data!r}")
    arrays = []
    lengths: dict[str, int] = {}
    for path, leaf in leaves:
        where = f"{name}{jax.tree_util.keystr(path)}"
        if isinstance(leaf, int | float | bool) and path and isinstance(
                path[-1], jax.tree_util.SequenceKey):
            raise TypeError(
                f"{where} is a Python number: {name} looks like a nested list, which is read "
                "as a tree of numbers, not as an array; pass arrays, e.g. "
                "(np.asarray(x), np.asarray(y))")
        try:
            a = np.asarray(leaf)
        except Exception as e:  # ragged lists and the like
            raise TypeError(f"{where} is not array-like: {e}") from e
        if a.dtype.kind not in "buif":
            raise TypeError(
                f"{where} must have a numeric (bool/int/float) dtype, got dtype {a.dtype}"
            )
        if a.ndim < 1:
            raise ValueError(f"{where} must be at least 1-D (leading axis = samples), got 0-D")
        # the values as the device will hold them (float64 cast once, here), put on the
        # device together after the checks (one transfer call for every leaf). A device
        # array is used as it is.
        held = as_held(a) if a.dtype.kind == "f" else a
        arrays.append(leaf if placed(leaf) else held)
        if a.dtype.kind == "f":
            bad = int(np.size(held) - np.count_nonzero(np.isfinite(held)))
            if bad:
                raise ValueError(f"{where} has {bad} non-finite value(s) (NaN or inf)"
                                 + beyond_range(a.dtype, held.dtype))
        lengths[where] = a.shape[0]
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k}: {v}" for k, v in lengths.items())
        raise ValueError(f"{name}: leaves differ in leading length ({detail})")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"{name} is empty: leading length 0 ({', '.join(lengths)})")
    return jax.tree_util.tree_unflatten(treedef, put_host(arrays)), n


def put_host(arrays: list) -> list:
    """``arrays`` with every NumPy array put on the device by one ``jax.device_put`` call
    (a call per leaf costs ~0.1 ms of host time each); other entries as they are."""
    at = [i for i, a in enumerate(arrays) if isinstance(a, np.ndarray | np.generic)]
    if at:
        out = list(arrays)
        for i, x in zip(at, jax.device_put([arrays[i] for i in at]), strict=True):
            out[i] = x
        return out
    return arrays


def as_held(a: np.ndarray) -> np.ndarray:
    """A floating host array as the device holds it: in ``jax.dtypes.canonicalize_dtype``
    of its dtype (float64 is float32 without ``jax_enable_x64``, a value beyond float32's
    range inf), cast as ``jax.device_put`` casts it (the same bits)."""
    held = np.dtype(jax.dtypes.canonicalize_dtype(a.dtype))
    if held == a.dtype:
        return a
    with np.errstate(over="ignore"):
        return a.astype(held)


def nonfinite_count(a: np.ndarray) -> tuple[int, np.dtype]:
    """(how many values of the floating host array ``a`` are NaN or inf as the device
    holds them, that dtype): see :func:`as_held`."""
    held = as_held(a)
    return int(np.size(held) - np.count_nonzero(np.isfinite(held))), held.dtype


def beyond_range(given: np.dtype, held: np.dtype) -> str:
    """The end of a non-finite message when the device holds ``given`` as ``held``."""
    if held == given:
        return ""
    return (f", as {held.name} (the device's dtype of {given.name} without "
            f"jax_enable_x64: values beyond {held.name}'s range are inf there)")


def placed(leaf: Any) -> bool:
    """Whether a data leaf is a ``jax.Array`` the program takes as it is, no copy made:
    on one device and not committed to it (``jax.device_put`` of its values would give
    the same array), and not weakly typed (``jnp.full(n, 1.0)`` is; its copy is not)."""
    return (isinstance(leaf, jax.Array) and not leaf.committed and not leaf.weak_type
            and leaf.is_fully_addressable and len(leaf.devices()) == 1)


# ----------------------------------------------------------------------------- scaling


class Standardizer(NamedTuple):
    """Per-feature affine scaling ``(x - mean) / scale``."""

    mean: Any
    scale: Any


def fit_standardizer(x: ArrayLike) -> Standardizer:
    r"""Fit per-feature :math:`\mu_j` and :math:`s_j` (population std; 0 -> 1).

    Fit on the *training part only* and apply the same :class:`Standardizer` to the
    validation/test parts; fitting on all data leaks information from held-out samples.
    NumPy in, NumPy out; a ``jax.Array`` in gives ``jax.Array`` fields (jit-able).

    Args:
      x: ``[n, d]`` (or ``[n]``) data.

    Returns:
      ``Standardizer(mean, scale)`` with shape ``x.shape[1:]``.

    Example:
      >>> s = fit_standardizer(np.array([[1.0, 5.0], [3.0, 5.0]]))
      >>> s.mean.tolist(), s.scale.tolist()
      ([2.0, 5.0], [1.0, 1.0])
    """
    xp = jnp if isinstance(x, jax.Array) else np
    x = xp.asarray(x)
    mean = xp.mean(x, axis=0)
    std = xp.std(x, axis=0)
    return Standardizer(mean, xp.where(std == 0, xp.ones_like(std), std))


def standardize(x: ArrayLike, s: Standardizer) -> Any:
    r"""Apply :math:`(x - \mu) / s` with a fitted :class:`Standardizer`.

    Example:
      >>> x = np.array([[1.0], [3.0]])
      >>> standardize(x, fit_standardizer(x)).ravel().tolist()
      [-1.0, 1.0]
    """
    return (x - s.mean) / s.scale


# ----------------------------------------------------------------------------- splits


def train_val_split(
    n: int, val_fraction: float, key_or_seed: Any = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Random hold-out split of ``range(n)``.

    ``round(n * val_fraction)`` samples (at least 1, at most ``n - 1``) go to validation.

    Args:
      n: number of samples (>= 2).
      val_fraction: in ``(0, 1)``.
      key_or_seed: an int NumPy seed or a ``jax.random`` key.

    Returns:
      ``(train_idx, val_idx)``: sorted, disjoint int64 arrays covering ``range(n)``.

    Example:
      >>> tr, va = train_val_split(10, 0.2, 0)
      >>> len(tr), len(va)
      (8, 2)
    """
    n = check_positive_int("n", n)
    if n < 2:
        raise ValueError(f"train_val_split needs n >= 2, got {n=}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real):
        raise TypeError(f"val_fraction must be a float in (0, 1), got {val_fraction=!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction=!r}")
    n_val = min(max(int(round(n * val_fraction)), 1), n - 1)
    if is_int(key_or_seed):
        perm = np.random.default_rng(int(key_or_seed)).permutation(n)
    else:
        perm = np.asarray(jax.random.permutation(key_or_seed, n))
    return np.sort(perm[n_val:]).astype(np.int64), np.sort(perm[:n_val]).astype(np.int64)


def kfold_indices(
    n: int, k: int, shuffle: bool = True, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold cross-validation indices, with scikit-learn's ``KFold`` partition rule.

    Samples (shuffled with ``np.random.default_rng(seed)`` when ``shuffle``) are cut into
    ``k`` consecutive folds; the first ``n % k`` folds hold ``n // k + 1`` samples, the
    rest ``n // k``. With ``shuffle=False`` the folds equal
    ``sklearn.model_selection.KFold(k).split(...)`` exactly.

    Args:
      n: number of samples.
      k: number of folds, ``2 <= k <= n``.
      shuffle: permute before cutting.
      seed: NumPy seed of the permutation.

    Returns:
      A list of ``k`` pairs ``(train_idx, val_idx)`` of sorted int64 arrays; the
      ``val_idx`` partition ``range(n)``.

    Example:
      >>> [len(v) for _, v in kfold_indices(10, 3, shuffle=False)]
      [4, 3, 3]
    """
    n = check_positive_int("n", n)
    k = check_positive_int("k", k)
    if not 2 <= k <= n:
        raise ValueError(f"kfold_indices needs 2 <= k <= n, got {k=}, {n=}")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    sizes = np.full(k, n // k)
    sizes[: n % k] += 1
    folds = []
    start = 0
    for size in sizes:
        val = order[start : start + size]
        start += size
        is_val = np.zeros(n, bool)
        is_val[val] = True
        folds.append((np.flatnonzero(~is_val).astype(np.int64), np.sort(val).astype(np.int64)))
    return folds


def take(data: Any, idx: ArrayLike) -> Any:
    """Gather every leaf of a data pytree along axis 0.

    Example:
      >>> take((np.arange(5), np.arange(5) * 2), np.array([4, 0]))[1].tolist()
      [8, 0]
    """
    return jax.tree.map(lambda a: a[idx], data)


# ----------------------------------------------------------------------------- batch plans


class BatchPlan(NamedTuple):
    """How one epoch of ``n`` samples is cut into batches.

    Attributes:
      n: samples per epoch.
      batch_size: samples per full batch (``n`` for full batch).
      drop_last: whether a short final batch is dropped.
      steps_per_epoch: optimizer steps per epoch.
      full_steps: steps on a batch of exactly ``batch_size`` samples.
      last_batch_size: samples in the short final batch, 0 when there is none.
    """

    n: int
    batch_size: int
    drop_last: bool
    steps_per_epoch: int
    full_steps: int
    last_batch_size: int


def batch_plan(n: int, batch_size: int | None, drop_last: bool = False) -> BatchPlan:
    r"""Plan the batches of one epoch (PyTorch ``DataLoader`` semantics).

    With ``B = batch_size``: ``drop_last=False`` gives :math:`\lceil N/B \rceil` steps, the
    last holding :math:`N \bmod B` samples when that is non-zero; ``drop_last=True`` gives
    :math:`\lfloor N/B \rfloor` steps of ``B`` samples and the remainder is not seen that
    epoch. ``batch_size=None`` is full-batch GD (one step of ``N``). ``B > N`` with
    ``drop_last=False`` is one short batch of ``N``; with ``drop_last=True`` it is an error.

    Args:
      n: number of samples ``N`` (> 0).
      batch_size: ``None`` or a positive int.
      drop_last: drop a short final batch.

    Returns:
      A :class:`BatchPlan`.

    Example:
      >>> p = batch_plan(50_000, 256)
      >>> p.steps_per_epoch, p.full_steps, p.last_batch_size
      (196, 195, 80)
    """
    n = check_positive_int("n", n)
    if not isinstance(drop_last, (bool, np.bool_)):
        raise TypeError(f"drop_last must be a bool, got {drop_last=!r}")
    drop_last = bool(drop_last)
    if batch_size is None:
        return BatchPlan(n, n, drop_last, 1, 1, 0)
    b = check_positive_int("batch_size", batch_size)
    full, rem = divmod(n, b)
    if drop_last:
        if full == 0:
            raise ValueError(
                f"batch_size={b} > n={n} with drop_last=True leaves no batch in an epoch"
            )
        return BatchPlan(n, b, True, full, full, 0)
    return BatchPlan(n, b, False, full + (rem > 0), full, rem)


# ----------------------------------------------------------------------------- permutations


def check_orders(orders: Any, n: int, name: str = "shuffle") -> np.ndarray:
    """Explicit per-epoch visiting orders, checked: int32 ``[E, n]``.

    Args:
      orders: an integer array ``[E, n]`` (epoch ``e`` visits row ``e mod E``) or ``[n]``
        (the same order every epoch); each row a permutation of ``range(n)``.
      n: the number of training samples.
      name: the argument's name in error messages.

    Returns:
      The orders as a host ``int32`` array ``[E, n]``.

    Raises:
      TypeError: not an integer array. ValueError: another shape, or a row that is not a
        permutation of ``range(n)`` (the message names the row and a missing sample).

    Example:
      >>> check_orders(np.array([2, 0, 1]), 3).tolist()
      [[2, 0, 1]]
    """
    a = np.asarray(orders)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name}: an order array must hold integers (sample indices), got "
                        f"dtype {a.dtype}")
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != n or a.shape[0] == 0:
        raise ValueError(f"{name}: an order array must have shape [E, {n}] or [{n}] (one "
                         f"permutation of the {n} training samples per epoch), got shape "
                         f"{np.shape(orders)}")
    ok = (a >= 0) & (a < n)
    for e in range(a.shape[0]):
        seen = np.zeros(n, bool)
        seen[a[e][ok[e]]] = True
        if not (ok[e].all() and seen.all()):
            bad = (f"value {a[e][~ok[e]][0]} is outside 0..{n - 1}" if not ok[e].all()
                   else f"sample {int(np.argmin(seen))} is missing")
            raise ValueError(f"{name}: row {e} is not a permutation of range({n}) ({bad})")
    return a.astype(np.int32)

_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
_ROUNDS = 4


def _mix32(x: jax.Array) -> jax.Array:
    """Integer hash of uint32 words ("lowbias32", C. Wellons' hash-prospector)."""
    x = x ^ (x >> np.uint32(16))
    x = x * _M1
    x = x ^ (x >> np.uint32(15))
    x = x * _M2
    return x ^ (x >> np.uint32(16))


def _half_bits(n: int) -> int:
    return (math.ceil(math.log2(max(n, 2))) + 1) // 2


def feistel_permute(key_words: ArrayLike, positions: ArrayLike, n: int) -> jax.Array:
    r"""Map positions through a keyed pseudo-random permutation of ``[0, n)``.

    A 4-round balanced Feistel network on :math:`2h` bits,
    :math:`h = \lceil \lceil \log_2 \max(n, 2) \rceil / 2 \rceil` (so the domain
    :math:`2^{2h} < 4n`), maps :math:`(L, R) \mapsto (R, L \oplus F(R, k_r))` with
    :math:`F(R, k) = \mathrm{mix32}(R \oplus k) \bmod 2^h`. Each round is invertible, so
    the network permutes :math:`[0, 2^{2h})`; cycle-walking (re-applying it to outputs
    :math:`\ge n`, in a ``lax.while_loop`` over the whole vector) restricts it to a
    bijection of :math:`[0, n)` (Black & Rogaway 2002, "Ciphers with arbitrary finite
    domains"). Counter-based: element ``i`` of an epoch's order is computed from ``i``
    alone, no ``[n]`` sort. It is a *pseudo-random* permutation: a 4-round network with
    128 key bits reaches only a tiny, structured subset of the :math:`n!` orders, which
    is fine for shuffling mini-batches but not a uniform sample of permutations.

    Args:
      key_words: uint32 ``[4]`` round keys (from :func:`feistel_round_keys`).
      positions: uint32/int array of positions in ``[0, n)``, any shape (positions outside
        that range are returned unchanged).
      n: the domain size, a static Python int in ``[1, 2**32]``. Internally it is passed
        as a traced value, so programs are compiled once per half-width ``h``, not per ``n``.

    Returns:
      uint32 array of the shape of ``positions``, values in ``[0, n)``; over
      ``positions = arange(n)`` every value appears exactly once.

    Example:
      >>> kw = feistel_round_keys(jax.random.key(0), 0)
      >>> sorted(feistel_permute(kw, jnp.arange(10), 10).tolist()) == list(range(10))
      True
    """
    n = check_positive_int("n", n)
    if n > 2**32:
        raise ValueError(f"feistel_permute supports n <= 2**32, got {n=}")
    x0 = jnp.asarray(positions).astype(jnp.uint32)
    h = _half_bits(n)
    return _feistel(jnp.asarray(key_words).astype(jnp.uint32), x0, np.uint32(n - 1), h,
                    _unrolled_walks(n, h, x0.size))


# positions per call up to which the first walks are unrolled (a batch's, or a small epoch's)
UNROLL_MAX_POSITIONS = 4096


def _unrolled_walks(n: int, h: int, size: int) -> int:
    """Walks of :func:`_feistel` unrolled ahead of its loop for ``size`` positions: as
    many as leave a walk to the loop with probability below 1e-3 (each walk lands in
    ``[0, n)`` with probability ``n / 2**(2h)``); none for more than
    :data:`UNROLL_MAX_POSITIONS` positions (the order of a larger epoch, computed once per
    epoch, where each unrolled walk would cost a pass over every position)."""
    p = n / float(1 << (2 * h))
    if size > UNROLL_MAX_POSITIONS or p >= 1.0 or size == 0:
        return 0
    return math.ceil(math.log(1e-3 / size) / math.log(1.0 - p))


@partial(jax.jit, static_argnames=("h", "walks"))
def _feistel(keys: jax.Array, x0: jax.Array, n_minus_1: jax.Array, h: int,
             walks: int = 0) -> jax.Array:
    """Cycle-walked Feistel permutation; ``n`` is traced so only ``h`` (and shapes) compile.
    ``walks``: walks unrolled before the loop (one fused kernel instead of a loop's
    iterations; the same values: a walk changes only the positions still out of range,
    and the loop then runs only if some remain)."""
    mask = np.uint32((1 << h) - 1)
    shift = np.uint32(h)

    def encrypt(x: jax.Array) -> jax.Array:
        left, right = x >> shift, x & mask
        for r in range(_ROUNDS):
            left, right = right, left ^ (_mix32(right ^ keys[r]) & mask)
        return (left << shift) | right

    active = x0 <= n_minus_1  # out-of-range positions are returned unchanged

    def walk(x: jax.Array) -> jax.Array:
        return active & (x > n_minus_1)

    def body(x: jax.Array) -> jax.Array:
        return jnp.where(walk(x), encrypt(x), x)

    x = jnp.where(active, encrypt(x0), x0)
    for _ in range(walks):
        x = body(x)
    return jax.lax.while_loop(lambda x: jnp.any(walk(x)), body, x)


def feistel_round_keys(key: jax.Array, epoch: ArrayLike) -> jax.Array:
    """Derive the 4 uint32 round keys of an epoch's permutation.

    ``jax.random.bits(jax.random.fold_in(key, epoch), (4,), uint32)``: a fresh,
    independent permutation per ``(key, epoch)``; ``epoch`` may be traced.

    Args:
      key: a ``jax.random.key`` (new-style or raw uint32 key).
      epoch: an int (or traced int scalar).

    Returns:
      uint32 ``[4]``.

    Example:
      >>> feistel_round_keys(jax.random.key(0), 3).shape
      (4,)
    """
    return jax.random.bits(jax.random.fold_in(key, epoch), (_ROUNDS,), jnp.uint32)


def epoch_permutation(key: jax.Array, epoch: ArrayLike, n: int) -> jax.Array:
    """The full order of an epoch: ``feistel_permute(round_keys, arange(n), n)``.

    Example:
      >>> p = epoch_permutation(jax.random.key(1), 0, 5)
      >>> sorted(p.tolist())
      [0, 1, 2, 3, 4]
    """
    return feistel_permute(
        feistel_round_keys(key, epoch), jnp.arange(n, dtype=jnp.uint32), n
    ).astype(jnp.int32)


# fold_in(run key, WINDOW_TAG) starts the keys of a token stream's random windows
WINDOW_TAG = 0x57494E44


def window_starts(key: jax.Array, step: ArrayLike, batch: int, n_tokens: int,
                  length: int) -> jax.Array:
    """The first tokens of step ``step``'s ``batch`` random windows of ``length + 1`` tokens
    in a stream of ``n_tokens``: ``jax.random.randint(fold_in(fold_in(key, WINDOW_TAG),
    step), (batch,), 0, n_tokens - length)`` (int32; uniform, drawn with replacement).

    Args:
      key: the run's key (``fit``'s ``key``; a sweep's seed ``s`` is ``jax.random.key(s)``).
      step: the update's 0-based index (may be traced).
      batch: windows per step (``batch_size * accumulate``).
      n_tokens: the stream's length.
      length: the input length ``L`` (a window holds ``L + 1`` tokens).
    """
    k = jax.random.fold_in(jax.random.fold_in(key, WINDOW_TAG), step)
    return jax.random.randint(k, (batch,), 0, n_tokens - length, dtype=jnp.int32)


def window_batch(tokens: jax.Array, key: jax.Array, step: ArrayLike, batch: int,
                 length: int) -> tuple[jax.Array, jax.Array]:
    """Step ``step``'s batch from a 1-D token stream: ``(x, y)``, each ``[batch, length]``,
    where window ``i`` is ``tokens[s_i : s_i + length + 1]`` (:func:`window_starts`),
    ``x`` its first ``length`` tokens and ``y`` its last ``length`` (the next token of each
    position of ``x``)."""
    starts = window_starts(key, step, batch, tokens.shape[0], length)
    idx = starts[:, None] + jnp.arange(length + 1, dtype=jnp.int32)
    w = jnp.take(tokens, idx, axis=0, mode="clip")  # in range by construction
    return w[:, :-1], w[:, 1:]


def token_windows(tokens: ArrayLike, length: int) -> tuple[np.ndarray, np.ndarray]:
    """A token stream cut into consecutive windows (fixed validation data for ``windows=``):
    ``(x, y)`` with ``x[i] = tokens[i*L : i*L + L]`` and ``y[i] = tokens[i*L + 1 : i*L + L +
    1]``, ``i < (len(tokens) - 1) // L``; the tokens after the last whole window are left
    out.

    Args:
      tokens: a 1-D integer array.
      length: the window's input length ``L`` (a positive int).

    Returns:
      ``(x, y)``, int arrays ``[M, L]``.
    """
    length = check_positive_int("length", length)
    t = np.asarray(tokens)
    check_tokens(t, "tokens", length)
    m = (t.shape[0] - 1) // length
    x = t[: m * length].reshape(m, length)
    y = t[1: m * length + 1].reshape(m, length)
    return x, y


def check_tokens(tokens: Any, name: str, length: int) -> None:
    """A ValueError/TypeError naming ``name`` unless ``tokens`` is a 1-D integer array of
    at least ``length + 1`` tokens."""
    shape, dtype = getattr(tokens, "shape", None), getattr(tokens, "dtype", None)
    if shape is None or dtype is None:
        tokens = np.asarray(tokens)
        shape, dtype = tokens.shape, tokens.dtype
    if not np.issubdtype(np.dtype(dtype), np.integer):
        raise TypeError(f"{name} must be a 1-D integer array of tokens, got dtype {dtype}")
    if len(shape) != 1:
        raise ValueError(f"{name} must be a 1-D array of tokens, got shape {tuple(shape)}")
    if shape[0] < length + 1:
        raise ValueError(f"windows of {length} + 1 tokens are longer than {name}'s "
                         f"{shape[0]} tokens: give a longer stream or a smaller windows=")
