"""server/heap.py: the C heap policy csm-serve starts with."""

import subprocess
import sys

HEAP = "import sys; from server.heap import limit_malloc_arenas; print(limit_malloc_arenas())"


def test_csm_serve_caps_malloc_arenas_unless_the_operator_chose():
    env = {k: v for k, v in __import__("os").environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run([sys.executable, "-c", HEAP], capture_output=True, text=True, env=env, timeout=60)
    assert done.stdout.strip() == "True", done.stderr  # glibc (every Linux image we ship)
    chosen = subprocess.run([sys.executable, "-c", HEAP], capture_output=True, text=True, timeout=60,
                            env={**env, "MALLOC_ARENA_MAX": "4"})
    assert chosen.stdout.strip() == "False", chosen.stderr


def test_every_entry_point_applies_it_first():
    import inspect

    from server import bench, bench_voices, cli

    for module in (cli, bench, bench_voices):
        body = inspect.getsource(module.main).splitlines()
        assert "limit_malloc_arenas()" in body[1], (module.__name__, body[1])
