"""The slot KV cache: slots prefilled and decoded together match each slot alone at batch 1."""

import pytest
import torch

from csm_core.checkpoint import load_model
from csm_core.framing import Prompt, text_frames
from csm_core.llama import ROW_MULTIPLE, exact_linear

LENGTHS = [5, 17, 30, 64]
STEPS = 6


@pytest.fixture(scope="module")
def model():
    return load_model("tiny").model


def prompts():
    g = torch.Generator().manual_seed(3)
    return [Prompt(*text_frames(torch.randint(0, 256, (n,), generator=g).tolist())) for n in LENGTHS]


def frames(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randint(0, 2051, (len(LENGTHS), 32), generator=g)


def run(model, slots, prompts_, batch, rows=None):
    """Prefill each prompt into its slot, then decode STEPS frames (rows of `frames`); returns
    c0 logits [steps, n, vocab]."""
    rows = rows or list(range(len(slots)))
    out = []
    hs = [model.prefill(s, p.tokens, p.mask, 0) for s, p in zip(slots, prompts_)]
    out.append(model.c0_logits(torch.cat(hs)))
    pos = [len(p) for p in prompts_]
    for step in range(STEPS):
        f = frames(step)[rows]
        if batch:
            h = model.decode(torch.tensor(slots), f, torch.tensor(pos), [p + 1 for p in pos])
        else:
            h = torch.cat([model.decode(torch.tensor([s]), f[i : i + 1], torch.tensor([pos[i]]), [pos[i] + 1])
                           for i, s in enumerate(slots)])
        out.append(model.c0_logits(h))
        pos = [p + 1 for p in pos]
    return torch.stack(out)


@pytest.mark.parametrize("exact", [True, False])
def test_batched_slots_match_batch_one(model, exact):
    model.set_exact(exact)
    with torch.inference_mode():
        model.setup_caches(8)
        together = run(model, [6, 1, 3, 4], prompts(), batch=True)
        alone = []
        for i, p in enumerate(prompts()):
            model.setup_caches(1)
            alone.append(run(model, [0], [p], batch=False, rows=[i])[:, 0])
    alone = torch.stack(alone, dim=1)
    if exact:
        assert torch.equal(together, alone)
    else:
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_row_invariance_of_cpu_gemm():
    """The property exact mode relies on: padding rows to a multiple of ROW_MULTIPLE makes each
    row's result independent of how many rows share the GEMM. If this fails on a new CPU,
    batch invariance of seeded requests fails with it."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2051, 256, generator=g)
    x = torch.randn(16, 256, generator=g)
    full = exact_linear(x, w)
    for n in range(1, 16):
        assert torch.equal(exact_linear(x[:n], w), full[:n]), n
    assert ROW_MULTIPLE >= 1
