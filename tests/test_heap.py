"""server/heap.py: the C heap csm-serve starts with."""

import inspect
import os
import subprocess
import sys

TUNE = "from server.heap import tune_malloc; print(sorted(tune_malloc().items()))"
GLIBC_ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "CSM_MALLOC_TUNING")


def tuned(**env) -> str:
    base = {k: v for k, v in os.environ.items() if k not in GLIBC_ENV}
    done = subprocess.run([sys.executable, "-c", TUNE], capture_output=True, text=True, timeout=60,
                          env={**base, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_tuned_unless_the_operator_chose():
    assert tuned() == "[('MALLOC_ARENA_MAX', 2)]"  # glibc (every image we ship)
    assert tuned(MALLOC_ARENA_MAX="4") == "[]"
    assert tuned(CSM_MALLOC_TUNING="0") == "[]"


ARENAS = """
import ctypes, sys, threading
from server.heap import tune_malloc
tune_malloc()
def work():
    for _ in range(300):
        blocks = [bytearray(1000) for _ in range(50)]
threads = [threading.Thread(target=work) for _ in range(12)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" section per arena, on stderr
"""


def test_twelve_busy_threads_share_two_arenas():
    base = {k: v for k, v in os.environ.items() if k not in GLIBC_ENV}
    done = subprocess.run([sys.executable, "-c", ARENAS], capture_output=True, text=True, timeout=60, env=base)
    assert done.returncode == 0, done.stderr
    assert 1 <= sum(line.startswith("Arena ") for line in done.stderr.splitlines()) <= 2, done.stderr


TRIM = """
import ctypes, time
from server.heap import HeapTrimmer
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: 1 MiB blocks come from the heap, whatever glibc's dynamic state
big, pins = [], []
for _ in range(200):  # 200 MiB in the heap, each block followed by a small one that stays
    block = libc.malloc(1 << 20)
    ctypes.memset(block, 1, 1 << 20)
    big.append(block)
    pins.append(libc.malloc(64))
for block in big:
    libc.free(block)
held = rss()
trimmer = HeapTrimmer(0.05).start()
while trimmer.trims < 2:
    time.sleep(0.05)
trimmer.stop()
print(held >> 20, rss() >> 20)
"""


def test_the_trimmer_gives_free_heap_pages_back():
    base = {k: v for k, v in os.environ.items() if k not in GLIBC_ENV}
    done = subprocess.run([sys.executable, "-c", TRIM], capture_output=True, text=True, timeout=60, env=base)
    assert done.returncode == 0, done.stderr
    held, after = map(int, done.stdout.split())
    assert held - after > 150, (held, after)  # the 200 MiB freed inside the heap went back to the OS


def test_every_entry_point_tunes_first():
    from csm_bench import cli as bench_cli
    from csm_bench import voices as bench_voices
    from server import cli

    for module in (cli, bench_cli, bench_voices):
        body = inspect.getsource(module.main).splitlines()
        assert "tune_heap()" in body[1], (module.__name__, body[1])
