"""Properties of rayref on the sim transport, through the public API, on random programs.

(a) a random task DAG computes what the same DAG computes evaluated sequentially in Python;
(b) one caller's calls to one actor run in submission order, whatever their arguments wait for;
(c) resources are never over-committed: random tasks on random clusters, with every engine's
    ``validate()`` (NM1-NM3, CP1-CP2, RC1-RC2, OS1-OS2, CW1) run after every message, and the
    tasks' own observed run intervals never exceeding a node's CPUs, GPUs or custom resources;
(d) same program + same seed -> same trace digest and results (DET1).

Every example builds its own cluster and always disconnects in a ``finally``.
"""
from __future__ import annotations

import gc
import math
import random
import time
from fractions import Fraction

import networkx as nx
from hypothesis import given, settings, strategies as st

import rayref
from rayref import exceptions
from sim import Cluster, SimConfig

GiB = 1024 ** 3
BIG_PAD = 150 * 1024  # above the 100 KiB inline threshold: such values travel through node stores

# ------------------------------------------------------------------ building clusters

node_specs = st.fixed_dictionaries({
    "num_cpus": st.sampled_from([1, 2, 3, 4]),
    "num_gpus": st.sampled_from([0, 0, 1, 2]),
    "custom": st.sampled_from([0, 0, 1, 3]),
})
clusters = st.lists(node_specs, min_size=1, max_size=4)


def build(seed: int, specs: list[dict]) -> Cluster:
    cluster = Cluster(seed=seed, sim=SimConfig(validate=True))
    for spec in specs:
        resources = {"Custom": spec["custom"]} if spec.get("custom") else None
        cluster.add_node(num_cpus=spec["num_cpus"], num_gpus=spec.get("num_gpus", 0), resources=resources,
                         memory=4 * GiB, object_store_memory=GiB)
    cluster.connect()
    return cluster


# ------------------------------------------------------------------ (a) task DAGs


@rayref.remote
def combine(constant, pad, *parents):
    """A DAG node: its constant plus its parents' values weighted by position (so a swapped or
    dropped argument shows), maybe padded to be big."""
    total = constant + sum((i + 1) * value for i, (value, _) in enumerate(parents))
    return total, b"x" * pad


@st.composite
def dags(draw):
    n = draw(st.integers(1, 14))
    graph = nx.gnp_random_graph(n, draw(st.floats(0.0, 0.6)), seed=draw(st.integers(0, 2 ** 16)), directed=True)
    dag = nx.DiGraph([(u, v) for u, v in graph.edges if u < v])
    dag.add_nodes_from(range(n))
    constants = draw(st.lists(st.integers(-50, 50), min_size=n, max_size=n))
    big = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    cpus = draw(st.lists(st.sampled_from([0.25, 0.5, 1, 1]), min_size=n, max_size=n))
    keep = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return dag, constants, big, cpus, keep


@settings(max_examples=25)
@given(seed=st.integers(0, 1000), specs=clusters, case=dags())
def test_random_dag_matches_sequential_evaluation(seed, specs, case):
    """(a) VAL1: any DAG of tasks gives the values of the same DAG evaluated in plain Python, with
    intermediate refs dropped at random (their tasks' dependents must still see them)."""
    dag, constants, big, cpus, keep = case
    assert nx.is_directed_acyclic_graph(dag)
    expected = {}
    for node in nx.topological_sort(dag):
        parents = sorted(dag.predecessors(node))
        expected[node] = constants[node] + sum((i + 1) * expected[parent] for i, parent in enumerate(parents))

    cluster = build(seed, specs)
    try:
        refs = {}
        for node in nx.topological_sort(dag):
            parents = [refs[parent] for parent in sorted(dag.predecessors(node))]
            refs[node] = combine.options(num_cpus=cpus[node]).remote(
                constants[node], BIG_PAD if big[node] else 0, *parents)
        sinks = {node for node in dag if dag.out_degree(node) == 0}
        wanted = sorted(node for node in dag if keep[node] or node in sinks)
        for node in set(refs) - set(wanted):
            del refs[node]
        gc.collect()
        results = rayref.get([refs[node] for node in wanted])
        assert [value for value, _ in results] == [expected[node] for node in wanted]
        assert [len(pad) for _, pad in results] == [BIG_PAD if big[node] else 0 for node in wanted]
        cluster.validate()
    finally:
        rayref.shutdown()


