"""Host-fed sweeps in one of two processes (``jax.distributed``, 2 CPU devices each), for
tests/test_multiprocess.py: a (config, data) mesh whose data axis spans the processes, so
each process supplies half of every batch.

    python tests/feed_worker.py PROCESS_ID PORT DIR

``DIR/x.bin`` holds :func:`problem`'s ``x`` as a float32 memmap. Writes ``DIR/rI.json``:
the tables of a memmap sweep and of an iterable sweep (each process's iterable yields its
half of every batch), the rows this process gathered and yielded, the shapes of its host
blocks, the errors of iterables whose shares do not make one batch, and the table of an
iterable sweep on a mesh whose data axis lies within each process (whole batches).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

B = 16  # samples per batch, split 8 + 8 between the processes
GRID = {"learning_rate": [0.01, 0.05, 1.0], "seed": [0, 1]}
KW = dict(batch_size=B, steps=25, eval_every=2, metrics="batch")


def problem(n=104):
    """(x, y) of ``n`` samples (104: batches of 16, the last of an epoch of 8)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return x, x @ np.array([1.0, -2.0, 0.5], np.float32)


def loss(p, b):
    """A squared error weighted by the sample's position in the batch: rows of a batch
    placed out of order change it."""
    import jax.numpy as jnp

    err = (b[0] @ p["w"] - b[1]) ** 2
    return jnp.mean(err * (1.0 + jnp.arange(err.shape[0]) / err.shape[0]))


def p0():
    import jax.numpy as jnp

    return {"w": jnp.zeros(3)}


class Share:
    """A per-process DataLoader over ``x, y`` in order: process ``pid``'s ``size`` rows of
    every batch of B (its half: rows ``pid * 8`` to ``pid * 8 + 8``)."""

    def __init__(self, x, y, pid, size=B // 2, steps=25):
        self.x, self.y, self.pid, self.size, self.steps = x, y, pid, size, steps
        self.yielded: list[int] = []

    def __iter__(self):
        for t in range(self.steps):
            s = (t % (len(self.x) // B)) * B + self.pid * (B // 2)
            self.yielded.append(self.size)
            yield self.x[s:s + self.size], self.y[s:s + self.size]


def main(pid: int, port: int, tmp: str) -> None:
    import jax

    jax.config.update("jax_num_cpu_devices", 2)
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
        coordinator_bind_address=f"127.0.0.1:{port}", initialization_timeout=60,
        heartbeat_timeout_seconds=10, shutdown_timeout_seconds=10)
    from jax.sharding import Mesh

    import jaxgd
    from jaxgd import feed

    gathered, blocks = [], []
    real_gather, real_block = feed.gather, feed.Feeder.host_block

    def gather(a, idx, out):  # the rows read from the host arrays
        gathered.append(len(idx))
        return real_gather(a, idx, out)

    def host_block(self, *a):  # the host blocks this process built
        b = real_block(self, *a)
        blocks.append(list(jax.tree.leaves(b[0])[0].shape))
        return b

    feed.gather, feed.Feeder.host_block = gather, host_block
    devs = np.asarray(jax.devices())  # process 0's first: data axis = the processes
    mesh = Mesh(devs.reshape(2, 2).T, ("config", "data"))
    x, y = problem()
    mm = np.memmap(os.path.join(tmp, "x.bin"), np.float32, "r", shape=x.shape)
    a = jaxgd.sweep(loss, p0(), (mm, y), grid=GRID, mesh=mesh, feed="host", **KW)
    info = {"memmap": {"gathered": sum(gathered), "blocks": blocks}}
    blocks = []
    x96, y96 = problem(96)
    src = Share(x96, y96, pid)
    b = jaxgd.sweep(loss, p0(), src, grid=GRID, mesh=mesh, shuffle=False, **KW)
    info["iterable"] = {"yielded": src.yielded, "blocks": blocks}
    info["tables"] = [json.loads(r.table.to_json(orient="records")) for r in (a, b)]
    blocks = []
    compiled = jaxgd.program.compiled_program.cache_info().misses
    try:  # process 1 yields 6 rows of each batch, process 0 8
        jaxgd.sweep(loss, p0(), Share(x96, y96, pid, 8 - 2 * pid), grid=GRID, mesh=mesh,
                    shuffle=False, **KW)
    except ValueError as e:
        info["error"] = str(e)
    # the data axis within each process (configurations across them): every process's
    # devices hold every row, so every iterable yields whole batches, the same ones
    within = Mesh(devs.reshape(2, 2), ("config", "data"))
    try:  # process 1's batches are process 0's reversed
        jaxgd.sweep(loss, p0(), Share(x96[::-1] if pid else x96, y96, 0, B), grid=GRID,
                    mesh=within, shuffle=False, **KW)
    except ValueError as e:
        info["error_within"] = str(e)
    info["compiled"] = jaxgd.program.compiled_program.cache_info().misses - compiled
    c = jaxgd.sweep(loss, p0(), Share(x96, y96, 0, B), grid=GRID, mesh=within, shuffle=False,
                    **KW)
    info["tables"].append(json.loads(c.table.to_json(orient="records")))
    info["within_blocks"] = blocks
    with open(os.path.join(tmp, f"r{pid}.json.tmp"), "w") as f:
        json.dump(info, f)
    os.replace(os.path.join(tmp, f"r{pid}.json.tmp"), os.path.join(tmp, f"r{pid}.json"))
    print("feed worker done", pid, flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
