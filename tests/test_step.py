"""The decode step (csm_core/step.py) on CPU, fp32: every path (rows, flex attention, fixed-shape
batch buckets) makes the same greedy frames as the exact path (the CPU default) and as the
one-request reference path (csm_core.generate), on the tiny and bench presets. Flex runs its eager
reference in the paths (one test compiles it, as CUDA does, with inductor's CPU backend); the
buckets run what CUDA captures, without the capture."""

from collections import Counter
from dataclasses import dataclass, field

import pytest
import torch

from csm_core.checkpoint import load_model
from csm_core.framing import Prompt
from csm_core.generate import generate, prefill_slot
from csm_core.llama import FLEX_BLOCK
from csm_core.sampling import SamplingParams, frame_noise
from csm_core.step import DecodeStep, batch_buckets

GREEDY = SamplingParams(temperature=0.0)
MAX_SEQ = 256
CHUNK = 32  # prefill chunk: the longer prompts take several
FRAMES = 8


def synthetic_prompt(n: int, seed: int) -> Prompt:
    """A text turn then audio frames (random codes), n positions. tokens, mask [n, 33]"""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 2048, (n, 33), generator=g)
    tokens[:, 32] = torch.randint(0, 128_000, (n,), generator=g)
    mask = torch.zeros(n, 33, dtype=torch.bool)
    text = max(1, n // 3)
    mask[:text, 32] = True
    mask[text:, :32] = True
    return Prompt(tokens, mask)


@dataclass(eq=False)
class Stream:
    prompt: Prompt
    slot: int
    frames: list[torch.Tensor] = field(default_factory=list)  # [32] each


def run_streams(model, step: DecodeStep, prompts: list[Prompt], slots: list[int], frames: int) -> list[torch.Tensor]:
    """Continuous batching as the engine runs it: stream i is admitted at step i (its whole prompt
    prefilled in CHUNK pieces) while the earlier ones decode; the prompts that complete come first
    in the frame batch, then the decoding slots. Greedy. Returns each stream's frames [frames, 32]."""
    streams = [Stream(p, s) for p, s in zip(prompts, slots)]
    for t in range(len(streams) + frames):
        rows, hs = [], []
        if t < len(streams):
            new = streams[t]
            n = len(new.prompt)
            for start in range(0, n, CHUNK):
                h = prefill_slot(model, new.slot, new.prompt, start, min(start + CHUNK, n))
            rows.append(new)
            hs.append(h)
        decoding = [s for s in streams[: min(t, len(streams))] if 0 < len(s.frames) < frames]
        if decoding:
            last = torch.stack([s.frames[-1] for s in decoding])  # [b, 32]
            positions = [len(s.prompt) + len(s.frames) - 1 for s in decoding]
            hs.append(step.backbone([s.slot for s in decoding], last, positions))
            rows += decoding
        if not rows:
            continue
        noise = frame_noise(torch.tensor([streams.index(s) for s in rows]), torch.tensor([len(s.frames) for s in rows]), 1)
        codes = step.frames(torch.cat(hs), [GREEDY] * len(rows), noise)
        for s, c in zip(rows, codes):
            s.frames.append(c)
    return [torch.stack(s.frames) for s in streams]


PROMPT_LENS = (9, 70, 33, 140)  # one shorter than a chunk, several over FLEX_BLOCK at the end
SLOTS = (2, 0, 3, 1)  # not in admission order: rows and cache rows differ


@pytest.fixture(scope="module", params=["tiny", "bench"])
def case(request):
    """The exact path's frames (today's CPU path) for one preset, checked against generate()."""
    preset = request.param
    prompts = [synthetic_prompt(n, seed=i) for i, n in enumerate(PROMPT_LENS)]
    model = load_model(preset).model
    model.set_exact(True)
    want = run_streams(model, DecodeStep(model, 4, MAX_SEQ), prompts, list(SLOTS), FRAMES)
    ref = load_model(preset).model
    ref.setup_caches(1, MAX_SEQ)
    ref.set_exact(True)
    for prompt, frames in zip(prompts, want):
        result = generate(ref, prompt, max_frames=FRAMES, sampling=GREEDY, prefill_chunk=CHUNK)
        assert result.finish_reason == "length"  # random weights: the end frame is vanishingly rare
        assert torch.equal(result.frames, frames)
    return preset, prompts, want


@pytest.mark.parametrize("attention, graphs", [("rows", False), ("flex", False), ("flex", True)],
                         ids=["rows", "flex", "flex-buckets"])
def test_every_path_makes_the_exact_paths_greedy_frames(case, attention, graphs):
    preset, prompts, want = case
    model = load_model(preset).model  # exact mode off: plain GEMMs, batched attention
    step = DecodeStep(model, 4, MAX_SEQ, graphs=graphs, attention=attention)
    got = run_streams(model, step, prompts, list(SLOTS), FRAMES)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_buckets_sample_each_row_with_its_own_parameters():
    """Fixed-shape buckets (padded rows, the whole vocabulary ranked, noise written into a
    bucket-wide buffer) sample exactly as the eager sampler, row by row."""
    model = load_model("tiny").model
    eager = DecodeStep(model, 8, MAX_SEQ, attention="flex")
    params = [SamplingParams(0.9, 50), SamplingParams(0.0, 1), SamplingParams(1.3, 7), SamplingParams(0.7, 2051),
              SamplingParams(1.0, 1)]
    g = torch.Generator().manual_seed(0)
    h = torch.randn(len(params), model.config.backbone.embed_dim, generator=g)
    noise = frame_noise(torch.arange(len(params)), torch.zeros(len(params), dtype=torch.long), 2051)
    want = eager.frames(h, params, noise)
    bucketed = DecodeStep(model, 8, MAX_SEQ, graphs=True)
    for _ in range(2):  # the second call finds the first call's noise in the buffer's unused columns
        assert torch.equal(bucketed.frames(h, params, noise), want)
        assert torch.equal(bucketed.frames(h[:2], params[:2], noise[:2]), want[:2])


def test_bucket_padding_touches_only_the_scratch_row():
    model = load_model("tiny").model
    step = DecodeStep(model, 4, MAX_SEQ, graphs=True)
    caches = [layer.attn.cache for layer in model.backbone.layers]
    assert caches[0].k.shape[0] == 5  # 4 slots + the scratch row
    before = [(c.k.clone(), c.v.clone()) for c in caches]
    frames = torch.randint(0, 2048, (3, 32))
    step.backbone([3, 0, 2], frames, [10, 200, 7])  # bucket of 4 rows: one padding row
    for c, (k, v) in zip(caches, before):
        changed = ((c.k != k) | (c.v != v)).flatten(2).any(-1).nonzero().tolist()  # [(row, kv_head)]
        rows = {r for r, _ in changed}
        assert rows == {3, 0, 2, 4}  # the three slots and the scratch row, nothing else
        for slot, pos in ((3, 10), (0, 200), (2, 7), (4, 0)):
            assert ((c.k[slot] != k[slot]).any(-1).any(0).nonzero().flatten().tolist()) == [pos]


def test_decode_mask_holds_each_rows_live_blocks():
    model = load_model("tiny").model
    model.setup_caches(4, MAX_SEQ)
    mask = model.backbone.decode_mask.update(torch.tensor([2, 0]), torch.tensor([FLEX_BLOCK, 5]))
    assert mask.kv_num_blocks.flatten().tolist() == [1, 0, 2, 0]  # position 128 is the second block's first key
    assert model.backbone.decode_mask.lengths.tolist() == [6, 0, FLEX_BLOCK + 1, 0]
    assert mask.seq_lengths == (1, MAX_SEQ)


def test_batch_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(100) == [1, 2, 4, 8, 16, 32, 64, 96, 100]
    assert batch_buckets(256)[-3:] == [192, 224, 256]


def test_graphs_need_flex_and_exact_needs_rows():
    model = load_model("tiny").model
    with pytest.raises(ValueError, match="flex attention"):
        DecodeStep(model, 2, MAX_SEQ, graphs=True, attention="rows")
    model.set_attention("flex")
    with pytest.raises(ValueError, match="rows attention"):
        model.set_exact(True)


def test_compiled_flex_decode_reads_the_live_keys_and_compiles_once():
    """The compiled FlexAttention that CUDA runs, here through inductor's CPU backend (~25 s of
    compile): it equals one SDPA call per slot, and a second DecodeMask (a new engine's, with a
    mask_mod closure of its own) reuses the compiled kernel."""
    import torch._dynamo
    import torch.nn.functional as F

    from csm_core.llama import DecodeMask, _compiled_flex_attention

    rows, heads, kv_heads, dim, seq = 5, 4, 2, 64, 512
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(2, rows, kv_heads, seq, dim, generator=g)
    slots, positions = torch.tensor([3, 0, 1]), torch.tensor([FLEX_BLOCK + 2, 7, 300])
    q = torch.randn(3, heads, 1, dim, generator=g)
    q_rows = q.new_zeros(rows, heads, 1, dim)
    q_rows[slots] = q
    flex = _compiled_flex_attention()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    out = flex(q_rows, k, v, block_mask=DecodeMask(rows, seq, q.device).update(slots, positions), enable_gqa=True)
    for i, (slot, n) in enumerate(zip(slots.tolist(), (positions + 1).tolist())):
        want = F.scaled_dot_product_attention(q[i : i + 1], k[slot : slot + 1, :, :n], v[slot : slot + 1, :, :n],
                                              enable_gqa=True)
        torch.testing.assert_close(out[slot : slot + 1], want)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    # Once more with the same mask: inductor's first compile can leave the intra-op thread count
    # changed after other tests ran engines here, and dynamo guards on it (one recompile, then none).
    flex(q_rows, k, v, block_mask=DecodeMask(rows, seq, q.device).update(slots, positions), enable_gqa=True)
    torch._dynamo.utils.counters.clear()
    flex(q_rows, k, v, block_mask=DecodeMask(rows, seq, q.device).update(slots[:1], positions[:1]), enable_gqa=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0  # a new mask reuses the kernel


def test_host_kernels_per_step_do_not_grow_with_the_batch():
    """A decode step through the engine's ModelRunner with the bucketed (graphed) step: what runs
    outside the buckets (what CUDA would launch from the host besides the two graph replays) is
    the same set of kernels for 1 row as for 8: the rows' inputs, their noise and the EOS check are
    one batched operation each, not one per request. Counted with torch's profiler, as
    scripts/step_counters.py counts them."""
    from torch.profiler import ProfilerActivity, profile

    from server.engine.request import Request, RequestStatus
    from server.engine.runner import ModelRunner
    from server.engine.scheduler import SchedulerOutput
    from server.engine.types import SynthesisParams
    sys_path_scripts()
    from step_counters import GRAPH_RANGE, inside, is_kernel

    model = load_model("tiny").model
    runner = ModelRunner(model, 8, MAX_SEQ, cuda_graphs=False)
    runner.step = DecodeStep(model, 8, MAX_SEQ, graphs=True)  # its buckets, run eagerly on CPU

    def host_kernels(rows: int) -> Counter:
        reqs = []
        for i in range(rows):
            req = Request(i, SynthesisParams(text="x"), None, seed=i, max_frames=100, t_arrival=0.0,
                          status=RequestStatus.DECODING, prompt_len=10 + i, slot=i, num_frames=1)
            req.state = runner.new_state(synthetic_prompt(10 + i, i), SamplingParams(0.9, 50 - i), i)
            req.state.last_frame = torch.randint(1, 2048, (32,))
            reqs.append(req)
        runner.run(SchedulerOutput(decode=reqs))  # warm
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            result = runner.run(SchedulerOutput(decode=reqs))
        assert result.codes.shape == (rows, 32) and all(r.state.frames_drawn == 2 for r in reqs)
        events = prof.events()
        assert sum(e.name == GRAPH_RANGE for e in events) == 2  # backbone, frame
        return Counter(e.name for e in events if is_kernel(e) and not inside(e, GRAPH_RANGE))

    one, eight = host_kernels(1), host_kernels(8)
    print(f"\nhost kernels per decode step: {sum(one.values())} at 1 row, {sum(eight.values())} at 8")
    assert one == eight, (one, eight)


def sys_path_scripts() -> None:
    import sys
    from pathlib import Path

    scripts = str(Path(__file__).resolve().parents[1] / "scripts")
    if scripts not in sys.path:
        sys.path.append(scripts)
