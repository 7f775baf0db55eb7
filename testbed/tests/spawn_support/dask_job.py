"""A Dask job that cannot finish without worker-to-worker transfers, for
testbed/tests/real_dask.rs. Runs with the test venv's python as a plain
client of the scheduler.

  dask_job.py SCHEDULER NAME_A NAME_B

Waits for the two workers, prints 'WORKER NAME ADDRESS' for each (the
address the worker advertised to the scheduler). Then puts 4 MiB on each
worker (scatter with workers=) and computes, each task pinned to the OTHER
worker (workers=, allow_other_workers=False), so the worker running it must
fetch its input from the other one: a digest of A's data on B, of B's data on
A, and a digest of both on A. Prints 'RESULT TASK GOT' per task with what the
client computed locally as 'EXPECT TASK VALUE', 'FETCHED TO from FROM INPUT
BYTES' for each transfer a worker logged, 'SECONDS STEP N',
'RAN TASK ADDRESS' (where each task's result lives) and 'NANNY WORKER PID'
(the scheduler calling each worker's nanny); exits 1 on any difference.
"""
import hashlib
import os
import random
import sys
import time

from distributed import Client, wait


def make(seed, n):
    return random.Random(seed).randbytes(n)


def digest(b):
    return f"{hashlib.sha256(b).hexdigest()}:{len(b)}"


def digest_both(x, y):
    return f"{hashlib.sha256(x + y).hexdigest()}:{len(x) + len(y)}"


def fetches(dask_worker):
    return [(e["who"], sorted(e["keys"]), e["total"]) for e in dask_worker.transfer_incoming_log]


def main(scheduler, name_a, name_b):
    t0 = time.monotonic()
    client = Client(scheduler, timeout=60)
    client.wait_for_workers(2, timeout=90)
    print("SECONDS connect", round(time.monotonic() - t0, 2), flush=True)
    workers = {w["name"]: addr for addr, w in client.scheduler_info()["workers"].items()}
    for name in (name_a, name_b):
        print("WORKER", name, workers.get(name), flush=True)
    wa, wb = workers[name_a], workers[name_b]

    t1 = time.monotonic()
    data_a, data_b = make(1, 4 << 20), make(2, 4 << 20)
    fa = client.scatter(data_a, workers=[wa])
    fb = client.scatter(data_b, workers=[wb])
    print("SECONDS scatter", round(time.monotonic() - t1, 2), flush=True)

    t2 = time.monotonic()
    pinned = dict(allow_other_workers=False, pure=False)
    tasks = {
        "a-on-b": client.submit(digest, fa, workers=[wb], **pinned),
        "b-on-a": client.submit(digest, fb, workers=[wa], **pinned),
        "both-on-a": client.submit(digest_both, fa, fb, workers=[wa], **pinned),
    }
    wait(list(tasks.values()), timeout=90)
    got = dict(zip(tasks, client.gather(list(tasks.values()))))
    print("SECONDS compute", round(time.monotonic() - t2, 2), flush=True)
    expect = {"a-on-b": digest(data_a), "b-on-a": digest(data_b), "both-on-a": digest_both(data_a, data_b)}
    ok = True
    for task in tasks:
        print("EXPECT", task, expect[task], flush=True)
        print("RESULT", task, got[task], flush=True)
        ok &= got[task] == expect[task]
    # Each worker's own record of what it fetched from which worker.
    label = {fa.key: "a", fb.key: "b"}
    for worker, fetched in sorted(client.run(fetches).items()):
        for who, keys, total in fetched:
            for key in keys:
                print("FETCHED", worker, "from", who, label.get(key, key), total, flush=True)
    ran = client.who_has(list(tasks.values()))
    for task, future in tasks.items():
        print("RAN", task, " ".join(sorted(ran[future.key])), flush=True)
    # The scheduler calls each nanny, the process that spawned its worker.
    for worker, pid in sorted(client.run(os.getpid, nanny=True).items()):
        print("NANNY", worker, pid, flush=True)
    client.close()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(*sys.argv[1:4])
