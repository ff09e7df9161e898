"""Problem set F: ``jaxgd.fit`` / ``jaxgd.sweep`` against the loop a user would write.

Every problem runs three ways on the same data, steps and hyper-parameters, through the
public API only (``fit``/``sweep`` at their defaults, as a user writes them):

- **jaxgd**: ``jaxgd.fit(loss, params, data, optimizer=..., hparams=..., batch_size=B,
  epochs=E, key=seed)`` and ``jaxgd.sweep(..., grid={"learning_rate": lrs})``, no tuning
  keywords (so ``shuffle=True``, ``metrics="auto"``, ``eval_every=1``); ``mlp-steps`` is
  the MLP with ``steps=`` of the same updates in place of ``epochs=``;
- **peer 0a, the user's loop**: a jitted optax train step
  (``train_step(hp, params, state, opt_state, batch, key)``, the learning rate an argument
  so one compile serves every configuration) called in a Python loop over batches taken
  from host (NumPy) arrays, as the flax / equinox / optax examples write it;
- **peer 0b, the hand scan**: one ``jit`` of ``lax.scan`` over epochs and, inside, over
  the same steps (a short last batch as one more step).

Both peers do the work ``fit`` does at the defaults, no more: the data order of every
epoch is ``jaxgd.data.epoch_permutation(jax.random.key(seed), epoch, N)`` (what
``shuffle=True`` visits; computed in the timed loop), the loss's dropout key at update
``t`` is ``jaxgd.loss_key(seed, hparams, t)`` (precomputed per configuration, inside the
timed call), batches follow PyTorch's ``DataLoader`` (the last one short), and the loss
over the whole training set in evaluation mode (``train=False``, no key) is computed
before training and after every epoch (the default ``metrics="auto"``, which is
``"full"`` with an epoch budget); with ``steps=`` (``mlp-steps``) they keep each update's
batch loss and evaluate nothing (``"auto"`` is ``"batch"`` there), as a loop counting
updates does. A
full-batch problem (A) evaluates nothing apart: the loss of every step is recorded, as
``fit`` takes it from the step itself. jaxgd computes more on top (gradient norms, batch
means, the divergence guard, stop checks): that is its overhead, measured here.

Every sweep row runs ``plan="auto"`` (the "plan" column: what it chose, see
:mod:`jaxgd.plans`) and is followed by a row ``sweep plan=P`` with the other plan forced
(map against vmap on the same problem and peers). The "jaxgd loop" column is the
execution plan of the updates ``fit``/``sweep`` chose (``result.loop``: ``loop="auto"``
takes the host loop, a jitted step per host call, for a loss with a convolution on the
CPU, else the scan).

With a ``plan_rows`` list (``jaxgd bench`` and ``bench_gpu`` pass one), every problem's
sweep also runs under each execution plan forced (``plan=`` vmap | map x ``loop=`` scan |
host, :func:`measure_plans`) and at the defaults, interleaved in one run after clearing
JAX's caches: compile and run seconds per plan, the run over the fastest plan's, the plan
``"auto"`` ran and the evaluation seconds it measured (NaN: the run was too short for
``jaxgd.autoplan`` to measure), and each plan's parity with auto's parameters.

A sweep of N configurations is compared with N peer runs one after another (each peer
compiles once: its hyper-parameters are arguments). Timing: JAX's caches cleared, a first
call each (compile included), then up to ``reps`` interleaved rounds (jaxgd, loop, scan), as many as
fit in the sizes' ``row_budget_s`` at the first round's pace, and more (up to ``short_rounds``)
for a row whose rounds take at most a quarter of that budget (the "rounds" column), each
round starting from the next side and Python's garbage collected before every call (a call
right after the user's loop of tens of thousands of dispatches ran up to 2x slower); run
time is the minimum of the rounds, compile time the first call minus that. Ratios are jaxgd / peer
(< 1: jaxgd faster) against the faster peer; the target is <= 1.0 on every row, warm
and first call (compile included) apart.

Parity: the final parameters (and model state) of ``fit`` and of every sweep
configuration must equal both peers' to float32 tolerance (max |a - b| over a leaf,
relative to that leaf's largest magnitude); otherwise :class:`ParityError` is raised and
the run stops: the comparison is of the same computation or of nothing.

The character transformer trains on random windows of the Python standard library's own
source (a few modules read from ``os.path.dirname(os.__file__)``, ASCII bytes): jaxgd
has no window-sampling data source yet, so the windows are drawn once (NumPy, fixed
seed) and materialised as samples, and every side visits them in the same shuffled order.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

F_PROBLEMS = ("cnn", "mlp", "mlp-steps", "transformer", "A", "B", "C")
TARGET = 1.0


class ParityError(AssertionError):
    """jaxgd and a peer did not compute the same parameters."""


# ----------------------------------------------------------------------------- sizes


@dataclasses.dataclass(frozen=True)
class FSizes:
    name: str = "full"
    n_sweep: int = 16  # configurations of every sweep row (N)
    cnn_epochs: int = 5
    cnn_batch: int = 64
    mlp_epochs: int = 20
    mlp_batch: int = 64
    mlp_hidden: int = 256
    tf_windows: int = 4096
    tf_context: int = 32
    tf_dim: int = 64
    tf_epochs: int = 2
    tf_batch: int = 32
    a_iters: int = 100_000
    b_n: int = 65_536
    b_d: int = 64
    b_batch: int = 256
    b_epochs: int = 3
    c_seeds: int = 4
    reps: int = 5  # interleaved timed rounds per row, at most
    # ... or up to this many while they take at most a quarter of row_budget_s: the minimum
    # of 3-5 calls of a program of a few milliseconds moves by tens of percent with load
    short_rounds: int = 25
    row_budget_s: float = 120.0  # ... and as many as fit in this time (at least one)


F_FULL = FSizes()
F_QUICK = dataclasses.replace(F_FULL, name="quick", n_sweep=4, cnn_epochs=1, mlp_epochs=3,
                              tf_windows=1024, tf_epochs=1, a_iters=10_000, b_n=16_384,
                              b_epochs=2, c_seeds=2, reps=3, row_budget_s=20.0)
F_TINY = dataclasses.replace(F_FULL, name="tiny", n_sweep=2, cnn_epochs=1, mlp_epochs=1,
                             mlp_hidden=16, tf_windows=64, tf_context=8, tf_dim=16,
                             tf_epochs=1, tf_batch=16, a_iters=200, b_n=512, b_d=8,
                             b_batch=64, b_epochs=1, c_seeds=2, reps=1, short_rounds=1,
                             row_budget_s=5.0)
F_SIZES = {"full": F_FULL, "quick": F_QUICK, "tiny": F_TINY}


# ----------------------------------------------------------------------------- problems


@dataclasses.dataclass
class Problem:
    """One F problem. ``loss`` is jaxgd's form: ``loss(params, batch)`` or, with model
    ``state``, ``loss(params, batch, *, state, key, train) -> (loss, state)``."""

    name: str
    loss: Callable
    params: Any
    data: tuple
    optimizer: Callable  # optax factory
    hparams: dict  # fit's hparams (learning_rate and any other)
    lrs: np.ndarray  # the sweep's learning rates
    batch_size: int | None
    epochs: int
    state: Any = None
    seeds: tuple = (0,)  # the sweep's seeds (one per configuration block)
    # parity tolerance: vmapped convolutions and attention round differently from the
    # unbatched ones, and differences grow over the steps (a different computation, e.g.
    # another dropout key or data order, differs by O(0.1-1))
    tol: float = 1e-3
    note: str = ""
    peer_loss: Callable | None = None  # the peers' loss if not ``loss`` (parity test only)
    # a step budget (``steps=`` epochs x updates per epoch, as research code counts
    # updates): the peers log each update's batch loss and evaluate nothing, as such a loop
    # does; jaxgd at its defaults (an evaluation per update recording its batch loss)
    by_steps: bool = False

    @property
    def n(self) -> int:
        return len(self.data[0])

    def fit_config(self) -> tuple[float, int]:
        """``fit``'s (learning rate, seed): ``hparams`` and the first seed."""
        return float(self.hparams["learning_rate"]), self.seeds[0]

    def configs(self) -> list[tuple[float, int]]:
        """The sweep's (learning rate, seed) configurations."""
        return [(float(lr), s) for s in self.seeds for lr in self.lrs]

    def hp(self, lr: float) -> dict[str, float]:
        return {**self.hparams, "learning_rate": lr}


