"""Ray's ``ray microbenchmark`` set, for rayref (any transport) and for real Ray.

    python -m benchmarks.microbenchmark                              # rayref, a real local cluster (gRPC)
    python -m benchmarks.microbenchmark --transport sim              # rayref's simulator
    python -m benchmarks.microbenchmark --backend ray                # real Ray, if `import ray` works
    python -m benchmarks.microbenchmark --compare                    # both, then a rayref/ray ratio table
    python -m benchmarks.microbenchmark --filter "actor"             # only benchmarks whose name matches

Each benchmark runs a small operation repeatedly (after a short warm-up) for ``--trials`` trials of
``--duration`` wall seconds and prints ``<name> per second <mean> +- <std>`` as Ray's
``ray_perf.py`` does (ops/s; GiB/s for the ``gigabytes`` lines). Timings are always *wall clock*:
on the sim transport that is the wall time of simulating the cluster in this process, not the
virtual time the simulated cluster took (that is shown beside it, as "virtual ops/s").

While a sim cluster is connected, ``time.perf_counter`` in this process reads *virtual* time;
the real clock is captured at import, before anything connects.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

real_clock = time.perf_counter  # captured before any cluster connects (connect patches time.*)

import numpy as np  # noqa: E402

GiB = 1024**3
MiB = 1024**2


# --------------------------------------------------------------------------- backends

class Backend:
    """What the benchmarks need of a Ray-like module: ``init`` its way, the API as ``self.ray``."""

    name = "?"

    def __init__(self, args):
        self.args = args
        self.ray = None

    def init(self) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        self.ray.shutdown()

    def virtual_now(self) -> float | None:
        """Virtual seconds of a simulated cluster, or None on a real one."""
        return None

    def describe(self) -> str:
        return self.name


class RayrefBackend(Backend):
    name = "rayref"

    def __init__(self, args):
        super().__init__(args)
        import rayref
        self.ray = rayref

    def init(self) -> None:
        self.ray.init(num_cpus=self.args.num_cpus, seed=self.args.seed, transport=self.args.transport)

    def virtual_now(self) -> float | None:
        from rayref._private import worker
        transport = worker.transport()
        cluster = getattr(transport, "cluster", None)
        return getattr(cluster, "now", None)

    def describe(self) -> str:
        return f"rayref {self.ray.__version__} (transport={self.args.transport})"


class RayBackend(Backend):
    name = "ray"

    def __init__(self, args):
        super().__init__(args)
        import ray
        self.ray = ray

    def init(self) -> None:
        import logging
        self.ray.init(num_cpus=self.args.num_cpus, include_dashboard=False, logging_level=logging.ERROR,
                      log_to_driver=False)

    def describe(self) -> str:
        return f"ray {self.ray.__version__}"


def ray_import_error() -> str | None:
    try:
        import ray  # noqa: F401
    except Exception as error:  # noqa: BLE001 - any failure means "no Ray here"
        return f"{type(error).__name__}: {error}"
    return None


# --------------------------------------------------------------------------- remote definitions

def definitions(ray):
    """The remote functions and classes, defined inside a function so cloudpickle ships them by value
    (Ray's workers then need not import this module)."""

    @ray.remote
    def small_value():
        return b"ok"

    @ray.remote
    def do_put_small():
        for _ in range(100):
            ray.put(0)

    @ray.remote
    class Actor:
        def small_value(self):
            return b"ok"

        def small_value_arg(self, x):
            return b"ok"

        def small_value_batch(self, n):
            ray.get([small_value.remote() for _ in range(n)])

    @ray.remote
    class AsyncActor:
        async def small_value(self):
            return b"ok"

        async def small_value_with_arg(self, x):
            return b"ok"

    @ray.remote(num_cpus=0)
    class Client:
        def __init__(self, servers):
            if not isinstance(servers, list):
                servers = [servers]
            self.servers = servers

        def small_value_batch(self, n):
            results = []
            for s in self.servers:
                results.extend([s.small_value.remote() for _ in range(n)])
            ray.get(results)

        def small_value_batch_arg(self, n):
            x = ray.put(0)
            results = []
            for s in self.servers:
                results.extend([s.small_value_arg.remote(x) for _ in range(n)])
            ray.get(results)

    @ray.remote
    def call_actors(actors, n):
        ray.get([actors[i % len(actors)].small_value.remote() for i in range(n)])

    @ray.remote
    def call_async_actors(actors, n):
        ray.get([actors[i % len(actors)].small_value.remote() for i in range(n)])

    return {"small_value": small_value, "do_put_small": do_put_small, "Actor": Actor, "AsyncActor": AsyncActor,
            "Client": Client, "call_actors": call_actors, "call_async_actors": call_async_actors}


# --------------------------------------------------------------------------- timing

class Runner:
    def __init__(self, backend: Backend, args):
        self.backend = backend
        self.args = args
        self.results: list[dict] = []
        self.pattern = re.compile(args.filter) if args.filter else None

    def wanted(self, name: str) -> bool:
        return self.pattern is None or bool(self.pattern.search(name))

    def timeit(self, name: str, fn, multiplier: float = 1, unit: str = "ops/s") -> None:
        """Ray's ``timeit``: warm up, then ``trials`` trials of at least ``duration`` wall seconds each."""
        a = self.args
        start = real_clock()
        while True:
            fn()
            if real_clock() - start >= a.warmup:
                break
        stats, virtual = [], []
        for _ in range(a.trials):
            v0 = self.backend.virtual_now()
            count, start = 0, real_clock()
            while True:
                fn()
                count += 1
                elapsed = real_clock() - start
                if elapsed >= a.duration:
                    break
            stats.append(multiplier * count / elapsed)
            v1 = self.backend.virtual_now()
            if v0 is not None and v1 is not None and v1 > v0:
                virtual.append(multiplier * count / (v1 - v0))
        self.record(name, stats, unit, virtual)

    def record(self, name: str, stats: list[float], unit: str, virtual: list[float] = (), note: str = "") -> None:
        mean = sum(stats) / len(stats)
        std = math.sqrt(sum((s - mean) ** 2 for s in stats) / len(stats))
        row = {"name": name, "mean": mean, "std": std, "unit": unit, "trials": stats, "error": None, "note": note}
        if virtual:
            row["virtual_mean"] = sum(virtual) / len(virtual)
        self.results.append(row)
        per = "per second" if unit == "ops/s" else unit
        extra = f"   [virtual {row['virtual_mean']:,.1f} {unit}]" if virtual else ""
        print(f"{name} {per} {mean:,.2f} +- {std:,.2f}{extra}{'   ' + note if note else ''}", flush=True)

    def failed(self, name: str, error: BaseException) -> None:
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self.results.append({"name": name, "mean": None, "std": None, "unit": "", "trials": [],
                             "error": f"{type(error).__name__}: {error}", "traceback": text})
        print(f"{name} FAILED: {type(error).__name__}: {error}", flush=True)
        if self.args.verbose:
            print(text, file=sys.stderr, flush=True)

    def run(self, name: str, body) -> None:
        """Run one benchmark's setup + timing; a failure is recorded and the next one goes on."""
        if not self.wanted(name):
            return
        try:
            body()
        except Exception as error:  # noqa: BLE001 - report and go on
            self.failed(name, error)
        gc.collect()


# --------------------------------------------------------------------------- the benchmarks

INIT_NAME = "init + first task"


def bench_init_first_task(runner: Runner, defs_holder: dict) -> None:
    """Time from ``init()`` to the first ``get()`` of a task's result; the last cluster stays up for the rest."""
    backend, ray = runner.backend, runner.backend.ray
    trials = runner.args.init_trials if runner.args.init_trials is not None else (5 if backend.name == "rayref" else 1)
    times = []
    for i in range(trials):
        start = real_clock()
        backend.init()
        defs = definitions(ray)
        ray.get(defs["small_value"].remote())
        times.append(real_clock() - start)
        defs_holder.update(defs)
        if i < trials - 1:
            backend.shutdown()
            defs_holder.clear()
            gc.collect()
    if runner.wanted(INIT_NAME):
        runner.record(INIT_NAME, [1.0 / t for t in times], "ops/s",
                      note=f"({1000 * sum(times) / len(times):,.1f} ms each, {trials} trial(s))")


def run_all(runner: Runner) -> None:
    a = runner.args
    backend = runner.backend
    ray = backend.ray
    defs: dict = {}
    try:
        bench_init_first_task(runner, defs)
    except Exception as error:  # noqa: BLE001
        runner.failed(INIT_NAME, error)
        if not defs:
            return
    small_value, Actor, AsyncActor, Client = defs["small_value"], defs["Actor"], defs["AsyncActor"], defs["Client"]
    batch = a.batch
    n_par = a.n

    # ---- objects
    def get_calls():
        value = ray.put(0)
        runner.timeit("single client get calls", lambda: ray.get(value))
    runner.run("single client get calls", get_calls)

    runner.run("single client put calls", lambda: runner.timeit("single client put calls", lambda: ray.put(0)))

    def multi_put():
        do_put_small = defs["do_put_small"]
        runner.timeit("multi client put calls", lambda: ray.get([do_put_small.remote() for _ in range(10)]), 1000)
    runner.run("multi client put calls", multi_put)

    def put_gigabytes():
        arr = np.zeros(a.big_mib * MiB, dtype=np.uint8)
        runner.timeit("single client put gigabytes", lambda: ray.put(arr), arr.nbytes / GiB, "GiB/s")
    runner.run("single client put gigabytes", put_gigabytes)

    def get_gigabytes():
        ref = ray.put(np.zeros(a.big_mib * MiB, dtype=np.uint8))

        def get_big():
            value = ray.get(ref)
            assert value.nbytes == a.big_mib * MiB
        runner.timeit("single client get gigabytes (numpy)", get_big, a.big_mib * MiB / GiB, "GiB/s")
    runner.run("single client get gigabytes (numpy)", get_gigabytes)

    def wait_1k():
        def wait_multiple_refs():
            not_ready = [small_value.remote() for _ in range(1000)]
            for _ in range(1000):
                _ready, not_ready = ray.wait(not_ready)
        runner.timeit("single client wait 1k refs", wait_multiple_refs)
    runner.run("single client wait 1k refs", wait_1k)

    # ---- tasks
    runner.run("single client tasks sync", lambda: runner.timeit(
        "single client tasks sync", lambda: ray.get(small_value.remote())))
    runner.run("single client tasks async", lambda: runner.timeit(
        "single client tasks async", lambda: ray.get([small_value.remote() for _ in range(batch)]), batch))

    def multi_tasks():
        actors = [Actor.remote() for _ in range(n_par)]
        runner.timeit("multi client tasks async", lambda: ray.get([x.small_value_batch.remote(batch)
                                                                   for x in actors]), batch * n_par)
    runner.run("multi client tasks async", multi_tasks)

    # ---- actors
    def actor_sync():
        x = Actor.remote()
        runner.timeit("1:1 actor calls sync", lambda: ray.get(x.small_value.remote()))
    runner.run("1:1 actor calls sync", actor_sync)

    def actor_async():
        x = Actor.remote()
        runner.timeit("1:1 actor calls async", lambda: ray.get([x.small_value.remote() for _ in range(batch)]),
                      batch)
    runner.run("1:1 actor calls async", actor_async)

    def actor_concurrent():
        x = Actor.options(max_concurrency=16).remote()
        runner.timeit("1:1 actor calls concurrent", lambda: ray.get([x.small_value.remote()
                                                                      for _ in range(batch)]), batch)
    runner.run("1:1 actor calls concurrent", actor_concurrent)

    def one_to_n():
        servers = [Actor.remote() for _ in range(n_par)]
        client = Client.remote(servers)
        runner.timeit("1:n actor calls async", lambda: ray.get(client.small_value_batch.remote(batch)),
                      batch * n_par)
    runner.run("1:n actor calls async", one_to_n)

    def n_to_n():
        call_actors = defs["call_actors"]
        actors = [Actor.remote() for _ in range(n_par)]
        runner.timeit("n:n actor calls async", lambda: ray.get([call_actors.remote(actors, batch)
                                                                for _ in range(n_par)]), batch * n_par)
    runner.run("n:n actor calls async", n_to_n)

    def n_to_n_arg():
        servers = [Actor.remote() for _ in range(n_par)]
        clients = [Client.remote(s) for s in servers]
        runner.timeit("n:n actor calls with arg async", lambda: ray.get([c.small_value_batch_arg.remote(batch)
                                                                         for c in clients]), batch * n_par)
    runner.run("n:n actor calls with arg async", n_to_n_arg)

    def async_actor_sync():
        x = AsyncActor.remote()
        runner.timeit("1:1 async-actor calls sync", lambda: ray.get(x.small_value.remote()))
    runner.run("1:1 async-actor calls sync", async_actor_sync)

    def async_actor_async():
        x = AsyncActor.remote()
        runner.timeit("1:1 async-actor calls async", lambda: ray.get([x.small_value.remote()
                                                                       for _ in range(batch)]), batch)
    runner.run("1:1 async-actor calls async", async_actor_async)

    def async_n_to_n():
        call_async_actors = defs["call_async_actors"]
        actors = [AsyncActor.remote() for _ in range(n_par)]
        runner.timeit("n:n async-actor calls async", lambda: ray.get([call_async_actors.remote(actors, batch)
                                                                      for _ in range(n_par)]), batch * n_par)
    runner.run("n:n async-actor calls async", async_n_to_n)

    backend.shutdown()


# --------------------------------------------------------------------------- driving one backend / both

def run_backend(args) -> dict:
    backend_class = RayrefBackend if args.backend == "rayref" else RayBackend
    backend = backend_class(args)
    print(f"== {backend.describe()}: num_cpus={args.num_cpus}, {args.trials} trial(s) x {args.duration:g} s, "
          f"warm-up {args.warmup:g} s, batch {args.batch}, n={args.n}", flush=True)
    runner = Runner(backend, args)
    start = real_clock()
    run_all(runner)
    total = real_clock() - start
    print(f"== {backend.name} done in {total:.1f} s wall", flush=True)
    return {"backend": backend.name, "describe": backend.describe(), "wall_s": total, "results": runner.results}


def print_table(run: dict, file=sys.stdout) -> None:
    print(f"\n{run['describe']}", file=file)
    has_virtual = any(r.get("virtual_mean") for r in run["results"])
    head = f"{'benchmark':<38} {'wall rate':>14} {'+-':>10} {'unit':<6}"
    if has_virtual:
        head += f" {'virtual rate (modeled)':>24}"
    print(head, file=file)
    print("-" * len(head), file=file)
    for r in run["results"]:
        if r["error"]:
            print(f"{r['name']:<38} {'FAILED':>14}   {r['error']}", file=file)
            continue
        line = f"{r['name']:<38} {r['mean']:>14,.2f} {r['std']:>10,.2f} {r['unit']:<6}"
        if has_virtual and r.get("virtual_mean"):
            line += f" {r['virtual_mean']:>24,.1f}"
        print(line, file=file)


def print_ratio_table(ours: dict, theirs: dict, file=sys.stdout) -> None:
    print(f"\nrayref / ray  ({ours['describe']} vs {theirs['describe']}; >1 means rayref is faster)", file=file)
    head = f"{'benchmark':<38} {'rayref':>14} {'ray':>14} {'unit':<6} {'rayref/ray':>11}"
    print(head, file=file)
    print("-" * len(head), file=file)
    by_name = {r["name"]: r for r in theirs["results"]}
    names = [r["name"] for r in ours["results"]] + [n for n in by_name if n not in
                                                    {r["name"] for r in ours["results"]}]
    mine = {r["name"]: r for r in ours["results"]}

    def fmt(r):
        if r is None:
            return "-"
        return "FAILED" if r["error"] else f"{r['mean']:,.2f}"

    for name in names:
        a, b = mine.get(name), by_name.get(name)
        unit = (a or b)["unit"] or (b or a)["unit"]
        ratio = "-"
        if a and b and not a["error"] and not b["error"] and b["mean"]:
            ratio = f"{a['mean'] / b['mean']:.3f}"
        print(f"{name:<38} {fmt(a):>14} {fmt(b):>14} {unit:<6} {ratio:>11}", file=file)


def _child(args, backend: str, out_path: str) -> dict | None:
    cmd = [sys.executable, "-m", "benchmarks.microbenchmark", "--backend", backend, "--json-out", out_path,
           "--no-table", *args.passthrough]
    proc = subprocess.run(cmd, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          timeout=args.child_timeout)
    if proc.returncode != 0:
        print(f"!! the {backend} run exited with status {proc.returncode}", flush=True)
    try:
        with open(out_path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _merge(runs: list[dict]) -> dict | None:
    """One run from several of one backend: each benchmark's trials pooled (a failure in any run shows)."""
    runs = [run for run in runs if run is not None]
    if not runs:
        return None
    merged = {**runs[0], "results": []}
    for first in runs[0]["results"]:
        rows = [r for run in runs for r in run["results"] if r["name"] == first["name"]]
        failed = next((r for r in rows if r["error"]), None)
        if failed is not None:
            merged["results"].append(failed)
            continue
        trials = [t for r in rows for t in r["trials"]]
        mean = sum(trials) / len(trials)
        std = math.sqrt(sum((t - mean) ** 2 for t in trials) / len(trials))
        merged["results"].append({**first, "mean": mean, "std": std, "trials": trials})
    return merged


def compare(args) -> int:
    """Each backend ``--rounds`` times, in the order A B B A A B ... so that a drift of the machine's
    speed over the minutes of a run weighs on both alike; trials are pooled per backend."""
    error = ray_import_error()
    if error is not None:
        print(f"\n(ray is not installed here: `import ray` failed with {error}; showing rayref only. "
              f"`pip install ray` to compare.)", flush=True)
    backends = ["rayref"] if error is not None else ["rayref", "ray"]
    runs: dict[str, list] = {name: [] for name in backends}
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(args.rounds):
            for name in (backends if round_no % 2 == 0 else backends[::-1]):
                runs[name].append(_child(args, name, os.path.join(tmp, f"{name}-{round_no}.json")))
    ours = _merge(runs["rayref"])
    theirs = _merge(runs["ray"]) if "ray" in runs else None
    if ours is None:
        print("the rayref run produced no results", flush=True)
        return 1
    print_table(ours)
    if theirs is not None:
        print_table(theirs)
        print_ratio_table(ours, theirs)
    elif error is None:
        print("\n(the ray run produced no results; no ratio table)")
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--backend", choices=("rayref", "ray"), default="rayref")
    parser.add_argument("--transport", default="grpc",
                        help="rayref's transport, passed to rayref.init(transport=...) (default grpc: real processes)")
    parser.add_argument("--compare", action="store_true",
                        help="run rayref and (if installed) ray, each in a child process, then print rayref/ray")
    parser.add_argument("--filter", default=None, help="regex: run only benchmarks whose name matches")
    parser.add_argument("--duration", type=float, default=0.4, help="wall seconds per trial (default 0.4)")
    parser.add_argument("--trials", type=int, default=3, help="trials per benchmark (default 3)")
    parser.add_argument("--warmup", type=float, default=0.2, help="warm-up wall seconds (default 0.2)")
    parser.add_argument("--batch", type=int, default=1000,
                        help="calls per op in the async/batch benchmarks (default 1000; Ray uses 1000-10000)")
    parser.add_argument("--n", type=int, default=max(2, (os.cpu_count() or 2) // 2),
                        help="actors/callers in the 1:n, n:n and multi-client benchmarks (default max(2, CPUs/2))")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1,
                        help="num_cpus for init() (default: the CPUs of this machine, as ray.init())")
    parser.add_argument("--big-mib", type=int, default=100, help="MiB of the numpy array put/got (default 100)")
    parser.add_argument("--init-trials", type=int, default=None,
                        help="init + first task repetitions (default 5 for rayref, 1 for ray)")
    parser.add_argument("--seed", type=int, default=0, help="rayref's seed")
    parser.add_argument("--json-out", default=None, help="also write the results as JSON to this file")
    parser.add_argument("--child-timeout", type=float, default=600, help="seconds per backend under --compare")
    parser.add_argument("--rounds", type=int, default=1,
                        help="under --compare, run each backend this many times, alternating (A B B A ...)")
    parser.add_argument("--no-table", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failed benchmarks")
    args = parser.parse_args(argv)
    # what --compare hands on to each child (all but --backend/--compare/--json-out)
    raw = list(sys.argv[1:] if argv is None else argv)
    passthrough, skip = [], False
    for i, token in enumerate(raw):
        if skip:
            skip = False
            continue
        if token in ("--compare",):
            continue
        if token in ("--backend", "--json-out", "--rounds"):
            skip = True
            continue
        if token.startswith(("--backend=", "--json-out=", "--rounds=")):
            continue
        passthrough.append(token)
    args.passthrough = passthrough
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.compare:
        return compare(args)
    if args.backend == "ray":
        error = ray_import_error()
        if error is not None:
            print(f"ray is not installed here (`import ray` failed: {error}); `pip install ray` to benchmark it.")
            return 2
    run = run_backend(args)
    if not args.no_table:
        print_table(run)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(run, f, indent=1)
    return 1 if any(r["error"] for r in run["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
