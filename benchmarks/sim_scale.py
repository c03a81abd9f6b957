"""Simulator scale: how many simulated tiny tasks rayref completes per *wall* second on big clusters.

    python -m benchmarks.sim_scale                        # 100 and 1,000 nodes x 8 CPUs, 20,000 tasks
    python -m benchmarks.sim_scale --tasks 50000 --nodes 10 100 1000 --cpus 8
    python -m benchmarks.sim_scale --nodes 1000 --profile # cProfile the build/connect and task phases

For each cluster size it builds a ``sim.Cluster`` (``add_node`` per node), connects the driver
(which settles the cluster: nodes register, workers prestart), then submits ``--tasks`` tiny
tasks (``@remote def tiny(i): return i``) and gets them all, with the full engine (control
plane, node managers, core workers, network model). It reports the wall time of each phase,
tasks per wall second, the virtual seconds the run covered and the trace digest (same seed and
arguments -> same digest). This benchmark is about the simulator itself, so it always runs on
the sim transport.

While a sim cluster is connected, ``time.perf_counter`` in this process reads *virtual* time;
the real clock is captured at import, before anything connects.
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import sys
import time

real_clock = time.perf_counter  # captured before any cluster connects (connect patches time.*)

import rayref  # noqa: E402
import sim  # noqa: E402

BAR_TASKS_PER_S = 5000.0
"""The target on a 2-core machine (a bare SimPy model of the same message flow did ~23,000)."""


@rayref.remote
def tiny(i):
    return i


def run_scale(nodes: int, cpus: float, tasks: int, seed: int, profile: bool = False, profile_top: int = 15) -> dict:
    gc.collect()
    profiler = cProfile.Profile() if profile else None
    t0 = real_clock()
    if profiler:
        profiler.enable()
    cluster = sim.Cluster(seed=seed)
    for _ in range(nodes):
        cluster.add_node(num_cpus=cpus, memory=16 * 1024**3, object_store_memory=4 * 1024**3)
    t1 = real_clock()
    cluster.connect()
    t2 = real_clock()
    if profiler:
        profiler.disable()
        build_profile, profiler = _top(profiler, profile_top), cProfile.Profile()
    v_start = cluster.now
    steps_start = cluster.runtime.steps
    try:
        if profiler:
            profiler.enable()
        t3 = real_clock()
        refs = [tiny.remote(i) for i in range(tasks)]
        t4 = real_clock()
        values = rayref.get(refs)
        t5 = real_clock()
        if profiler:
            profiler.disable()
        if values != list(range(tasks)):
            raise AssertionError("tiny tasks returned wrong values")
        del refs, values
        result = {
            "nodes": nodes, "cpus_per_node": cpus, "tasks": tasks, "seed": seed,
            "build_s": t1 - t0, "connect_s": t2 - t1,
            "submit_s": t4 - t3, "get_s": t5 - t4, "tasks_wall_s": t5 - t3,
            "tasks_per_s": tasks / (t5 - t3),
            "virtual_connect_s": v_start, "virtual_tasks_s": cluster.now - v_start, "virtual_total_s": cluster.now,
            "messages": cluster.runtime.steps - steps_start,
            "digest": cluster.trace_digest(),
            "warnings": len(cluster.warnings),
        }
        if profile:
            result["profile_build_connect"] = build_profile
            result["profile_tasks"] = _top(profiler, profile_top)
        return result
    finally:
        rayref.shutdown()


def _top(profiler: cProfile.Profile, n: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(n)
    stats.sort_stats("cumulative").print_stats(n)
    return out.getvalue()


def print_table(rows: list[dict], file=sys.stdout) -> None:
    head = (f"{'nodes':>6} {'CPUs':>5} {'tasks':>7} | {'build s':>8} {'connect s':>9} | {'submit s':>8} "
            f"{'get s':>7} {'tasks/wall-s':>12} {'bar':>4} | {'msgs':>8} {'msgs/wall-s':>11} | "
            f"{'virt conn s':>11} {'virt tasks s':>12} | digest")
    print(head, file=file)
    print("-" * len(head), file=file)
    for r in rows:
        ok = "ok" if r["tasks_per_s"] >= BAR_TASKS_PER_S else "LOW"
        print(f"{r['nodes']:>6} {r['cpus_per_node']:>5g} {r['tasks']:>7} | {r['build_s']:>8.3f} "
              f"{r['connect_s']:>9.3f} | {r['submit_s']:>8.3f} {r['get_s']:>7.3f} {r['tasks_per_s']:>12,.0f} "
              f"{ok:>4} | {r['messages']:>8} {r['messages'] / r['tasks_wall_s']:>11,.0f} | "
              f"{r['virtual_connect_s']:>11.6f} {r['virtual_tasks_s']:>12.6f} | {r['digest']}", file=file)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000, help="tiny tasks per cluster size (default 20000)")
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 1000], help="cluster sizes (default 100 1000)")
    parser.add_argument("--cpus", type=float, default=8, help="CPUs per node (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true",
                        help="cProfile each size's build+connect and task phases and print the top functions "
                             "(profiling slows the run; its timings are not the benchmark's)")
    parser.add_argument("--profile-top", type=int, default=15)
    args = parser.parse_args(argv)

    print(f"rayref sim scale: {args.tasks} tiny tasks per run, {args.cpus:g} CPUs per node, seed {args.seed}; "
          f"bar {BAR_TASKS_PER_S:,.0f} tasks/wall-s")
    rows = []
    for nodes in args.nodes:
        row = run_scale(nodes, args.cpus, args.tasks, args.seed, args.profile, args.profile_top)
        rows.append(row)
        print(f"  {nodes} nodes: {row['tasks_per_s']:,.0f} tasks/wall-s "
              f"(build+connect {row['build_s'] + row['connect_s']:.2f} s)", flush=True)
        if args.profile:
            print(f"\n=== profile: {nodes} nodes, build + connect ===\n{row['profile_build_connect']}")
            print(f"\n=== profile: {nodes} nodes, {args.tasks} tasks ===\n{row['profile_tasks']}")
    print()
    print_table(rows)
    print("\ntasks/wall-s = tasks / (submit s + get s), wall clock; virt = virtual (simulated) seconds; "
          "msgs = engine messages delivered during the task phase.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
