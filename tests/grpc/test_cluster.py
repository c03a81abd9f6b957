"""The gRPC transport as real processes: CLI, several nodes on loopback, token, kills, leaks."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import rayref
from rayref._private import worker
from rayref.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from grpc_helpers import alive, cmdline, eventually, processes_of

real_monotonic = time.monotonic
pytestmark = pytest.mark.timeout(120)


def _eventually(check, timeout=15.0, what="the condition"):
    eventually(check, timeout, what)


def _cli(*args, timeout=60):
    done = subprocess.run([sys.executable, "-m", "rayref.scripts", *args], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_start_status_stop():
    """W-9, LIFE2: rayref start/status/stop; stop leaves no process of the session and no directory."""
    from transports.grpc.session import Session
    try:
        out = _cli("start", "--head", "--num-cpus", "1")
        address = out.split("head node at ")[1].split(" ")[0]
        assert address.startswith("127.0.0.1:")
        _cli("start", f"--address={address}", "--num-cpus", "2", "--resources", '{"TPU": 3}')
        status = _cli("status")
        assert "2 node(s)" in status and "TPU: 0 / 3" in status and "CPU: 0 / 3" in status
        session = Session.latest()
        assert processes_of(session.path)
        assert "Stopped" in _cli("stop")
        assert processes_of(session.path) == [] and not os.path.exists(session.path)
        assert "No rayref cluster" in _cli("stop")
    finally:
        leftover = Session.latest()
        if leftover is not None:
            leftover.stop()


OTHER_MACHINE_DRIVER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import rayref
    from rayref.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    rayref.init(address=sys.argv[1])
    here = rayref.get_runtime_context().get_node_id()
    head = next(n["NodeID"] for n in rayref.nodes() if n["IsHead"])

    @rayref.remote
    def where():
        return rayref.get_runtime_context().get_node_id()

    @rayref.remote
    def total(array):
        return float(array.sum()), rayref.get_runtime_context().get_node_id()

    @rayref.remote(resources={"far": 1})
    class Counter:
        def __init__(self):
            self.n = 0

        def add(self, array):
            self.n += int(array.size)
            return self.n

    far = where.options(resources={"far": 1}).remote()
    on_head = total.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False))
    big = rayref.put(np.ones(3_000_000))
    counter = Counter.remote()
    print(json.dumps({"driver": here, "head": head, "far": rayref.get(far),
                      "sum": rayref.get(on_head.remote(big)), "nodes": len(rayref.nodes()),
                      "counted": rayref.get([counter.add.remote(big) for _ in range(2)])}))
""")