def _digits():
    import jaxgd

    ds = jaxgd.datasets.load("digits")
    return np.asarray(ds.x / 16.0, np.float32), np.asarray(ds.y, np.int32)


def _ce(logits, y):
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def cnn_problem(s: FSizes) -> Problem:
    """flax linen CNN (conv-BatchNorm-relu, conv-relu, pool, dense-dropout) on digits (the
    first convolution has no bias: BatchNorm removes it, it would get no gradient)."""
    import flax.linen as nn
    import jax
    import optax

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            h = x.reshape((x.shape[0], 8, 8, 1))
            h = nn.relu(nn.BatchNorm(use_running_average=not train)(
                nn.Conv(16, (3, 3), use_bias=False)(h)))
            h = nn.avg_pool(nn.relu(nn.Conv(32, (3, 3))(h)), (2, 2), (2, 2))
            h = nn.relu(nn.Dense(64)(h.reshape((h.shape[0], -1))))
            return nn.Dense(10)(nn.Dropout(0.2, deterministic=not train)(h))

    model = CNN()
    x, y = _digits()
    v = model.init(jax.random.key(0), x[:1], train=False)

    def loss(params, batch, *, state, key, train):
        xb, yb = batch
        var = {"params": params, "batch_stats": state}
        if train:
            logits, upd = model.apply(var, xb, train=True, rngs={"dropout": key},
                                      mutable=["batch_stats"])
            state = upd["batch_stats"]
        else:
            logits = model.apply(var, xb, train=False)
        return _ce(logits, yb), state

    return Problem("cnn", loss, v["params"], (x, y), optax.sgd,
                   {"learning_rate": 0.05, "momentum": 0.9},
                   np.geomspace(0.01, 0.1, s.n_sweep), s.cnn_batch, s.cnn_epochs,
                   state=v["batch_stats"], tol=1e-2,
                   note=f"flax linen CNN + BatchNorm + dropout, digits 1797x8x8x1, "
                        f"B={s.cnn_batch}, {s.cnn_epochs} epochs, sgd+momentum")


