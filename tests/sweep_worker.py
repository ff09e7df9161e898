"""A sweep run in its own process, for the device, multi-process and resume tests.

    python tests/sweep_worker.py --out DIR [--devices 4] [--process-id I --num-processes N
        --port P] [--epochs E] [--chunk-size C] [--batch-size B] [--report FILE]
        [--progress all|lead] [--model-state] [--track KIND:DIR]

JAX options that must come before any JAX operation (forced host devices, the
distributed runtime) are set here, first thing. With ``--report`` a JSON summary
(device and process counts, how the outputs were sharded, the table) is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

N, D = 23, 3
LRS = [0.01, 0.05, 0.2]
SEEDS = [0, 1, 2]


def mse(params, batch):
    import jax.numpy as jnp

    xb, yb = batch
    return jnp.mean((xb @ params["w"] + params["b"] - yb) ** 2)


def bn_mse(params, batch, *, state, train):
    """mse of a BatchNorm-like linear model: the prediction is centred by the batch mean
    of ``x @ w`` in training steps (the running mean in evaluation passes); the state holds
    that running mean (it depends on each configuration's ``w``) and a step count."""
    import jax
    import jax.numpy as jnp

    xb, yb = batch
    h = xb @ params["w"]
    if train:
        mu = jnp.mean(h)
        new = {"mean": 0.8 * state["mean"] + 0.2 * jax.lax.stop_gradient(mu),
               "steps": state["steps"] + 1.0}
    else:
        mu, new = state["mean"], state
    return jnp.mean((h - mu + params["b"] - yb) ** 2), new


def state0():
    import jax.numpy as jnp

    return {"mean": jnp.zeros((), jnp.float32), "steps": jnp.zeros((), jnp.float32)}


def problem():
    import jax.numpy as jnp
    import numpy as np

    r = np.random.default_rng(0)
    x = r.normal(size=(N, D))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.1 * r.normal(size=N)

    p0 = {"w": jnp.asarray([0.1, 0.0, -0.1], jnp.float32), "b": jnp.zeros((), jnp.float32)}
    return mse, p0, (x.astype(np.float32), y.astype(np.float32))


def grid(batch_sizes=(None, 5), lrs=LRS, seeds=SEEDS):
    # 3 x 2 x 3 = 18 configurations: 2 groups of 3 seeds x 3 learning rates; on 4
    # devices each block of width 3 is padded to 4
    return {"learning_rate": list(lrs), "batch_size": list(batch_sizes), "seed": list(seeds)}


def run_sweep(out=None, epochs=4, chunk_size=None, batch_sizes=(None, 5), lrs=LRS,
              seeds=SEEDS, model_state=False, **kw):
    """The sweep; ``model_state``: the BatchNorm-like loss ``bn_mse`` with its state."""
    import jaxgd

    mse, p0, data = problem()
    if model_state:
        mse, kw = bn_mse, {**kw, "state": state0()}
    return jaxgd.sweep(mse, p0, data, grid=grid(batch_sizes, lrs, seeds), epochs=epochs,
                       chunk_size=chunk_size, out=out, **kw)


def search_of(name):
    """The worker's adaptive searches: halving ranks across both batch-size groups; PBT
    runs one group (give --batch-size 5)."""
    from jaxgd import search

    if name == "halving":
        return search.Halving(eta=2, min_epochs=1)
    return search.PBT(interval=1, quantile=0.25, seed=3)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--devices", type=int, default=None)
    ap.add_argument("--process-id", type=int, default=None)
    ap.add_argument("--num-processes", type=int, default=1)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--batch-size", default="full,5")
    ap.add_argument("--lrs", default=None)
    ap.add_argument("--report", default=None)
    ap.add_argument("--model-state", action="store_true",
                    help="the BatchNorm-like loss bn_mse, with model state")
    ap.add_argument("--progress", choices=("all", "lead"), default=None,
                    help="progress bars: asked for by every process, or by process 0 only")
    ap.add_argument("--block-rows", type=int, default=None,
                    help="history blocks of this many evaluations (several program calls)")
    ap.add_argument("--search", choices=("halving", "pbt"), default=None,
                    help="an adaptive search (search_of)")
    ap.add_argument("--track", default=None, help="track= of the sweep (every process)")
    a = ap.parse_args(argv)

    import jax
    import numpy as np

    if a.devices:
        jax.config.update("jax_num_cpu_devices", a.devices)
    if a.process_id is not None:
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{a.port}", num_processes=a.num_processes,
            process_id=a.process_id, coordinator_bind_address=f"127.0.0.1:{a.port}",
            initialization_timeout=60, heartbeat_timeout_seconds=10,
            shutdown_timeout_seconds=10)

    import jaxgd  # noqa: F401

    if a.block_rows:
        prog_mod = sys.modules["jaxgd.program"]
        prog_mod.HISTORY_BLOCK_BYTES, prog_mod.HISTORY_MIN_ROWS = 1, a.block_rows
    sweep_mod = sys.modules["jaxgd.sweep"]  # (jaxgd.sweep is the function)

    shardings = []
    prog_mod = sys.modules["jaxgd.program"]
    real = prog_mod.compiled_program

    def spy(spec, rows):
        prog = real(spec, rows)

        def call(*args):
            res = prog.block(*args)
            leaf = res[1].reason
            record = {"devices": len(leaf.sharding.device_set),
                      "addressable_shards": len(leaf.addressable_shards),
                      "spec": str(getattr(leaf.sharding, "spec", None)),
                      "shape": list(leaf.shape)}
            if res[1].state is not None:  # the model state the block returns
                st = res[1].state["mean"]
                record["state_spec"] = str(getattr(st.sharding, "spec", None))
                record["state_shape"] = list(st.shape)
            shardings.append(record)
            return res

        return prog._replace(block=call)

    prog_mod.compiled_program = spy
    bs = [None if b == "full" else int(b) for b in a.batch_size.split(",")]
    lrs = [float(v) for v in a.lrs.split(",")] if a.lrs else LRS
    progress = a.progress == "all" or (a.progress == "lead" and jax.process_index() == 0)
    extra = {"search": search_of(a.search)} if a.search else {}
    if a.track:
        extra["track"] = a.track
    sw = run_sweep(out=a.out, epochs=a.epochs, chunk_size=a.chunk_size, batch_sizes=bs,
                   lrs=lrs, progress=progress, model_state=a.model_state, **extra)
    mesh = sweep_mod.default_mesh()
    if a.report and jax.process_index() == 0:
        info = {
            "device_count": jax.device_count(),
            "local_device_count": jax.local_device_count(),
            "process_count": jax.process_count(),
            "default_mesh_devices": None if mesh is None else int(mesh.devices.size),
            "shardings": shardings,
            "table": json.loads(sw.table.to_json(orient="records")),
            "loss": sw.history["loss"].tolist(),
            "params_w": sw.params["w"].tolist(),
            "lineage": None if sw.lineage is None else sw.lineage.to_numpy(float).tolist(),
            "params_b": sw.params["b"].tolist(),
            "state": None if sw.state is None else {k: np.asarray(v).tolist()
                                                    for k, v in sw.state.items()},
        }
        with open(a.report + ".tmp", "w") as f:
            json.dump(info, f)
        os.replace(a.report + ".tmp", a.report)
    print("worker done", jax.process_index(), flush=True)
    if a.process_id is not None:
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