def _cli_as(env, *args):
    return subprocess.run([sys.executable, "-m", "rayref.scripts", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_a_node_and_a_driver_on_another_machine_join_with_the_token(tmp_path, monkeypatch):
    """W-9, AUTH1: another machine (here: another session root, so nothing of the head's session is
    at hand) joins with the token in RAYREF_TOKEN: `rayref start --address` there starts a node; a
    driver there attaches to that node, its tasks run on both machines and its objects move
    between them; `rayref stop` there stops only what runs there. Without the token, or with a
    wrong one, joining is refused with a clear error and starts nothing. A driver with the token
    and no session at all attaches to the node at the address it was given."""
    from transports.grpc.session import Session
    here_root = os.environ["RAYREF_SESSION_ROOT"]
    other = {**os.environ, "RAYREF_SESSION_ROOT": str(tmp_path / "other-machine")}

    def latest_at(root):
        monkeypatch.setenv("RAYREF_SESSION_ROOT", root)
        try:
            return Session.latest()
        finally:
            monkeypatch.setenv("RAYREF_SESSION_ROOT", here_root)

    sessions = []
    try:
        address = _cli("start", "--head", "--num-cpus", "1").split("head node at ")[1].split(" ")[0]
        head_session = Session.latest()
        sessions.append(head_session)
        missing = _cli_as(other, "start", f"--address={address}")
        assert missing.returncode == 1 and "set RAYREF_TOKEN" in missing.stderr
        wrong = _cli_as({**other, "RAYREF_TOKEN": "0" * 64}, "start", f"--address={address}")
        assert wrong.returncode == 1 and "refused this token" in wrong.stderr
        assert latest_at(other["RAYREF_SESSION_ROOT"]) is None
        other["RAYREF_TOKEN"] = head_session.token
        joined = _cli_as(other, "start", f"--address={address}", "--num-cpus", "1", "--resources", '{"far": 1}')
        assert joined.returncode == 0 and "joined" in joined.stdout, joined.stderr
        far_session = latest_at(other["RAYREF_SESSION_ROOT"])
        sessions.append(far_session)
        assert far_session.head()["endpoint"] == address and far_session.path != head_session.path
        for where, env in (("auto", other), (address, {**other, "RAYREF_SESSION_ROOT": str(tmp_path / "third")})):
            done = subprocess.run([sys.executable, "-c", OTHER_MACHINE_DRIVER, where], capture_output=True,
                                  text=True, timeout=60, env=env)
            assert done.returncode == 0, done.stderr
            seen = json.loads(done.stdout.strip().splitlines()[-1])
            assert seen["far"] != seen["head"] and seen["nodes"] == 2
            # with the joined session, the driver attaches to its machine's node; with none, to the address
            assert seen["driver"] == (seen["far"] if where == "auto" else seen["head"])
            assert seen["sum"] == [3_000_000.0, seen["head"]] and seen["counted"] == [3_000_000, 6_000_000]
        assert "2 node(s)" in _cli_as(other, "status").stdout
        assert "Stopped" in _cli_as(other, "stop").stdout
        assert processes_of(far_session.path) == [] and not os.path.exists(far_session.path)
        assert processes_of(head_session.path)
        _eventually(lambda: "node  127.0.0.1" in _cli("status") and "dead" in _cli("status"),
                    what="the head seeing the other machine's node dead")
    finally:
        sessions += [latest_at(other["RAYREF_SESSION_ROOT"]), latest_at(here_root)]
        for session in sessions:
            if session is not None and os.path.exists(session.path):
                session.stop()


def test_three_nodes_on_loopback():
    """W-4, W-5, D-8: Spillback, SPREAD, node affinity, custom resources, objects between nodes, nodes()."""
    rayref.init(transport="grpc", num_cpus=2)
    transport = worker.transport()
    b = transport.add_node(num_cpus=2, resources={"B": 1})
    c = transport.add_node(num_cpus=2, resources={"C": 1})
    _eventually(lambda: len(rayref.nodes()) == 3, what="three nodes registered")
    nodes = rayref.nodes()
    assert sum(n["IsHead"] for n in nodes) == 1 and all(n["Alive"] for n in nodes)

    @rayref.remote
    def where(pause=0.0):
        time.sleep(pause)
        return rayref.get_runtime_context().get_node_id()

    assert rayref.get(where.options(resources={"B": 1}).remote()) == b["node_id"]
    pinned = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(c["node_id"], soft=False))
    assert set(rayref.get([pinned.remote() for _ in range(3)])) == {c["node_id"]}
    time.sleep(0.5)
    spread = rayref.get([where.options(scheduling_strategy="SPREAD").remote(0.5) for _ in range(6)])
    assert len(set(spread)) == 3
    spilled = rayref.get([where.remote(1.0) for _ in range(6)])
    assert len(set(spilled)) >= 2

    @rayref.remote(resources={"B": 1})
    def make():
        return np.arange(1_000_000, dtype=np.float64)

    @rayref.remote(resources={"C": 1})
    def total(array):
        return float(array.sum()), rayref.get_runtime_context().get_node_id()

    ref = make.remote()
    assert rayref.get(total.remote(ref)) == (float(np.arange(1_000_000).sum()), c["node_id"])
    assert rayref.get(ref)[-1] == 999_999.0


def test_wrong_or_missing_token_is_refused():
    """AUTH1, W-2: an Attach without the cluster's token is refused; the cluster keeps working."""
    rayref.init(transport="grpc", num_cpus=1)
    from transports.grpc.client import _attach
    head = worker.transport().session.head()
    for token in ("", "0" * 64):
        with pytest.raises(ConnectionError, match="refused this process: .*token"):
            _attach(head, token, "x", None)
    assert rayref.get(rayref.put(5)) == 5


def test_sigkill_of_a_worker_mid_task_is_retried(tmp_path):
    """RETRY1, W-3: a worker process SIGKILLed mid-task: its stream ends, WorkerExited, the task re-runs."""
    rayref.init(transport="grpc", num_cpus=1)
    marker = tmp_path / "pid"

    @rayref.remote(max_retries=2)
    def slow(path):
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(60)
        return os.getpid()

    ref = slow.remote(str(marker))
    _eventually(lambda: marker.exists() and marker.read_text(), what="the task started")
    first = int(marker.read_text())
    os.kill(first, signal.SIGKILL)
    assert rayref.get(ref, timeout=60) != first


def test_shutdown_leaves_no_process_or_port():
    """LIFE2, W-9: shutdown of a driver that started its cluster leaves no process, directory or port."""
    info = rayref.init(transport="grpc", num_cpus=2)
    assert rayref.get(rayref.remote(lambda: 1).remote()) == 1
    assert processes_of(info["session"])
    rayref.shutdown()
    assert processes_of(info["session"]) == [] and not os.path.exists(info["session"])
    with pytest.raises(ConnectionError, match="Could not reach"):
        from transports.grpc.client import describe
        describe(info["address"], "any token", timeout=1.0)


def test_driver_killed_with_sigkill_leaves_nothing(tmp_path):
    """LIFE2, W-9: the cluster of a driver killed with SIGKILL stops by itself (owner-pid watch)."""
    script = textwrap.dedent("""
        import sys, time
        import rayref
        info = rayref.init(transport="grpc", num_cpus=1)
        rayref.get(rayref.remote(lambda: 1).remote())
        print(info["session"], flush=True)
        time.sleep(120)
    """)
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "RAYREF_SESSION_ROOT": str(tmp_path / "sessions")})
    try:
        session = driver.stdout.readline().strip()
        assert session and processes_of(session)
        driver.kill()
        driver.wait(10)
        _eventually(lambda: processes_of(session) == [] and not os.path.exists(session), timeout=20,
                    what="the cluster of a killed driver stopping")
    finally:
        if driver.poll() is None:
            driver.kill()


