"""Everything is one process: an unmodified script replays from its seed; print and pdb work in tasks."""
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import random, time
    import rayref as ray

    @ray.remote
    def draw(i):
        time.sleep(random.random())
        print("inside task", i)
        return round(random.random(), 12)

    values = ray.get([draw.remote(i) for i in range(5)])
    print("values", values, "t=%.6f" % time.time())
""")


def _run(env_seed: str, stdin: str = "", script: str = SCRIPT) -> str:
    env = {"RAYREF_TRANSPORT": "sim", "RAYREF_SEED": env_seed, "PATH": "/usr/bin:/bin",
           "PYTHONPATH": ":".join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-c", script], input=stdin, capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_unmodified_script_replays_from_env_seed():
    """DET1: the same script and RAYREF_SEED give the same output; another seed, other values."""
    first, second, other = _run("11"), _run("11"), _run("12")
    assert "inside task 3" in first
    values = [line for line in first.splitlines() if line.startswith("values")]
    assert values and first == second
    assert values != [line for line in other.splitlines() if line.startswith("values")]


def test_breakpoint_inside_a_task():
    script = textwrap.dedent("""
        import rayref as ray

        @ray.remote
        def f(x):
            secret = x * 7
            breakpoint()
            return secret

        print("result", ray.get(f.remote(6)))
    """)
    out = _run("0", stdin="p secret\nc\n", script=script)
    assert "42" in out.split("result")[0] and "result 42" in out


PLACED = textwrap.dedent("""
    import rayref as ray
    from sim import Cluster

    cluster = Cluster(seed=5)
    for _ in range(3):
        cluster.add_node(num_cpus=2)
    cluster.connect()

    @ray.remote
    def square(x):
        return x * x

    @ray.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def add(self, k):
            self.n += k
            return self.n

    counter = Counter.remote()
    print(ray.get([square.remote(i) for i in range(20)]), ray.get([counter.add.remote(i) for i in range(5)]))
    print("digest", cluster.trace_digest(), "t=%.9f" % cluster.now)
""")


def test_same_script_at_two_paths_same_digest(tmp_path):
    """DET1: a script's functions are pickled by value with their file's path; where the script
    lives must not change the virtual times or the digest."""
    outputs = []
    for folder in ("a", "a_folder_with_a_much_longer_name/and_deeper"):
        script = tmp_path / folder / "placed.py"
        script.parent.mkdir(parents=True)
        script.write_text(PLACED)
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(p for p in sys.path if p)}
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert "digest" in outputs[0] and outputs[0] == outputs[1]
