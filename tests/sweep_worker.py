"""A sweep run in its own process, for the device, multi-process and resume tests.

    python tests/sweep_worker.py --out DIR [--devices 4] [--process-id I --num-processes N
        --port P] [--epochs E] [--chunk-size C] [--batch-size B] [--report FILE]
        [--progress all|lead] [--model-state] [--mesh C,D] [--n N]
        [--checkpoint-every K|DURATION] [--fit] [--track KIND:DIR] [--try-plans]

JAX options that must come before any JAX operation (forced host devices, the
distributed runtime) are set here, first thing. With ``--report`` a JSON summary
(device and process counts, how the outputs were sharded, the table) is written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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


def problem(n=N):
    import jax.numpy as jnp
    import numpy as np

    r = np.random.default_rng(0)
    x = r.normal(size=(n, D))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.1 * r.normal(size=n)

    p0 = {"w": jnp.asarray([0.1, 0.0, -0.1], jnp.float32), "b": jnp.zeros((), jnp.float32)}
    return mse, p0, (x.astype(np.float32), y.astype(np.float32))


def grid(batch_sizes=(None, 5), lrs=LRS, seeds=SEEDS):
    # 3 x 2 x 3 = 18 configurations: 2 groups of 3 seeds x 3 learning rates; on 4
    # devices each block of width 3 is padded to 4
    return {"learning_rate": list(lrs), "batch_size": list(batch_sizes), "seed": list(seeds)}


def run_sweep(out=None, epochs=4, chunk_size=None, batch_sizes=(None, 5), lrs=LRS,
              seeds=SEEDS, model_state=False, n=N, **kw):
    """The sweep; ``model_state``: the BatchNorm-like loss ``bn_mse`` with its state;
    ``n`` samples."""
    import jaxgd

    mse, p0, data = problem(n)
    if model_state:
        mse, kw = bn_mse, {**kw, "state": state0()}
    return jaxgd.sweep(mse, p0, data, grid=grid(batch_sizes, lrs, seeds), epochs=epochs,
                       chunk_size=chunk_size, out=out, **kw)


LONG_FIT = {"patience": None, "record_steps": False}  # the worker's fit: a long run


def run_fit(out=None, epochs=4, batch_size=1, lr=LRS[0], checkpoint_every=None, key=1,
            patience=50, record_steps=True, eval_every=1):
    """``fit`` of one configuration of the sweep's problem (the BatchNorm-like loss, so
    the model state is checkpointed too; patience stops it early for some settings)."""
    import jaxgd

    _, p0, data = problem()
    return jaxgd.fit(bn_mse, p0, data, state=state0(), hparams={"learning_rate": lr},
                     batch_size=batch_size, epochs=epochs, key=key, record_steps=record_steps,
                     patience=patience, eval_every=eval_every, out=out,
                     checkpoint_every=checkpoint_every)


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
    ap.add_argument("--mesh", default=None,
                    help="C,D: a ('config', 'data') mesh of all devices in that shape")
    ap.add_argument("--data-across", action="store_true",
                    help="with --mesh: lay the data axis across the processes")
    ap.add_argument("--n", type=int, default=N, help="samples of the problem")
    ap.add_argument("--checkpoint-every", default=None,
                    help="checkpoint_every (an int: evaluations; else a duration)")
    ap.add_argument("--fit", action="store_true",
                    help="fit(...) of the first configuration (run_fit) instead of a sweep")
    ap.add_argument("--eval-every", type=int, default=1)
    ap.add_argument("--track", default=None, help="track= of the sweep (every process)")
    ap.add_argument("--try-plans", action="store_true",
                    help="plan='auto' measures every candidate plan, however short the run")
    a = ap.parse_args(argv)

    import jax
    import numpy as np

    if a.devices:
        jax.config.update("jax_num_cpu_devices", a.devices)
    if a.process_id is not None:
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{a.port}", num_processes=a.num_processes,
            process_id=a.process_id, coordinator_bind_address=f"127.0.0.1:{a.port}",
            initialization_timeout=60,
            # a test whose processes end on purpose one after the other (each just after
            # its own checkpoint) gives the later one time to get there on a loaded machine
            heartbeat_timeout_seconds=int(os.environ.get("JAXGD_TEST_HEARTBEAT", "10")),
            shutdown_timeout_seconds=10)

    import jaxgd  # noqa: F401

    if a.block_rows:
        prog_mod = sys.modules["jaxgd.program"]
        prog_mod.HISTORY_BLOCK_BYTES, prog_mod.HISTORY_MIN_ROWS = 1, a.block_rows
    sweep_mod = sys.modules["jaxgd.sweep"]  # (jaxgd.sweep is the function)
    if a.try_plans:
        sys.modules["jaxgd.autoplan"].TRIAL_SHARE = 1e9  # every candidate, always
        sys.modules["jaxgd.autoplan"].MIN_UPDATE_FLOPS = 0.0  # this tiny model too

    shardings = []
    prog_mod = sys.modules["jaxgd.program"]
    real = prog_mod.compiled_program

    def spy(spec, rows):
        prog = real(spec, rows)

        def call(*args):
            res = prog.block(*args)
            leaf = res[0].reason  # the state the block returns (its outputs: None)
            record = {"devices": len(leaf.sharding.device_set),
                      "addressable_shards": len(leaf.addressable_shards),
                      "spec": str(getattr(leaf.sharding, "spec", None)),
                      "shape": list(leaf.shape)}
            if res[0].model_state is not None:  # the model state the block returns
                st = res[0].model_state["mean"]
                record["state_spec"] = str(getattr(st.sharding, "spec", None))
                record["state_shape"] = list(st.shape)
            if a.mesh:  # the per-device shapes of the compiled program's arrays
                text = prog.block.lower(*args).compile().as_text()
                record["hlo_shapes"] = sorted(set(re.findall(r"f32\[[\d,]*\]", text)))
            shardings.append(record)
            return res

        return prog._replace(block=call)

    prog_mod.compiled_program = spy
    engine_mod = sys.modules["jaxgd.engine"]
    real_blocks = engine_mod.run_blocks

    def spy_blocks(prog, spec, st, start, end, *args, **kw):
        print(f"call from {start} to {end}", flush=True)  # a resumed call starts late
        return real_blocks(prog, spec, st, start, end, *args, **kw)

    engine_mod.run_blocks = spy_blocks
    stop_at = os.environ.get("JAXGD_TEST_STOP_AT_CHECKPOINT")
    if stop_at:  # end every process just after its n-th checkpoint (as if killed there)
        ckpt_mod = sys.modules["jaxgd.checkpoint"]
        real_saved, seen = ckpt_mod.Checkpointer.saved, [0]

        def saved(self):
            real_saved(self)
            seen[0] += 1
            if seen[0] == int(stop_at):
                if jax.process_count() > 1:  # every process past this checkpoint, then
                    # all end together (a process left alone in the job is aborted by
                    # the coordination service, whatever it was doing)
                    from jax.experimental import multihost_utils

                    multihost_utils.sync_global_devices("jaxgd-test-stop")
                os._exit(3)

        ckpt_mod.Checkpointer.saved = saved
    every = a.checkpoint_every
    if every is not None:
        every = int(every) if every.isdigit() else every
    bs = [None if b == "full" else int(b) for b in a.batch_size.split(",")]
    lrs = [float(v) for v in a.lrs.split(",")] if a.lrs else LRS
    if a.fit:
        run_fit(a.out, a.epochs, bs[0], lrs[0], every, **LONG_FIT, eval_every=a.eval_every)
        print("worker done", flush=True)
        return 0
    progress = a.progress == "all" or (a.progress == "lead" and jax.process_index() == 0)
    extra = {"search": search_of(a.search)} if a.search else {}
    if a.mesh:
        shape = tuple(int(v) for v in a.mesh.split(","))
        devs = np.asarray(jax.devices())  # process 0's devices first
        devs = devs.reshape(shape[::-1]).T if a.data_across else devs.reshape(shape)
        extra["mesh"] = jax.sharding.Mesh(devs, ("config", "data"))
    if every is not None:
        extra["checkpoint_every"] = every
    if a.track:
        extra["track"] = a.track
    sw = run_sweep(out=a.out, epochs=a.epochs, chunk_size=a.chunk_size, batch_sizes=bs,
                   lrs=lrs, progress=progress, model_state=a.model_state, n=a.n, **extra)
    mesh = sweep_mod.default_mesh()
    if a.report and jax.process_index() == 0:
        info = {
            "device_count": jax.device_count(),
            "local_device_count": jax.local_device_count(),
            "process_count": jax.process_count(),
            "default_mesh_devices": None if mesh is None else int(mesh.devices.size),
            "shardings": shardings,
            "mesh_processes": (None if "mesh" not in extra else
                               [[d.process_index for d in row]
                                for row in extra["mesh"].devices.tolist()]),
            "table": json.loads(sw.table.to_json(orient="records")),
            "plans": sw.plans,
            "plan_trials": (None if sw.plan_trials is None
                            else json.loads(sw.plan_trials.to_json(orient="records"))),
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