def mlp_problem(s: FSizes) -> Problem:
    import jax.numpy as jnp
    import optax

    x, y = _digits()
    h = s.mlp_hidden
    rng = np.random.default_rng(0)
    sizes = [(64, h), (h, h), (h, 10)]
    params = [{"w": (rng.standard_normal(ab) * np.sqrt(2.0 / ab[0])).astype(np.float32),
               "b": np.zeros(ab[1], np.float32)} for ab in sizes]

    def loss(p, batch):
        xb, yb = batch
        a = xb
        for layer in p[:-1]:
            a = jnp.maximum(a @ layer["w"] + layer["b"], 0.0)
        return _ce(a @ p[-1]["w"] + p[-1]["b"], yb)

    return Problem("mlp", loss, params, (x, y), optax.adam, {"learning_rate": 1e-3},
                   np.geomspace(3e-4, 3e-3, s.n_sweep), s.mlp_batch, s.mlp_epochs,
                   note=f"MLP 64-{h}-{h}-10, digits, B={s.mlp_batch}, {s.mlp_epochs} "
                        "epochs, adam")


STDLIB_MODULES = ("os.py", "random.py", "functools.py", "argparse.py", "textwrap.py")


def stdlib_text() -> np.ndarray:
    """ASCII bytes of a few standard-library modules (every Python install has them)."""
    root = os.path.dirname(os.__file__)
    raw = b"".join(open(os.path.join(root, m), "rb").read() for m in STDLIB_MODULES)
    arr = np.frombuffer(raw, np.uint8)
    return arr[arr < 128].astype(np.int32)


