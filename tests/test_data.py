"""Data helpers: validation, scaling, splits, k-fold, batch plans, Feistel permutations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler

from jaxgd import data

# ----------------------------------------------------------------------------- validate_data


def test_validate_data_accepts_and_converts():
    x = np.arange(12.0).reshape(4, 3)
    y = np.array([0, 1, 1, 0])
    (jx, jy), n = data.validate_data((x, y))
    assert n == 4
    assert isinstance(jx, jax.Array) and isinstance(jy, jax.Array)
    np.testing.assert_array_equal(np.asarray(jx), x)
    tree, n = data.validate_data({"x": x, "mask": np.ones(4, bool)})
    assert n == 4 and tree["mask"].dtype == jnp.bool_


def test_validate_data_mismatched_lengths_names_leaves():
    with pytest.raises(ValueError, match=r"data\[0\]: 4.*data\[1\]: 3"):
        data.validate_data((np.ones((4, 2)), np.ones(3)))
    with pytest.raises(ValueError, match=r"train\['y'\]"):
        data.validate_data({"x": np.ones((4, 2)), "y": np.ones(5)}, name="train")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_validate_data_rejects_nonfinite_with_count(dtype):
    x = np.ones((5, 2), dtype)
    x[1, 0] = np.nan
    x[3, 1] = np.inf
    with pytest.raises(ValueError, match=r"data\[0\] has 2 non-finite"):
        data.validate_data((x, np.ones(5)))
    y = np.ones(5, dtype)
    y[2] = -np.inf
    with pytest.raises(ValueError, match=r"data\['y'\] has 1 non-finite"):
        data.validate_data({"x": np.ones(5), "y": y})
    # finite, though their sum overflows (float32's largest for float64: see below)
    big = np.full((4, 3), np.finfo(np.float16 if dtype == np.float16 else np.float32).max,
                  dtype)
    big[1, 1] *= -1
    (got,), n = data.validate_data((big,))
    assert n == 4 and np.array_equal(np.asarray(got), big)


@pytest.mark.skipif(jax.config.jax_enable_x64, reason="float64 is float32 on the device")
def test_float64_values_beyond_float32_are_refused():
    """Without jax_enable_x64 the device holds float64 data and parameters as float32: a
    value finite in float64 but beyond float32's range would be inf there (silently: the
    loss and every number after it NaN or inf), so it is refused, counted, like inf."""
    from jaxgd.prepare import check_params

    x = np.ones((5, 2))
    x[0, 0], x[2, 1], x[4, 0] = 1e39, -1e300, np.finfo(np.float32).max
    with np.errstate(over="ignore"):
        assert np.isinf(np.asarray(jax.device_put(x))).sum() == 2  # what the device holds
    with pytest.raises(ValueError, match=r"data\[0\] has 2 non-finite.*float32"):
        data.validate_data((x, np.ones(5)))
    with pytest.raises(ValueError, match=r"params\['w'\] contains non-finite.*float32"):
        check_params({"w": np.array([1.0, 1e40])})
    assert np.isfinite(np.asarray(check_params({"w": np.array([1.0, 3e38])})["w"])).all()


def test_validate_data_keeps_device_arrays_and_copies_host_arrays():
    """A ``jax.Array`` leaf on the default device goes to the program as it is (no
    copy); host arrays, weakly typed arrays and arrays committed to a device are copied,
    as ``jax.device_put`` of their values (so the program sees the same types)."""
    x = jnp.arange(12.0).reshape(4, 3)
    host = np.arange(4.0, dtype=np.float32)
    weak = jnp.full(4, 1.0)
    assert weak.weak_type
    committed = jax.device_put(np.arange(4, dtype=np.int32), jax.devices()[0])
    (jx, jh, jw, jc), n = data.validate_data((x, host, weak, committed))
    assert n == 4 and jx is x
    for got, orig in ((jh, host), (jw, weak), (jc, committed)):
        ref = jax.device_put(np.asarray(orig))
        assert got is not orig and not got.weak_type and not got.committed
        assert got.dtype == ref.dtype and np.array_equal(np.asarray(got), np.asarray(ref))


def test_validate_data_rejects_strings_objects_and_empty():
    with pytest.raises(TypeError, match=r"mydata\[1\].*dtype"):
        data.validate_data((np.ones(2), np.array(["a", "b"])), name="mydata")
    with pytest.raises(TypeError, match="dtype"):
        data.validate_data((np.array([object(), object()]),))
    with pytest.raises(ValueError, match="empty"):
        data.validate_data((np.ones((0, 3)), np.ones(0)))
    with pytest.raises(ValueError, match="no array leaves"):
        data.validate_data(())
    with pytest.raises(ValueError, match="1-D"):
        data.validate_data((np.float32(1.0),))


# ----------------------------------------------------------------------------- scaling


def test_standardizer_matches_sklearn_and_handles_constant_columns():
    x = np.random.default_rng(0).normal(3, 2, size=(50, 3))
    x[:, 2] = 7.0
    s = data.fit_standardizer(x)
    ref = StandardScaler().fit(x)
    np.testing.assert_allclose(s.mean, ref.mean_)
    np.testing.assert_allclose(s.scale, ref.scale_)
    np.testing.assert_allclose(data.standardize(x, s), ref.transform(x), atol=1e-12)
    sj = data.fit_standardizer(jnp.asarray(x, jnp.float32))
    assert isinstance(sj.mean, jax.Array)
    np.testing.assert_allclose(np.asarray(sj.scale), ref.scale_, rtol=1e-5)


# ----------------------------------------------------------------------------- splits


@pytest.mark.parametrize("seed", [0, jax.random.key(3)])
def test_train_val_split_partitions(seed):
    tr, va = data.train_val_split(101, 0.2, seed)
    assert len(va) == 20 and len(tr) == 81
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(101))
    tr2, va2 = data.train_val_split(101, 0.2, seed)
    np.testing.assert_array_equal(va, va2)
    with pytest.raises(ValueError, match="val_fraction"):
        data.train_val_split(10, 1.0, 0)


@pytest.mark.parametrize("n,k", [(10, 3), (11, 5), (7, 7), (100, 10), (23, 4)])
def test_kfold_matches_sklearn_without_shuffle(n, k):
    ours = data.kfold_indices(n, k, shuffle=False)
    ref = list(KFold(k).split(np.zeros(n)))
    assert len(ours) == k
    for (tr, va), (rtr, rva) in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(va, rva)
        np.testing.assert_array_equal(tr, rtr)


@pytest.mark.parametrize("n,k", [(10, 3), (101, 7)])
def test_kfold_shuffled_partitions(n, k):
    folds = data.kfold_indices(n, k, shuffle=True, seed=1)
    vals = np.concatenate([va for _, va in folds])
    np.testing.assert_array_equal(np.sort(vals), np.arange(n))
    sizes = [len(va) for _, va in folds]
    assert sizes == [len(v) for _, v in KFold(k).split(np.zeros(n))]
    for tr, va in folds:
        assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == n
    assert not np.array_equal(folds[0][1], data.kfold_indices(n, k, shuffle=False)[0][1])
    with pytest.raises(ValueError, match="k"):
        data.kfold_indices(3, 4)


def test_take_gathers_pytree():
    d = {"x": np.arange(10).reshape(5, 2), "y": jnp.arange(5)}
    out = data.take(d, np.array([3, 1]))
    np.testing.assert_array_equal(out["x"], [[6, 7], [2, 3]])
    np.testing.assert_array_equal(np.asarray(out["y"]), [3, 1])


# ----------------------------------------------------------------------------- batch plans


def test_batch_plan_cifar_accounting():
    p = data.batch_plan(50_000, 256)
    assert (p.steps_per_epoch, p.full_steps, p.last_batch_size) == (196, 195, 80)
    p = data.batch_plan(50_000, 256, drop_last=True)
    assert (p.steps_per_epoch, p.full_steps, p.last_batch_size) == (195, 195, 0)


def test_batch_plan_full_batch_and_edge_cases():
    assert data.batch_plan(10, None) == data.BatchPlan(10, 10, False, 1, 1, 0)
    assert data.batch_plan(10, 10).steps_per_epoch == 1
    assert data.batch_plan(10, 1).steps_per_epoch == 10
    p = data.batch_plan(5, 8)
    assert (p.steps_per_epoch, p.full_steps, p.last_batch_size) == (1, 0, 5)
    with pytest.raises(ValueError, match="batch_size=8"):
        data.batch_plan(5, 8, drop_last=True)


@pytest.mark.parametrize(
    "bad,exc",
    [(True, TypeError), (2.0, TypeError), ("32", TypeError), (0, ValueError), (-4, ValueError)],
)
def test_batch_plan_rejects_bad_batch_size(bad, exc):
    with pytest.raises(exc, match="batch_size"):
        data.batch_plan(10, bad)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 5000),
    b=st.integers(1, 6000),
    drop_last=st.booleans(),
)
def test_batch_plan_covers_each_sample_once_like_torch(n, b, drop_last):
    if drop_last and b > n:
        with pytest.raises(ValueError):
            data.batch_plan(n, b, drop_last)
        return
    p = data.batch_plan(n, b, drop_last)
    ref = [len(batch) for batch in torch.utils.data.BatchSampler(range(n), b, drop_last)]
    sizes = [p.batch_size] * p.full_steps + ([p.last_batch_size] if p.last_batch_size else [])
    assert sizes == ref and p.steps_per_epoch == len(ref)
    # walk an epoch: step s takes perm[s*B : s*B + size]
    perm = np.random.default_rng(n).permutation(n)
    seen = np.concatenate([perm[s * b : s * b + size] for s, size in enumerate(sizes)])
    if drop_last:
        assert len(seen) == n - n % b
    else:
        np.testing.assert_array_equal(np.sort(seen), np.arange(n))
    assert len(np.unique(seen)) == len(seen)


# ----------------------------------------------------------------------------- Feistel


def _perm(key, epoch, n, pad):
    kw = data.feistel_round_keys(key, epoch)
    return np.asarray(data.feistel_permute(kw, jnp.arange(pad, dtype=jnp.uint32), n))


def test_feistel_is_permutation_exhaustive_small_n():
    key = jax.random.key(0)
    for n in range(1, 301):
        out = _perm(key, n, n, 512)  # padding beyond n is returned unchanged
        np.testing.assert_array_equal(np.sort(out[:n]), np.arange(n), err_msg=f"{n=}")
        np.testing.assert_array_equal(out[n:], np.arange(n, 512))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(301, 100_000), seed=st.integers(0, 2**31 - 1))
def test_feistel_is_permutation_large_n(n, seed):
    out = _perm(jax.random.key(seed), 0, n, 1 << 17)[:n]
    np.testing.assert_array_equal(np.sort(out), np.arange(n))


def test_feistel_different_keys_and_epochs_differ_and_look_shuffled():
    n = 1000
    a = _perm(jax.random.key(0), 0, n, n)
    assert not np.array_equal(a, _perm(jax.random.key(1), 0, n, n))
    assert not np.array_equal(a, _perm(jax.random.key(0), 1, n, n))
    np.testing.assert_array_equal(a, _perm(jax.random.key(0), 0, n, n))
    # no strong order left: rank correlation with identity is small, few fixed points
    assert abs(np.corrcoef(a, np.arange(n))[0, 1]) < 0.15
    assert np.sum(a == np.arange(n)) < 10
    # over many keys, element 0 lands roughly uniformly across 10 buckets
    firsts = np.array([_perm(jax.random.key(s), 0, n, n)[0] for s in range(200)])
    counts = np.bincount(firsts // 100, minlength=10)
    assert counts.min() > 5 and counts.max() < 40


def test_feistel_jit_vmap_and_traced_epoch():
    key = jax.random.key(7)
    f = jax.jit(jax.vmap(lambda e: data.epoch_permutation(key, e, 37)))
    outs = np.asarray(f(jnp.arange(4)))
    for e in range(4):
        np.testing.assert_array_equal(np.sort(outs[e]), np.arange(37))
        np.testing.assert_array_equal(outs[e], _perm(key, e, 37, 37))
    assert len({tuple(o) for o in outs}) == 4
    g = jax.vmap(lambda k: data.feistel_permute(k, jnp.arange(37), 37))
    kws = jax.vmap(lambda s: data.feistel_round_keys(jax.random.key(s), 0))(jnp.arange(3))
    assert np.asarray(g(kws)).shape == (3, 37)


def test_feistel_power_of_four_domain_and_bad_n():
    out = _perm(jax.random.key(0), 0, 256, 256)  # n == 2^(2h): no cycle walking needed
    np.testing.assert_array_equal(np.sort(out), np.arange(256))
    with pytest.raises(ValueError, match="n"):
        data.feistel_permute(jnp.zeros(4, jnp.uint32), jnp.arange(3), 0)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 3000), k=st.integers(2, 20), shuffle=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_kfold_property_partitions_any_n_k(n, k, shuffle, seed):
    if k > n:
        with pytest.raises(ValueError):
            data.kfold_indices(n, k, shuffle=shuffle, seed=seed)
        return
    folds = data.kfold_indices(n, k, shuffle=shuffle, seed=seed)
    assert len(folds) == k
    # validation parts are disjoint and cover every sample exactly once
    vals = np.concatenate([va for _, va in folds])
    np.testing.assert_array_equal(np.sort(vals), np.arange(n))
    for tr, va in folds:
        # each training part is exactly the complement of its validation part
        np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(n))
    sizes = sorted(len(va) for _, va in folds)
    assert sizes[-1] - sizes[0] <= 1


def _numpy_feistel(kw, positions, n):
    """An independent NumPy cycle-walked 4-round Feistel network (the docstring's
    definition), element by element."""
    h = (int(np.ceil(np.log2(max(n, 2)))) + 1) // 2
    mask = (1 << h) - 1
    kw = [int(k) for k in np.asarray(kw)]

    def mix(x):
        x &= 0xFFFFFFFF
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    def enc(x):
        left, right = x >> h, x & mask
        for k in kw:
            left, right = right, left ^ (mix(right ^ k) & mask)
        return (left << h) | right

    out = []
    for p in np.asarray(positions).tolist():
        x = enc(p) if p < n else p
        while x >= n and p < n:
            x = enc(x)
        out.append(x)
    return np.asarray(out, np.uint32)


@pytest.mark.parametrize("n", [97, 1025, 1797, 4097, 65536])
def test_feistel_batches_equal_a_numpy_cycle_walk(n, monkeypatch):
    """A batch's positions (the per-update path, whose first walks are unrolled ahead of
    the loop) and an epoch's, against a NumPy cycle walk; with the unrolled walks cut to
    one, the loop finishes them and gives the same values."""
    kw = data.feistel_round_keys(jax.random.key(3), 2)
    pos = (np.arange(64) * 7 + 5) % n
    want = _numpy_feistel(kw, pos, n)
    np.testing.assert_array_equal(np.asarray(data.feistel_permute(kw, pos, n)), want)
    whole = np.asarray(data.feistel_permute(kw, np.arange(n), n))
    np.testing.assert_array_equal(whole[pos], want)
    if n < 65536:
        assert data._unrolled_walks(n, data._half_bits(n), 64) > 1
    monkeypatch.setattr(data, "_unrolled_walks", lambda n, h, size: 1)
    np.testing.assert_array_equal(np.asarray(data.feistel_permute(kw, pos, n)), want)