def test_dead_address_is_a_clear_error(monkeypatch):
    """W-8: connecting to an address with no cluster is a clear ConnectionError, not a hang."""
    with pytest.raises(ConnectionError, match="No rayref cluster found at 127.0.0.1:9"):
        rayref.init(address="127.0.0.1:9")
    monkeypatch.setenv("RAYREF_TOKEN", "0" * 64)
    with pytest.raises(ConnectionError, match="Could not reach a rayref cluster at 127.0.0.1:9"):
        rayref.init(address="127.0.0.1:9")
    assert not rayref.is_initialized()


def test_gpus_detected_from_cuda_visible_devices_and_mapped(monkeypatch):
    """W-6, P-CMD-5: A node sees the GPUs its CUDA_VISIBLE_DEVICES lists; tasks get those device ids."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    rayref.init(transport="grpc", num_cpus=2)
    assert rayref.cluster_resources()["GPU"] == 2

    @rayref.remote(num_gpus=1)
    def gpu():
        time.sleep(0.3)
        return rayref.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

    got = rayref.get([gpu.remote(), gpu.remote()])
    assert sorted(visible for _, visible in got) == ["4", "6"]
    assert all(ids == [int(visible)] for ids, visible in got)


def _connected_driver(body: str) -> subprocess.CompletedProcess:
    """Run ``body`` as another driver connected to this test's cluster (os, time and rayref imported)."""
    address = worker.transport().context_info()["address"]
    script = f"import os, time\nimport rayref\nrayref.init(address={address!r})\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_a_connected_driver_that_exits_gives_back_its_workers(tmp_path):
    """LIFE2, G-OWNER-DEATH: the cluster frees what a departed driver held (its leases)."""
    rayref.init(transport="grpc", num_cpus=2)
    done = _connected_driver("""
        @rayref.remote
        def hold():
            time.sleep(120)
        ref = hold.remote()
        rayref.wait([ref], timeout=1.0)
        print("holding", flush=True)
        os._exit(0)
    """)
    assert "holding" in done.stdout, done.stderr
    _eventually(lambda: rayref.available_resources().get("CPU") == 2, timeout=20,
                what="the departed driver's CPU coming back")


