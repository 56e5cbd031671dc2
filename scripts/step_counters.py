"""What one decode step costs the eager path, counted with torch's profiler on CPU: the KV bytes
the backbone's attention reads and the kernels launched, per step (one frame for each slot); and
its wall time without the profiler.

    python scripts/step_counters.py --preset csm-1b --slots 8 --prompt 200 [--exact] \
        [--attention rows|flex] [--graphs] --json out.json

Every slot holds a prompt of --prompt positions (+ i*--stagger for slot i) and decodes one frame
per step, greedily. Counted over --steps steps after one unprofiled step:
- kv_bytes_read: the key and value inputs of every attention kernel (scaled_dot_product_attention)
  plus the cache rows an index_select copies (read once, then read again by the attention), from
  the profiler's recorded shapes; kv_bytes_live: what the slots hold (sum of lengths), the least
  any kernel must read. With --attention flex the count is the block mask's: the compiled kernel
  reads each slot's live 128-key blocks (its eager reference here computes every score instead).
- kernels: leaf operators that touch data (views, allocations and other metadata-only operators
  not counted), the CPU counterpart of the GPU's kernel launches. With --graphs (buckets run
  eagerly here) the kernels inside what CUDA would replay as one graph are counted apart from the
  host's own launches.
- step_s: the median wall time of --timed further steps, without the profiler.
It uses only what the code before this tool had too (model.prefill/decode, csm_core.frame,
set_exact), so the same command on an older checkout (PYTHONPATH) gives the "before" figures.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.append(str(Path(__file__).resolve().parents[1]))  # a checkout not installed (PYTHONPATH comes first)

from csm_core.checkpoint import load_model  # noqa: E402
from csm_core.frame import sample_frames  # noqa: E402
from csm_core.sampling import BatchSampler, SamplingParams  # noqa: E402

ATTENTION_OPS = {"aten::scaled_dot_product_attention"}
NOT_KERNELS = {  # operators that launch no kernel: views, allocations, metadata
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::as_strided", "aten::view", "aten::reshape",
    "aten::_unsafe_view", "aten::transpose", "aten::t", "aten::permute", "aten::expand", "aten::select",
    "aten::slice", "aten::unsqueeze", "aten::squeeze", "aten::unflatten", "aten::flatten", "aten::alias",
    "aten::view_as_real", "aten::view_as_complex", "aten::detach", "aten::detach_", "detach_", "detach",
    "aten::lift_fresh", "aten::resolve_conj", "aten::resolve_neg", "aten::_reshape_alias", "aten::split",
    "aten::chunk", "aten::unbind", "aten::narrow", "aten::set_", "aten::result_type", "aten::is_nonzero",
    "aten::item", "aten::_local_scalar_dense", "aten::contiguous", "aten::to", "aten::type_as", "aten::numpy_T",
}
GRAPH_RANGE = "csm.step.graph"  # csm_core/step.py labels an uncaptured bucket's forward with this


def is_kernel(event) -> bool:
    return not event.cpu_children and event.name not in NOT_KERNELS and not event.name.startswith(("csm.", "## "))


def inside(event, name: str) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == name:
            return True
        parent = parent.cpu_parent
    return False


def kv_bytes(events, elt: int) -> int:
    total = 0
    for e in events:
        if e.name in ATTENTION_OPS:
            total += sum(math.prod(shape) for shape in e.input_shapes[1:3]) * elt  # key, value
        elif e.name == "aten::index_select" and len(e.input_shapes[0]) == 4:  # cache rows [slots, kv, seq, hd]
            shape = e.input_shapes[0]
            total += e.input_shapes[2][0] * math.prod(shape[1:]) * elt
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=200, help="prompt positions of slot 0")
    ap.add_argument("--stagger", type=int, default=37, help="slot i's prompt is longer by i times this")
    ap.add_argument("--steps", type=int, default=2, help="profiled steps")
    ap.add_argument("--timed", type=int, default=3, help="timed steps, after the profiled ones")
    ap.add_argument("--max-seq", type=int, default=2048)
    ap.add_argument("--exact", action="store_true", help="exact mode (the CPU default)")
    ap.add_argument("--attention", choices=("rows", "flex"), help="this checkout's attention kinds (default: rows)")
    ap.add_argument("--graphs", action="store_true", help="this checkout's bucketed step (run eagerly on CPU)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.preset).model
    model.set_exact(args.exact)
    b = args.slots
    step = None
    if args.attention or args.graphs:
        from csm_core.step import DecodeStep

        step = DecodeStep(model, b, args.max_seq, graphs=args.graphs, attention=args.attention)
    else:
        model.setup_caches(b, args.max_seq)
    g = torch.Generator().manual_seed(0)
    lengths = [args.prompt + i * args.stagger for i in range(b)]
    hs = []
    with torch.inference_mode():
        for slot, n in enumerate(lengths):
            tokens = torch.randint(0, 2048, (n, 33), generator=g)
            mask = torch.ones(n, 33, dtype=torch.bool)
            mask[:, 32] = False
            for start in range(0, n, 64):
                h = model.prefill(slot, tokens[start : start + 64], mask[start : start + 64], start)
            hs.append(h)
    params = [SamplingParams(temperature=0.0)] * b
    noise = torch.ones(b, 32, 1)  # greedy: one column, never used
    h = torch.cat(hs)
    slots = list(range(b))

    @torch.inference_mode()
    def one_step(h: torch.Tensor, t: int) -> torch.Tensor:
        if step is not None:
            codes = step.frames(h, params, noise)
            return step.backbone(slots, codes, [n + t for n in lengths])
        sampler = BatchSampler(params, "cpu")
        codes = sample_frames(model, h, sampler, noise)
        positions = [n + t for n in lengths]
        return model.decode(torch.tensor(slots), codes, torch.tensor(positions), [p + 1 for p in positions])

    h = one_step(h, 0)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for t in range(1, 1 + args.steps):
            h = one_step(h, t)
    times = []
    for t in range(1 + args.steps, 1 + args.steps + args.timed):
        t0 = time.perf_counter()
        h = one_step(h, t)
        times.append(time.perf_counter() - t0)
    events = prof.events()
    kernels = [e for e in events if is_kernel(e)]
    elt = model.backbone.norm.scale.element_size()
    layers = model.config.backbone.num_layers
    per_position = 2 * model.config.backbone.num_kv_heads * model.config.backbone.head_dim * elt * layers
    profiled = [[n + t + 1 for n in lengths] for t in range(1, 1 + args.steps)]  # keys each slot sees
    live = sum(map(sum, profiled)) * per_position / args.steps
    flex = step is not None and model.backbone.flex
    if flex:
        from csm_core.llama import FLEX_BLOCK

        blocks = sum(math.ceil(n / FLEX_BLOCK) for step_lengths in profiled for n in step_lengths)
        read = blocks * FLEX_BLOCK * per_position / args.steps
    else:
        read = kv_bytes(events, elt) / args.steps
    report = {
        "preset": args.preset, "slots": b, "lengths": lengths, "exact": args.exact,
        "attention": "flex" if flex else "rows" if step is not None else "model default", "graphs": args.graphs,
        "kv_bytes_read_per_step": int(read), "kv_bytes_live_per_step": int(live),
        "read_over_live": round(read / live, 3),
        "kv_count": "block mask (compiled kernel)" if flex else "profiler shapes",
        "kernels_per_step": len(kernels) / args.steps,
        "step_s": round(statistics.median(times), 4) if times else None,
        "top_kernels": Counter(e.name for e in kernels).most_common(12),
    }
    if args.graphs:
        host = [e for e in kernels if not inside(e, GRAPH_RANGE)]
        report["host_kernels_per_step"] = len(host) / args.steps
        report["graph_replays_per_step"] = sum(e.name == GRAPH_RANGE for e in events) / args.steps
        report["top_host_kernels"] = Counter(e.name for e in host).most_common(12)
    out = json.dumps(report, indent=2)
    print(out)
    if args.json:
        Path(args.json).write_text(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
