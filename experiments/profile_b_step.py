"""What jaxgd's bookkeeping costs per step on problem B (``metrics="batch"``).

The hand-written ``jit(vmap(train))`` floor of the benchmark (Adam, one Feistel order
shared by all 256 learning rates, no bookkeeping), then the same loop with what a jaxgd
step adds, one piece at a time: the batch loss's value (for ``history["batch_loss"]``),
the gradient norm (``history["grad_norm"]``), and the divergence guard (every parameter
of the new step finite, else the step is refused: the parameters and optimizer state
kept by a select). Then ``jaxgd.sweep(metrics="batch")`` and the defaults on the same
problem. Timings are the fastest of 3 calls, in two rounds (the order of a round is
fixed, so compare within a round).

    python -m experiments.profile_b_step
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxgd
from jaxgd.data import feistel_permute, feistel_round_keys

N, D, K, B, EPOCHS = 65536, 64, 256, 256, 3


def hand_loop(x, y, value: bool, grad_norm: bool, guard: bool):
    """The floor with the chosen pieces of a jaxgd step added."""

    def train(lr):
        opt = optax.adam(lr)
        p = {"w": jnp.zeros(D), "b": jnp.zeros(())}

        def epoch(c, e):
            rk = feistel_round_keys(jax.random.key(0), e)

            def step(c, i):
                p, st, sum_loss, sum_norm, active = c
                idx = feistel_permute(rk, i * B + jnp.arange(B, dtype=jnp.int32), N)
                xb, yb = x[idx], y[idx]

                def f(q):
                    return jnp.mean((xb @ q["w"] + q["b"] - yb) ** 2)

                if value:
                    loss, g = jax.value_and_grad(f)(p)
                else:
                    loss, g = jnp.float32(0), jax.grad(f)(p)
                norm = (jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in jax.tree.leaves(g)))
                        if grad_norm else jnp.float32(0))
                u, st2 = opt.update(g, st, p)
                p2 = optax.apply_updates(p, u)
                if guard:
                    ok = active & jnp.isfinite(loss) & jnp.isfinite(norm)
                    ok &= jnp.all(jnp.asarray([jnp.all(jnp.isfinite(a))
                                               for a in jax.tree.leaves(p2)]))
                    p2 = jax.tree.map(lambda a, b: jnp.where(ok, a, b), p2, p)
                    st2 = jax.tree.map(lambda a, b: jnp.where(ok, a, b), st2, st)
                    active = ok
                return (p2, st2, sum_loss + loss, sum_norm + norm, active), None

            return jax.lax.scan(step, c, jnp.arange(N // B))[0], None

        c0 = (p, opt.init(p), jnp.float32(0), jnp.float32(0), jnp.bool_(True))
        return jax.lax.scan(epoch, c0, jnp.arange(EPOCHS))[0][0]

    return jax.jit(jax.vmap(train))


def fastest(fn, reps: int = 3) -> float:
    jax.block_until_ready(fn())  # compile
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return min(ts)


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = (x @ rng.normal(size=D) + 0.1 * rng.normal(size=N)).astype(np.float32)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    lrs = jnp.asarray(np.geomspace(1e-4, 1e-1, K), jnp.float32)

    def loss(p, batch):
        xb, yb = batch
        return jnp.mean((xb @ p["w"] + p["b"] - yb) ** 2)

    grid = {"learning_rate": [float(v) for v in lrs]}

    def sweep(**kw):
        return lambda: jaxgd.sweep(loss, {"w": jnp.zeros(D), "b": jnp.zeros(())}, (x, y),
                                   optimizer="adam", grid=grid, epochs=EPOCHS, batch_size=B,
                                   seed=0, **kw).params

    rows = {"floor (grad only)": hand_loop(xj, yj, False, False, False),
            "+ batch loss value": hand_loop(xj, yj, True, False, False),
            "+ gradient norm": hand_loop(xj, yj, True, True, False),
            "+ divergence guard": hand_loop(xj, yj, True, True, True)}
    calls = {name: (lambda fn=fn: fn(lrs)) for name, fn in rows.items()}
    calls["jaxgd.sweep(metrics='batch')"] = sweep(metrics="batch")
    calls["jaxgd.sweep() defaults"] = sweep()
    flops = 4 * B * D * (N // B) * EPOCHS * K
    for rnd in (1, 2):
        print(f"round {rnd}")
        for name, call in calls.items():
            t = fastest(call)
            print(f"  {name:32s} {1e3 * t:7.1f} ms  {flops / t / 1e9:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