def test_a_connected_driver_that_shuts_down_gives_back_its_idle_workers_alive():
    """P-ACT-7: a driver that shuts down returns the leases it keeps lingering first, so its node
    does not kill those workers as leased to a departed process; the next driver reuses them."""
    rayref.init(transport="grpc", num_cpus=1)
    done = _connected_driver("""
        @rayref.remote
        def pid():
            return os.getpid()
        print("worker", rayref.get(pid.remote()), flush=True)
        rayref.shutdown()
    """)
    assert "worker" in done.stdout, done.stderr
    used = int(done.stdout.split("worker", 1)[1].split()[0])
    _eventually(lambda: rayref.available_resources().get("CPU") == 1, timeout=20, what="the CPU given back")
    time.sleep(0.3)  # a worker killed as leased to the departed driver would be gone by now
    assert alive(used), "the departed driver's idle worker was killed"


@rayref.remote(max_retries=1)
def _slow_once(path):
    """Its first run writes its node to ``path`` and sleeps a minute; a retry returns at once."""
    here = rayref.get_runtime_context().get_node_id()
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(here)
        time.sleep(60)
    return here


@rayref.remote(max_restarts=1, max_task_retries=1)
class _Where:
    def node(self):
        return rayref.get_runtime_context().get_node_id()


@rayref.remote
def _where():
    return rayref.get_runtime_context().get_node_id()


def _work_on_a_second_node(tmp_path):
    """A 2-node cluster whose second node runs a retryable task (started) and a restartable
    actor: (that node's announce, the task's ref, the actor, the node's worker pids)."""
    rayref.init(transport="grpc", num_cpus=2)
    node = worker.transport().add_node(num_cpus=2)
    pinned = NodeAffinitySchedulingStrategy(node["node_id"], soft=True)
    marker = tmp_path / "started"
    # Soft affinity lands on the new node once the head's view has it.
    _eventually(lambda: rayref.get(_where.options(scheduling_strategy=pinned).remote()) == node["node_id"],
                what="the new node in the head's view")
    ref = _slow_once.options(scheduling_strategy=pinned).remote(str(marker))
    actor = _Where.options(scheduling_strategy=pinned).remote()
    assert rayref.get(actor.node.remote()) == node["node_id"]
    _eventually(lambda: marker.exists() and marker.read_text(), what="the task started")
    assert marker.read_text() == node["node_id"]
    on_node = [pid for pid in processes_of(worker.transport().session.path) if node["node_id"] in cmdline(pid)]
    assert len(on_node) >= 2  # its workers (the node process itself names no node id)
    return node, ref, actor, on_node


def _moved_to_the_head(node, ref, actor):
    """The task was retried and the actor restarted on the head; nodes() shows ``node`` dead."""
    head = rayref.get_runtime_context().get_node_id()
    assert rayref.get(ref, timeout=30) == head
    assert rayref.get(actor.node.remote(), timeout=30) == head
    assert [n["Alive"] for n in rayref.nodes() if n["NodeID"] == node["node_id"]] == [False]


def test_sigkill_of_a_node_retries_its_tasks_and_restarts_its_actors(tmp_path):
    """F-8, RETRY1: SIGKILL of a node process: the head sees its stream end (NodeDied); the task that
    ran there is retried elsewhere, its actor restarts elsewhere, nodes() shows it dead, and none of
    its processes is left."""
    doomed, ref, actor, on_doomed = _work_on_a_second_node(tmp_path)
    os.kill(doomed["pid"], signal.SIGKILL)
    _moved_to_the_head(doomed, ref, actor)
    _eventually(lambda: not any(alive(pid) for pid in [doomed["pid"], *on_doomed]), timeout=20,
                what="the node's processes gone")


def test_a_hung_node_is_found_dead_by_health_checks_and_stops_when_it_wakes(tmp_path, monkeypatch):
    """F-8, W-12: a node that hangs with its connections open (SIGSTOP) fails the head's health
    checks; it is declared dead, so its task is retried and its actor restarted elsewhere; when it
    wakes up it hears it was declared dead and stops, with its workers."""
    monkeypatch.setenv("RAYREF_HEALTH_CHECK_PERIOD_S", "0.2")
    monkeypatch.setenv("RAYREF_HEALTH_CHECK_TIMEOUT_S", "0.5")
    monkeypatch.setenv("RAYREF_HEALTH_CHECK_FAILURE_THRESHOLD", "3")
    hung, ref, actor, on_hung = _work_on_a_second_node(tmp_path)
    assert [n["Alive"] for n in rayref.nodes() if n["NodeID"] == hung["node_id"]] == [True]  # checks answered
    os.kill(hung["pid"], signal.SIGSTOP)
    try:
        _moved_to_the_head(hung, ref, actor)
        assert alive(hung["pid"])  # still there, stopped: found dead by the checks, not by its exit
    finally:
        os.kill(hung["pid"], signal.SIGCONT)
    _eventually(lambda: not any(alive(pid) for pid in [hung["pid"], *on_hung]), timeout=20,
                what="the woken node and its workers stopping")
    assert rayref.get(_where.remote()) == rayref.get_runtime_context().get_node_id()