def char_transformer(context: int, dim: int, layers: int = 2, heads: int = 4, vocab: int = 128):
    """A pre-LayerNorm causal character transformer (flax linen): ``layers`` blocks of
    bias-free multi-head attention and a GELU MLP (4 x ``dim``), learned positions, logits
    over ``vocab`` tokens. ``model.apply({"params": p}, tokens[B, L])`` -> ``[B, L, vocab]``
    for ``L <= context``."""
    import flax.linen as nn
    import jax.numpy as jnp

    class Block(nn.Module):
        @nn.compact
        def __call__(self, h):
            mask = nn.make_causal_mask(jnp.ones(h.shape[:2]))
            a = nn.LayerNorm()(h)
            # no biases in the attention: a key bias has no gradient (softmax ignores it),
            # so Adam would move it by rounding noise alone, differently on every side
            h = h + nn.MultiHeadDotProductAttention(num_heads=heads, qkv_features=dim,
                                                    use_bias=False)(a, a, mask=mask)
            m = nn.Dense(dim)(nn.gelu(nn.Dense(4 * dim)(nn.LayerNorm()(h))))
            return h + m

    class CharTransformer(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            pos = self.param("pos", nn.initializers.normal(0.02), (context, dim))
            h = nn.Embed(vocab, dim)(tokens) + pos[: tokens.shape[-1]]
            for _ in range(layers):
                h = Block()(h)
            return nn.Dense(vocab)(nn.LayerNorm()(h))

    return CharTransformer()


def transformer_problem(s: FSizes) -> Problem:
    """A 2-layer character transformer (flax linen) on random stdlib-source windows."""
    import jax
    import optax

    ctx, d = s.tf_context, s.tf_dim
    text = stdlib_text()
    starts = np.random.default_rng(0).integers(0, len(text) - ctx - 1, s.tf_windows)
    win = text[starts[:, None] + np.arange(ctx + 1)]
    model = char_transformer(ctx, d)
    params = model.init(jax.random.key(0), win[:1, :ctx])["params"]

    def loss(p, batch):
        xb, yb = batch
        logits = model.apply({"params": p}, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    return Problem("transformer", loss, params, (win[:, :-1], win[:, 1:]), optax.adam,
                   {"learning_rate": 1e-3}, np.geomspace(3e-4, 3e-3, s.n_sweep),
                   s.tf_batch, s.tf_epochs, tol=1e-2,
                   note=f"2-layer char transformer d={d}, context {ctx}, {s.tf_windows} "
                        f"random windows of {len(text)} stdlib chars materialised as "
                        f"samples, B={s.tf_batch}, {s.tf_epochs} epoch(s), adam")


def _line_loss(p, batch):
    import jax.numpy as jnp

    xb, yb = batch
    return jnp.mean((xb[:, 0] * p["w"] + p["b"] - yb) ** 2)


def a_problem(s: FSizes) -> Problem:
    import optax

    import jaxgd

    x, y = jaxgd.datasets.noisy_line(16, seed=0)
    return Problem("A", _line_loss, {"w": np.zeros((), np.float32), "b": np.zeros((), np.float32)},
                   (np.asarray(x, np.float32), np.asarray(y, np.float32)), optax.sgd,
                   {"learning_rate": 1e-4}, np.geomspace(5e-5, 2e-4, s.n_sweep), None,
                   s.a_iters, tol=1e-4,
                   note=f"the seed's line: 16 points, full batch, sgd, {s.a_iters} iterations")


def _mse(p, batch):
    import jax.numpy as jnp

    xb, yb = batch
    return jnp.mean((xb @ p["w"] + p["b"] - yb) ** 2)


def regression_problem(s: FSizes, name: str) -> Problem:
    """B (one shuffle order, N learning rates) or C (``c_seeds`` seeds x learning rates;
    a sweep row only: C's ``fit`` is B's)."""
    import optax

    import jaxgd

    ds = jaxgd.datasets.synthetic_regression(s.b_n, s.b_d, seed=0)
    params = {"w": np.zeros(s.b_d, np.float32), "b": np.zeros((), np.float32)}
    k = s.n_sweep if name == "B" else max(1, s.n_sweep // s.c_seeds)
    seeds = (0,) if name == "B" else tuple(range(s.c_seeds))
    return Problem(name, _mse, params, (np.asarray(ds.x, np.float32),
                                        np.asarray(ds.y, np.float32)),
                   optax.adam, {"learning_rate": 1e-2}, np.geomspace(1e-3, 1e-1, k),
                   s.b_batch, s.b_epochs, seeds=seeds,
                   note=f"linear regression N={s.b_n}, d={s.b_d}, B={s.b_batch}, "
                        f"{s.b_epochs} epochs, adam" + ("" if name == "B" else
                                                        f", {len(seeds)} seeds x {k} lrs"))


def mlp_steps_problem(s: FSizes) -> Problem:
    """The MLP with a step budget of the same updates (``steps=``)."""
    p = mlp_problem(s)
    return dataclasses.replace(p, name="mlp-steps", by_steps=True,
                               note=p.note + ", as steps= (a loop counting updates)")


BUILDERS = {"cnn": cnn_problem, "mlp": mlp_problem, "mlp-steps": mlp_steps_problem,
            "transformer": transformer_problem,
            "A": a_problem, "B": lambda s: regression_problem(s, "B"),
            "C": lambda s: regression_problem(s, "C")}


# ----------------------------------------------------------------------------- peers


def _objective(prob: Problem, loss, params, state, batch, key, train):
    """(loss, new state) of either loss form."""
    if prob.state is None:
        return loss(params, batch), None
    return loss(params, batch, state=state, key=key, train=train)


def _steps(prob: Problem) -> tuple[int, int, int]:
    """(batch size, full batches, size of the short last batch or 0) of an epoch."""
    b = prob.n if prob.batch_size is None else prob.batch_size
    full, rem = divmod(prob.n, b)
    return b, full, rem


def _step_keys(prob: Problem, lr: float, seed: int, total: int):
    """[total, 2] uint32 key data: ``jaxgd.loss_key(seed, hparams, t)`` for every update
    (None when the loss takes no key)."""
    import jax
    import jax.numpy as jnp

    import jaxgd

    if prob.state is None:
        return None
    hp = prob.hp(lr)
    keys = jax.vmap(lambda t: jaxgd.loss_key(seed, hp, t))(jnp.arange(total))
    return np.asarray(jax.random.key_data(keys))


def _hp_arrays(prob: Problem, lr: float) -> dict[str, Any]:
    import jax.numpy as jnp

    return {k: jnp.float32(v) for k, v in prob.hp(lr).items()}


def make_loop(prob: Problem) -> Callable[[float, int], dict[str, Any]]:
    """Peer 0a: a jitted train step in a Python loop. Returns ``run(lr, seed)``."""
    import jax
    import jax.numpy as jnp
    import optax

    import jaxgd

    loss = prob.peer_loss or prob.loss
    full_batch = prob.batch_size is None

    @jax.jit
    def train_step(hp, params, state, opt_state, batch, key):
        key = None if key is None else jax.random.wrap_key_data(key)

        def f(p):
            return _objective(prob, loss, p, state, batch, key, True)

        (lv, new_state), g = jax.value_and_grad(f, has_aux=True)(params)
        updates, opt_state = prob.optimizer(**hp).update(g, opt_state, params)
        return optax.apply_updates(params, updates), new_state, opt_state, lv

    @jax.jit
    def evaluate(params, state, data):
        return _objective(prob, loss, params, state, data, None, False)[0]

    x, y = prob.data
    data_dev = (jnp.asarray(x), jnp.asarray(y))
    b, full, rem = _steps(prob)
    per_epoch = full + (1 if rem else 0)

    def run(lr, seed):
        hp = _hp_arrays(prob, lr)
        keys = _step_keys(prob, lr, seed, per_epoch * prob.epochs)
        p, s = jax.tree.map(jnp.asarray, prob.params), prob.state
        o = prob.optimizer(**hp).init(p)
        hist = [] if full_batch or prob.by_steps else [evaluate(p, s, data_dev)]
        t = 0
        for e in range(prob.epochs):
            if not full_batch:
                order = np.asarray(jaxgd.data.epoch_permutation(jax.random.key(seed), e,
                                                                prob.n))
            for i in range(per_epoch):
                batch = data_dev if full_batch else (x[order[i * b:(i + 1) * b]],
                                                     y[order[i * b:(i + 1) * b]])
                p, s, o, lv = train_step(hp, p, s, o, batch, None if keys is None else keys[t])
                t += 1
                if full_batch or prob.by_steps:
                    hist.append(lv)
            if not (full_batch or prob.by_steps):
                hist.append(evaluate(p, s, data_dev))
        return jax.block_until_ready({"params": p, "state": s, "history": hist})

    return run


def make_scan(prob: Problem) -> Callable[[float, int], dict[str, Any]]:
    """Peer 0b: the same steps as one ``jit(lax.scan)``. Returns ``run(lr, seed)``."""
    import jax
    import jax.numpy as jnp
    import optax

    import jaxgd

    loss = prob.peer_loss or prob.loss
    full_batch = prob.batch_size is None
    b, full, rem = _steps(prob)
    per_epoch = full + (1 if rem else 0)
    n, epochs = prob.n, prob.epochs

    @jax.jit
    def train(hp, params, state, data, seed_key, keys):
        opt = prob.optimizer(**hp)
        x, y = data

        def step(carry, inp):
            p, s, o = carry
            idx, k = inp
            batch = data if idx is None else (x[idx], y[idx])
            k = None if k is None else jax.random.wrap_key_data(k)
            (lv, s), g = jax.value_and_grad(
                lambda q: _objective(prob, loss, q, s, batch, k, True), has_aux=True)(p)
            u, o = opt.update(g, o, p)
            return (optax.apply_updates(p, u), s, o), lv

        def epoch(carry, inp):
            e, ks = inp
            if full_batch:
                carry, lv = step(carry, (None, None if ks is None else ks[0]))
                return carry, lv
            order = jaxgd.data.epoch_permutation(seed_key, e, n)
            kf = None if ks is None else ks[:full]
            carry, lvs = jax.lax.scan(step, carry, (order[:full * b].reshape(full, b), kf))
            if rem:
                carry, lv = step(carry, (order[full * b:], None if ks is None else ks[full]))
                lvs = jnp.concatenate([lvs, lv[None]])
            if prob.by_steps:  # the updates' batch losses, no evaluation
                return carry, lvs
            p, s, _ = carry
            return carry, _objective(prob, loss, p, s, data, None, False)[0]

        ks = None if keys is None else keys.reshape(epochs, per_epoch, 2)
        carry, hist = jax.lax.scan(epoch, (params, state, opt.init(params)),
                                   (jnp.arange(epochs), ks))
        first = None if full_batch or prob.by_steps else _objective(
            prob, loss, params, state, data, None, False)[0]
        return carry[0], carry[1], first, hist

    x, y = prob.data
    data_dev = (jnp.asarray(x), jnp.asarray(y))

    def run(lr, seed):
        keys = _step_keys(prob, lr, seed, per_epoch * epochs)
        p0 = jax.tree.map(jnp.asarray, prob.params)
        p, s, first, hist = train(_hp_arrays(prob, lr), p0, prob.state, data_dev,
                                  jax.random.key(seed), None if keys is None
                                  else jnp.asarray(keys))
        return jax.block_until_ready({"params": p, "state": s, "history": [first, hist]})

    return run


# ----------------------------------------------------------------------------- jaxgd side


def _budget(prob: Problem) -> dict[str, int]:
    """``fit``/``sweep``'s budget keyword: ``epochs``, or ``steps`` of as many updates."""
    if not prob.by_steps:
        return {"epochs": prob.epochs}
    _, full, rem = _steps(prob)
    return {"steps": prob.epochs * (full + (1 if rem else 0))}


def make_fit(prob: Problem) -> Callable[[], dict[str, Any]]:
    import jaxgd

    lr, seed = prob.fit_config()

    def run():
        kw = {} if prob.state is None else {"state": prob.state}
        res = jaxgd.fit(prob.loss, prob.params, prob.data, optimizer=prob.optimizer,
                        hparams=prob.hp(lr), batch_size=prob.batch_size, key=seed,
                        **_budget(prob), **kw)
        return [{"params": res.params, "state": res.state, "loop": res.loop}]

    return run


def make_sweep(prob: Problem, plan: str = "auto", loop: str = "auto"
               ) -> Callable[[], list[dict[str, Any]]]:
    """The sweep of every (lr, seed) configuration; returns them in ``configs()`` order.
    ``plan``, ``loop``: sweep's ``plan=`` and ``loop=``; the plans it ran are in the
    function's ``plans`` attribute after a call, its measured candidates (or None) in
    ``trials``."""
    import jaxgd

    grid: dict[str, Any] = {"learning_rate": [float(v) for v in prob.lrs]}
    if len(prob.seeds) > 1:
        grid["seed"] = list(prob.seeds)
    base = {k: v for k, v in prob.hparams.items() if k != "learning_rate"}

    def run():
        kw = {} if prob.state is None else {"state": prob.state}
        sw = jaxgd.sweep(prob.loss, prob.params, prob.data, optimizer=prob.optimizer,
                         grid=grid, hparams=base or None, batch_size=prob.batch_size,
                         plan=plan, loop=loop, **_budget(prob), **kw)
        run.plans, run.trials = sw.plans, sw.plan_trials
        tab = sw.table
        seeds = tab["seed"] if "seed" in tab else [0] * len(tab)
        where = {(float(np.float32(lr)), int(sd)): i
                 for i, (lr, sd) in enumerate(zip(tab["learning_rate"], seeds, strict=True))}
        out = []
        for lr, sd in prob.configs():
            i = where[(float(np.float32(lr)), sd)]
            out.append({"params": sw.params_of(i),
                        "state": None if prob.state is None else _index(sw.state, i),
                        "loop": sw.loop})
        return out

    return run


def _index(tree, i):
    import jax

    return jax.tree.map(lambda a: np.asarray(a)[i], tree)


# ----------------------------------------------------------------------------- parity


def parity_error(got, ref) -> float:
    """Max over leaves of max |got - ref| / max(max |ref leaf|, 1e-2 * max |ref|): relative
    to the leaf's scale, with a floor at 1% of the tree's largest value (a leaf that stays
    at rounding level, e.g. a bias before BatchNorm, is judged on the tree's scale).
    Different structure, shapes or a non-finite value anywhere: inf."""
    import jax

    ga, ra = jax.tree.leaves(got), jax.tree.leaves(ref)
    if len(ga) != len(ra):
        return math.inf
    ga = [np.asarray(g, np.float64) for g in ga]
    ra = [np.asarray(r, np.float64) for r in ra]
    if any(g.shape != r.shape or not (np.isfinite(g).all() and np.isfinite(r).all())
           for g, r in zip(ga, ra, strict=True)):
        return math.inf
    scale = max([float(np.max(np.abs(r))) for r in ra if r.size] + [1e-6])
    worst = 0.0
    for g, r in zip(ga, ra, strict=True):
        if g.size:
            den = max(float(np.max(np.abs(r))), 1e-2 * scale)
            worst = max(worst, float(np.max(np.abs(g - r))) / den)
    return worst


def check_parity(name: str, got: list[dict], ref: list[dict], tol: float) -> float:
    """Raise :class:`ParityError` unless every configuration's params and state agree."""
    if len(got) != len(ref):
        raise ParityError(f"{name}: {len(got)} results from jaxgd, {len(ref)} from the peer")
    worst = 0.0
    for i, (g, r) in enumerate(zip(got, ref, strict=True)):
        err = max(parity_error(g["params"], r["params"]),
                  parity_error(g["state"], r["state"]) if r["state"] is not None else 0.0)
        if not err <= tol:
            raise ParityError(f"{name}, configuration {i}: jaxgd's final parameters differ "
                              f"from the peer's by {err:.3g} (relative, tolerance {tol:g}): "
                              "not the same computation")
        worst = max(worst, err)
    return worst


# ----------------------------------------------------------------------------- timing


def rounds_for(reps: int, budget_s: float, round_s: float, short_rounds: int = 0) -> int:
    """Timed rounds of a row: ``reps``, or more (up to ``short_rounds``) while they take
    at most a quarter of ``budget_s``; never more than fit in ``budget_s`` (at least one)."""
    round_s = max(round_s, 1e-9)
    more = min(short_rounds, int(budget_s / 4 // round_s))
    return max(1, min(int(budget_s // round_s), max(reps, more)))


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, budget_s: float = math.inf,
                short_rounds: int = 0):
    """Call every fn once (compile + run), then rounds in turn: ``reps``, or up to
    ``short_rounds`` for short rounds (:func:`rounds_for`), as many as fit in ``budget_s``
    seconds at the first timed round's pace (at least one).

    Returns ``({name: (first_s, [rep_s])}, {name: last result})``."""
    times = {k: [math.nan, []] for k in fns}
    outs = {}
    names = list(fns)
    r = 0
    while r <= reps:
        if r == 2 and math.isfinite(budget_s):  # one timed round done: how many fit
            reps = rounds_for(reps, budget_s, sum(v[1][0] for v in times.values()),
                              short_rounds)
            if r > reps:
                break
        # each round starts from the next side (a call right after the user's loop, tens
        # of thousands of dispatches, runs up to 2x slower: measured on A), and Python's
        # garbage is collected before every call, outside its time
        for k in names[r % len(names):] + names[:r % len(names)]:
            fn = fns[k]
            gc.collect()
            t = time.perf_counter()
            outs[k] = fn()
            dt = time.perf_counter() - t
            if r == 0:
                times[k][0] = dt
            else:
                times[k][1].append(dt)
        r += 1
    return {k: (v[0], v[1]) for k, v in times.items()}, outs


def measure(prob: Problem, mode: str, reps: int, peers: dict[str, Any] | None = None,
            budget_s: float = math.inf, short_rounds: int = 0) -> dict[str, Any]:
    """Time one row (``mode`` "fit", "sweep", or "sweep plan=P": the sweep with
    ``plan=P`` forced) and check parity; returns the row, with the plan each jaxgd
    program ran (``"plan"``: "single" for fit, whose one configuration has no
    configuration axis; the sweep's ``SweepResult.plans``).

    ``peers``: ``{"loop": run, "scan": run}`` of an earlier row of the same problem, filled
    in when empty. JAX's compilation caches are cleared first, so every side's first call
    here compiles (jaxgd's sweep cannot reuse the fit row's program, nor the peers theirs)."""
    import jax

    jax.clear_caches()
    cfgs = [prob.fit_config()] if mode == "fit" else prob.configs()
    plan = mode.split("plan=")[1] if "plan=" in mode else "auto"
    peers = {} if peers is None else peers
    loop = peers.setdefault("loop", make_loop(prob))
    scan = peers.setdefault("scan", make_scan(prob))
    fns = {
        "jaxgd": make_fit(prob) if mode == "fit" else make_sweep(prob, plan),
        "loop": lambda: [loop(lr, sd) for lr, sd in cfgs],
        "scan": lambda: [scan(lr, sd) for lr, sd in cfgs],
    }
    times, outs = interleaved(fns, reps, budget_s, short_rounds)
    label = f"F {prob.name} {mode}"
    err_loop = check_parity(label + " vs peer 0a (loop)", outs["jaxgd"], outs["loop"], prob.tol)
    err_scan = check_parity(label + " vs peer 0b (scan)", outs["jaxgd"], outs["scan"], prob.tol)
    row: dict[str, Any] = {"problem": prob.name, "mode": mode, "configs": len(cfgs),
                           "rounds": len(times["jaxgd"][1]),
                           "plan": ",".join(getattr(fns["jaxgd"], "plans", ["single"])),
                           "loop": outs["jaxgd"][0].get("loop", "scan")}
    for k, (first, ts) in times.items():
        run = min(ts)
        row[f"{k}_run_s"] = run
        row[f"{k}_compile_s"] = max(first - run, 0.0)
        row[f"{k}_first_s"] = first
    peer_run = min(row["loop_run_s"], row["scan_run_s"])
    peer_first = min(row["loop_first_s"], row["scan_first_s"])
    row["ratio_run"] = row["jaxgd_run_s"] / peer_run
    row["ratio_first_call"] = row["jaxgd_first_s"] / peer_first
    row["met_run"] = bool(row["ratio_run"] <= TARGET)
    row["met_first_call"] = bool(row["ratio_first_call"] <= TARGET)
    row["parity"] = max(err_loop, err_scan)
    row["note"] = prob.note
    return row


PLAN_COMBOS = (("vmap", "scan"), ("vmap", "host"), ("map", "scan"), ("map", "host"))


def measure_plans(prob: Problem, budget_s: float = math.inf) -> list[dict[str, Any]]:
    """The sweep under every execution plan forced (``plan=`` x ``loop=``, see
    :data:`PLAN_COMBOS`) and at the defaults (``"auto"``), interleaved in one run (JAX's
    caches cleared first): one row per plan with its compile seconds (first call minus the
    fastest timed call), its run seconds, its ratio to the fastest plan's run, whether
    ``auto`` chose it (and the evaluation seconds auto measured for it, NaN when auto
    measured nothing: a run too short for trials keeps the rules), and the parity of its
    final parameters with auto's."""
    import jax

    jax.clear_caches()
    fns = {c: make_sweep(prob, *c) for c in PLAN_COMBOS}
    fns["auto"] = make_sweep(prob)
    times, outs = interleaved(fns, 1, budget_s)
    auto = fns["auto"]
    chose = (auto.plans[0], outs["auto"][0]["loop"])
    measured = {} if auto.trials is None else {
        (r.plan, r.loop): r.eval_s for r in auto.trials.itertuples()}
    fastest = min(min(times[c][1]) for c in PLAN_COMBOS)
    rows = []
    for c in PLAN_COMBOS:
        first, ts = times[c]
        run = min(ts)
        rows.append({"problem": prob.name, "plan": c[0], "loop": c[1],
                     "configs": len(prob.configs()), "compile_s": max(first - run, 0.0),
                     "run_s": run, "first_s": first, "ratio_to_fastest": run / fastest,
                     "auto": c == chose, "auto_eval_s": measured.get(c, math.nan),
                     "parity": check_parity(f"F {prob.name} sweep plan={c[0]} loop={c[1]} "
                                            "vs auto", outs[c], outs["auto"], prob.tol)})
    return rows


def run_f(sizes: FSizes, reps: int | None = None, problems=None,
          overrides: dict[str, dict[str, Any]] | None = None,
          budget_left: Callable[[], float] | None = None,
          echo: Callable[[str], None] = print,
          skipped: list[str] | None = None,
          plan_rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Run problem set F; one row per (problem, fit / sweep); with a ``plan_rows`` list,
    also each problem's sweep under every execution plan (:func:`measure_plans`), its rows
    appended there (while the budget lasts).

    Args:
      sizes: the sizes (``F_SIZES[name]``); ``reps``: interleaved rounds (else its own).
      problems: names from :data:`F_PROBLEMS` (default: all of them).
      overrides: Problem fields to replace, per problem name (the parity test feeds a
        wrong peer loss through it).
      budget_left: seconds left; rows after it runs out are skipped, their names appended
        to ``skipped``.

    Returns:
      The measured rows. Raises :class:`ParityError` if a row's computations differ.
    """
    reps = sizes.reps if reps is None else reps
    problems = F_PROBLEMS if problems is None else tuple(problems)
    bad = [q for q in problems if q not in BUILDERS]
    if bad:
        raise ValueError(f"problems={bad!r}: unknown, choose from {F_PROBLEMS}")
    rows = []
    for name in problems:
        prob, peers = None, {}
        for mode in ("fit", "sweep") if name != "C" else ("sweep",):
            if budget_left is not None and budget_left() <= 0:
                echo(f"F {name} {mode}: skipped (budget)")
                if skipped is not None:
                    skipped.append(f"{name} {mode}")
                continue
            if prob is None:
                prob = BUILDERS[name](sizes)
                if overrides and name in overrides:
                    prob = dataclasses.replace(prob, **overrides[name])
            t = time.perf_counter()
            row = measure(prob, mode, reps, peers, sizes.row_budget_s, sizes.short_rounds)
            rows.append(row)
            _echo_row(echo, row, t)
            if mode == "sweep" and not (budget_left is not None and budget_left() <= 0):
                # the other plan, forced: map against vmap on the same problem
                other = "map" if row["plan"] == "vmap" else "vmap"
                t = time.perf_counter()
                rows.append(measure(prob, f"sweep plan={other}", reps, peers,
                                    sizes.row_budget_s, sizes.short_rounds))
                _echo_row(echo, rows[-1], t)
            if mode == "sweep" and plan_rows is not None and not (
                    budget_left is not None and budget_left() <= 0):
                t = time.perf_counter()
                plan_rows += measure_plans(prob, sizes.row_budget_s)
                echo(f"F {name} plans: " + ", ".join(
                    f"{r['plan']}+{r['loop']} {r['run_s']:.3g} s (compile {r['compile_s']:.3g})"
                    + (" auto" if r["auto"] else "") for r in plan_rows[-len(PLAN_COMBOS):])
                    + f" ({time.perf_counter() - t:.1f} s)")
    return rows


def _echo_row(echo, row, t) -> None:
    echo(f"F {row['problem']} {row['mode']} (N={row['configs']}, plan {row['plan']}): "
         f"jaxgd/peer run {row['ratio_run']:.3g}, first call {row['ratio_first_call']:.3g}, "
         f"parity {row['parity']:.1e} ({time.perf_counter() - t:.1f} s)")


# ----------------------------------------------------------------------------- table

COLUMNS = (("problem", "problem"), ("mode", "mode"), ("configs", "N"), ("plan", "plan"),
           ("loop", "jaxgd loop"), ("rounds", "rounds"),
           ("jaxgd_run_s", "jaxgd run s"), ("loop_run_s", "loop run s"),
           ("scan_run_s", "scan run s"), ("ratio_run", "jaxgd / peer (run)"),
           ("met_run", "<= 1 run"), ("jaxgd_compile_s", "jaxgd compile s"),
           ("loop_compile_s", "loop compile s"), ("scan_compile_s", "scan compile s"),
           ("ratio_first_call", "jaxgd / peer (first call)"),
           ("met_first_call", "<= 1 first call"), ("parity", "parity (rel. max diff)"))


def f_table(rows: list[dict[str, Any]]):
    """The rows as a DataFrame with readable column names (the note last)."""
    import pandas as pd

    df = pd.DataFrame([{lab: r[k] for k, lab in COLUMNS} | {"note": r["note"]}
                       for r in rows])
    for col in ("<= 1 run", "<= 1 first call"):
        if len(df):
            df[col] = df[col].map({True: "met", False: "unmet"})
    return df


PLAN_COLUMNS = (("problem", "problem"), ("configs", "N"), ("plan", "plan"), ("loop", "loop"),
                ("compile_s", "compile s"), ("run_s", "run s"),
                ("ratio_to_fastest", "run / fastest plan"), ("auto", "auto chose"),
                ("auto_eval_s", "auto measured eval s"), ("parity", "parity with auto"))


def plan_table(rows: list[dict[str, Any]]):
    """The plan rows (:func:`measure_plans`) as a DataFrame with readable column names."""
    import pandas as pd

    df = pd.DataFrame([{lab: r[k] for k, lab in PLAN_COLUMNS} for r in rows])
    if len(df):
        df["auto chose"] = df["auto chose"].map({True: "yes", False: ""})
    return df
