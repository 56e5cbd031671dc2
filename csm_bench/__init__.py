"""The benchmarks: csm-bench (csm_bench/cli.py: the reference path against the engine) and
csm-bench-voices (csm_bench/voices.py: stored voices, the prefix cache and conversations over a
loopback server). They drive the server's engine from outside; the server imports none of them."""