def test_the_pool_shrinks_back_to_one_worker_process_per_cpu():
    """P-LEASE-12, NM5: worker processes started while a task was blocked in get() exit once idle
    for a second (they hold nothing); the pool's one per CPU stays."""
    info = rayref.init(transport="grpc", num_cpus=1)

    @rayref.remote
    def leaf():
        time.sleep(0.3)
        return os.getpid()

    @rayref.remote
    def parent():
        return rayref.get([leaf.remote() for _ in range(3)])

    def workers():
        return [pid for pid in processes_of(info["session"]) if "transports.grpc.worker" in cmdline(pid)]

    ran_on = set(rayref.get(parent.remote()))
    assert len(workers()) >= 2 and ran_on <= set(workers())
    _eventually(lambda: len(workers()) == 1, timeout=20, what="the extra workers exiting")
    assert rayref.get(leaf.remote()) in workers()


def test_a_bad_health_check_setting_is_a_clear_error(monkeypatch, capfd):
    """W-12: a health-check setting that is not a positive number stops the head at start, naming it."""
    monkeypatch.setenv("RAYREF_HEALTH_CHECK_PERIOD_S", "soon")
    with pytest.raises(RuntimeError, match="exited with code 1 before it started"):
        rayref.init(transport="grpc", num_cpus=1)
    assert "RAYREF_HEALTH_CHECK_PERIOD_S='soon' must be a positive float" in capfd.readouterr().err



@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs a machine with two CPUs or more")
@pytest.mark.parametrize("pinned", [True, False])
def test_engine_threads_share_one_cpu_and_user_code_keeps_them_all(pinned, monkeypatch):
    """Each process's asyncio loop and gRPC poller threads run on one CPU (README, sync calls);
    the threads that run tasks, actor methods and async actors' loops, and threads they start,
    keep every CPU of the process. ``RAYREF_PIN_ENGINE_THREADS=0`` turns the pinning off."""
    if not pinned:
        monkeypatch.setenv("RAYREF_PIN_ENGINE_THREADS", "0")
    every = os.sched_getaffinity(0)

    def _masks() -> dict:
        """The CPUs of this worker's engine threads and of the thread running this (user code)."""
        import threading
        pollers = [t.native_id for t in threading.enumerate() if "_poll_wrapper" in t.name]
        spawned = {}
        thread = threading.Thread(target=lambda: spawned.update(cpus=os.sched_getaffinity(0)))
        thread.start()
        thread.join()
        return {"loop": os.sched_getaffinity(os.getpid()), "pollers": [os.sched_getaffinity(t) for t in pollers],
                "user": os.sched_getaffinity(0), "spawned": spawned["cpus"]}

    rayref.init(transport="grpc", num_cpus=2)
    remote_masks = rayref.remote(_masks)

    @rayref.remote
    class Plain:
        def masks(self):
            return _masks()

    @rayref.remote
    class Async:
        async def masks(self):
            return _masks()

    found = [rayref.get(remote_masks.remote()), rayref.get(Plain.remote().masks.remote()),
             rayref.get(Async.remote().masks.remote())]
    host = worker.transport().current()
    driver_loop = os.sched_getaffinity(host.loop_runner.native_id)
    for masks in found:
        assert masks["user"] == masks["spawned"] == every
        assert masks["pollers"], "gRPC's poller thread was not found by its name"
        if pinned:
            assert len(masks["loop"]) == 1 and all(poller == masks["loop"] for poller in masks["pollers"])
        else:
            assert masks["loop"] == every and all(poller == every for poller in masks["pollers"])
    assert len(driver_loop) == (1 if pinned else len(every))
    assert os.sched_getaffinity(0) == every  # the driver's own thread: the user's