# ------------------------------------------------------------------ (b) actor call order


@rayref.remote
class Log:
    def __init__(self):
        self.items = []

    def append(self, item, *waited_for):
        self.items.append(item)
        return len(self.items)

    def items_so_far(self):
        return list(self.items)


@rayref.remote
def slow_value(seconds, value):
    time.sleep(seconds)
    return value


calls = st.lists(st.tuples(st.sampled_from([None, 0.0, 0.01, 0.2, 1.0]), st.booleans()), min_size=1, max_size=30)


@settings(max_examples=25)
@given(seed=st.integers(0, 1000), specs=clusters, plan=calls)
def test_one_callers_actor_calls_run_in_submission_order(seed, specs, plan):
    """(b) ORD1: calls from one caller to one actor execute in submission order, even when earlier
    calls wait on slower argument tasks than later ones, and with gets interleaved."""
    cluster = build(seed, specs)
    try:
        log = Log.remote()
        returns = []
        for index, (delay, peek) in enumerate(plan):
            if delay is None:
                returns.append(log.append.remote(index))
            else:
                returns.append(log.append.remote(index, slow_value.remote(delay, index)))
            if peek:
                seen = rayref.get(log.items_so_far.remote())
                assert seen == list(range(len(seen))) and len(seen) == index + 1
        assert rayref.get(returns) == list(range(1, len(plan) + 1))
        assert rayref.get(log.items_so_far.remote()) == list(range(len(plan)))
        cluster.validate()
    finally:
        rayref.shutdown()


# ------------------------------------------------------------------ (c) no over-commitment


@rayref.remote
def occupy(seconds):
    ctx = rayref.get_runtime_context()
    start = time.monotonic()  # the virtual clock
    time.sleep(seconds)
    return ctx.get_node_id(), start, time.monotonic(), tuple(rayref.get_gpu_ids())


task_specs = st.lists(st.fixed_dictionaries({
    "num_cpus": st.sampled_from([0, 0.25, 0.5, 1, 1, 2]),
    "num_gpus": st.sampled_from([0, 0, 0, 0.25, 0.5, 1, 2]),
    "custom": st.sampled_from([0, 0, 0, 0.5, 1, 2]),
    "seconds": st.sampled_from([0.0, 0.01, 0.1, 0.5, 2.0]),
}), min_size=1, max_size=30)


def feasible(task: dict, specs: list[dict]) -> bool:
    return any(task["num_cpus"] <= n["num_cpus"] and task["num_gpus"] <= n["num_gpus"]
               and task["custom"] <= n["custom"] for n in specs)


def check_no_overcommit(runs, specs):
    """Sweep each node's run intervals (ends before starts at equal times): the concurrent sums
    of CPUs, GPUs and Custom never exceed the node's totals; whole GPUs are never shared and
    the fractions on one GPU index never exceed one GPU."""
    totals = {f"node-{i + 1:04d}": n for i, n in enumerate(specs)}
    by_node: dict[str, list] = {}
    for task, (node_id, start, end, gpu_ids) in runs:
        assert start <= end
        by_node.setdefault(node_id, []).append((task, start, end, gpu_ids))
    for node_id, items in by_node.items():
        total = totals[node_id]
        events = []
        for task, start, end, gpu_ids in items:
            events.append((end, 0, task, gpu_ids))
            events.append((start, 1, task, gpu_ids))
        events.sort(key=lambda e: (e[0], e[1]))
        cpu = gpu = custom = Fraction(0)
        per_gpu: dict[int, Fraction] = {}
        for _, is_start, task, gpu_ids in events:
            sign = 1 if is_start else -1
            cpu += sign * Fraction(task["num_cpus"]).limit_denominator(100)
            gpu += sign * Fraction(task["num_gpus"]).limit_denominator(100)
            custom += sign * Fraction(task["custom"]).limit_denominator(100)
            share = Fraction(task["num_gpus"]).limit_denominator(100) if task["num_gpus"] < 1 else Fraction(1)
            for index in gpu_ids:
                per_gpu[index] = per_gpu.get(index, Fraction(0)) + sign * share
                assert per_gpu[index] <= 1, f"GPU {index} of {node_id} over-committed"
            assert cpu <= total["num_cpus"], f"{node_id} runs {cpu} CPUs of {total['num_cpus']}"
            assert gpu <= total["num_gpus"], f"{node_id} runs {gpu} GPUs of {total['num_gpus']}"
            assert custom <= total["custom"], f"{node_id} runs {custom} Custom of {total['custom']}"


