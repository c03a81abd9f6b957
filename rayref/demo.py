"""The demo: one program on a real local cluster, then unchanged on a simulated one, then at scale.

    python -m rayref.demo [--seed N]

First ``ray.init()`` starts a real local cluster (node and worker processes over gRPC) and the
Ray Core walkthrough runs on it; then the same code runs on a simulated node, with the same
answers, followed by programs that would take minutes of real time; last, 200 simulated nodes
of which five are killed mid-run. Prints the results, virtual times and trace digests (run it
twice with the same seed: the digests are the same).
"""
from __future__ import annotations

import argparse
import random
import time

import numpy as np

import rayref as ray
from sim import Cluster

wall = time.perf_counter


def walkthrough() -> tuple:
    """The walkthrough's tasks, actor and objects; returns its answers."""
    @ray.remote
    def square(x):
        return x * x

    squares = ray.get([square.remote(i) for i in range(4)])
    print("  tasks:           ", squares)

    @ray.remote
    class Counter:
        def __init__(self):
            self.i = 0

        def get(self):
            return self.i

        def incr(self, value):
            self.i += value

    c = Counter.remote()
    for _ in range(10):
        c.incr.remote(1)
    count = ray.get(c.get.remote())
    print("  actor:           ", count)

    @ray.remote
    def sum_matrix(matrix):
        return np.sum(matrix)

    literal = ray.get(sum_matrix.remote(np.ones((100, 100))))
    print("  literal argument:", literal)
    matrix_ref = ray.put(np.ones((1000, 1000)))
    by_ref = ray.get(sum_matrix.remote(matrix_ref))
    print("  object ref:      ", by_ref)
    return squares, count, literal, by_ref


def patterns() -> None:
    @ray.remote
    def expensive_square(x):
        time.sleep(5)
        return x ** 2

    @ray.remote
    def remote_add(a, b):
        return a + b

    @ray.remote
    def main():
        return ray.get(remote_add.remote(expensive_square.remote(1), expensive_square.remote(2)))

    start = time.time()
    print("  nested tasks:    ", ray.get(main.remote()), f"(virtual {time.time() - start:.1f}s)")

    @ray.remote(retry_exceptions=[ValueError], max_retries=10)
    def flaky_square(x, prob):
        if random.random() < prob:
            raise ValueError("Random failure")
        return x ** 2

    print("  retried:         ", ray.get([flaky_square.remote(4, 0.5) for _ in range(10)]))
    refs = [expensive_square.remote(i) for i in range(15)]
    order = []
    while refs:
        ready, refs = ray.wait(refs)
        order.append(ray.get(ready[0]))
    print("  wait pipeline:   ", order)


def sleepy_hundred() -> None:
    @ray.remote
    def nap(i):
        time.sleep(100)
        return i

    start, real = time.time(), wall()
    total = sum(ray.get([nap.remote(i) for i in range(100)]))
    print(f"  100 x sleep(100): sum={total}, virtual {time.time() - start:.1f}s, wall {wall() - real:.2f}s")


def run(seed: int) -> None:
    print("A real local cluster: ray.init() starts node and worker processes (gRPC):")
    real = wall()
    ray.init()
    try:
        answers = walkthrough()
    finally:
        ray.shutdown()
    print(f"  start, run and stop took {wall() - real:.2f} s")

    print(f"The same program on a simulated node with 100 CPUs, seed {seed}:")
    cluster = Cluster(seed=seed)
    cluster.add_node(num_cpus=100, memory=8 * 1024 ** 3, object_store_memory=2 * 1024 ** 3)
    cluster.connect()
    try:
        print("  same answers as the real cluster:", walkthrough() == answers)
        patterns()
        sleepy_hundred()
        print(f"  trace digest {cluster.trace_digest()} at t={cluster.now:.3f}s")
    finally:
        ray.shutdown()

    print(f"200 simulated nodes x 8 CPUs, seed {seed}; five nodes killed at t=0.5 s:")
    cluster = Cluster(seed=seed)
    nodes = [cluster.add_node(num_cpus=8, memory=8 * 1024 ** 3, object_store_memory=1024 ** 3) for _ in range(200)]
    cluster.connect()
    try:
        for node in nodes[-5:]:
            cluster.kill_node(node.node_id, at=0.5)

        @ray.remote
        def where(i):
            time.sleep(1)
            return ray.get_runtime_context().get_node_id()

        real = wall()
        ran_on = ray.get([where.remote(i) for i in range(1600)])
        print(f"  all 1600 one-second tasks returned, from {len(set(ran_on))} nodes, the ones on killed nodes "
              f"retried elsewhere; {cluster.now:.2f} virtual s ({wall() - real:.2f} s wall)")
        print(f"  trace digest {cluster.trace_digest()}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    run(parser.parse_args().seed)
