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