@settings(max_examples=25)
@given(seed=st.integers(0, 1000), specs=clusters, tasks=task_specs)
def test_random_resource_mixes_never_overcommit(seed, specs, tasks):
    """(c) NM1, NM3, NM4 after every message (validate=True), plus RES1, the observed concurrency
    per node:
    feasible tasks all finish within their nodes' totals with the GPU ids they were given;
    infeasible ones fail with TaskUnschedulableError once the cluster is idle."""
    cluster = build(seed, specs)
    try:
        refs = []
        for task in tasks:
            options = {"num_cpus": task["num_cpus"], "num_gpus": task["num_gpus"]}
            if task["custom"]:
                options["resources"] = {"Custom": task["custom"]}
            refs.append(occupy.options(**options).remote(task["seconds"]))
        runs = []
        for task, ref in zip(tasks, refs):
            if feasible(task, specs):
                node_id, start, end, gpu_ids = rayref.get(ref)
                assert math.isclose(end - start, task["seconds"], abs_tol=1e-9)
                gpus = task["num_gpus"]
                assert len(gpu_ids) == (0 if gpus == 0 else 1 if gpus < 1 else int(gpus))
                assert len(set(gpu_ids)) == len(gpu_ids)
                node_gpus = specs[int(node_id.split("-")[1]) - 1]["num_gpus"]
                assert all(0 <= i < node_gpus for i in gpu_ids)
                runs.append((task, (node_id, start, end, gpu_ids)))
            else:
                try:
                    rayref.get(ref)
                except exceptions.TaskUnschedulableError:
                    pass
                else:
                    raise AssertionError(f"a task needing {task} ran on a cluster of {specs}")
        check_no_overcommit(runs, specs)
        cluster.validate()
        # all resources are back once everything is done
        cluster.settle()
        for node_id, nm in cluster.runtime.node_managers.items():
            assert nm.available == nm.total, f"{node_id} did not get its resources back"
    finally:
        rayref.shutdown()


# ------------------------------------------------------------------ (d) determinism


@rayref.remote
def noisy(i, *parents):
    time.sleep(random.random() / 10)
    return i + random.randint(0, 1000) + sum(parents)


def deterministic_program(specs, seed, shape):
    cluster = build(seed, specs)
    try:
        log = Log.remote()
        refs = []
        for i, (fan_in, actor_call) in enumerate(shape):
            parents = refs[-fan_in:] if fan_in else []
            refs.append(noisy.remote(i, *parents))
            if actor_call:
                log.append.remote(i, refs[-1])
        values = rayref.get(refs)
        order = rayref.get(log.items_so_far.remote())
        cluster.validate()
        return values, order, cluster.now, cluster.trace_digest()
    finally:
        rayref.shutdown()


programs = st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=20)


@settings(max_examples=15)
@given(seed=st.integers(0, 10_000), specs=clusters, shape=programs)
def test_same_program_same_seed_same_trace(seed, specs, shape):
    """(d) DET1: the same program on the same cluster and seed gives the same results, virtual
    time and trace digest. (Another seed may or may not differ; it must only run correctly.)"""
    first = deterministic_program(specs, seed, shape)
    second = deterministic_program(specs, seed, shape)
    assert first == second
    other = deterministic_program(specs, seed + 1, shape)
    assert len(other[0]) == len(shape)
    assert other[1] == [i for i, (_, call) in enumerate(shape) if call]
