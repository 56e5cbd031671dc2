"""csm_core against transformers' CSM (an independent implementation of the same math).

A tiny CsmForConditionalGeneration with random weights is saved with save_pretrained, loaded
by csm_core (transformers layout, q/k permutation undone), written back in the original
layout and loaded again. Under teacher forcing over 8 frames, codebook-0 logits and the
logits of codebooks 1..31 must match transformers within 1e-4, and both layouts must agree
exactly.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import CsmConfig, CsmForConditionalGeneration  # noqa: E402

from csm_core.checkpoint import load_model, save_original  # noqa: E402
from csm_core.framing import Prompt, audio_frames, text_frames  # noqa: E402

LLAMA3 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}
FRAMES = 8


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    cfg = CsmConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, rope_scaling=LLAMA3,
        depth_decoder_config=dict(backbone_hidden_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, rope_scaling=LLAMA3),
    )
    torch.manual_seed(0)
    tf = CsmForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in tf.named_parameters():
            if name.startswith("codec_model."):
                continue
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("norm.weight") else 0.05 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("ckpt")
    tf.save_pretrained(root / "hf")
    hf = load_model(str(root / "hf"))
    save_original(hf.model, root / "orig")
    orig = load_model(str(root / "orig"))
    return tf, hf, orig


def teacher_forced_inputs():
    g = torch.Generator().manual_seed(1)
    ids = [128000] + torch.randint(0, 256, (11,), generator=g).tolist() + [128001]
    t, m = text_frames(ids)
    codes = torch.randint(1, 2048, (32, FRAMES), generator=g)
    return Prompt(t, m), codes


def oracle_logits(tf, prompt, codes):
    """transformers: backbone over prompt + frames, depth decoder for each frame."""
    _, at = audio_frames(codes)
    tokens = torch.cat([prompt.tokens, audio_frames(codes)[0][:FRAMES]])
    mask = torch.cat([prompt.mask, at[:FRAMES]])
    mask[len(prompt):, 32] = False
    with torch.no_grad():
        offsets = torch.arange(32) * 2051
        audio = tf.backbone_model.embed_tokens.embed_audio_tokens(tokens[:, :32] + offsets)  # [S, 32, d]
        text = tf.embed_text_tokens(tokens[:, 32]).unsqueeze(1)
        emb = (torch.cat([audio, text], 1) * mask.unsqueeze(-1)).sum(1).unsqueeze(0)
        h = tf.backbone_model(inputs_embeds=emb).last_hidden_state  # [1, S, d]
        c0 = tf.lm_head(h)[0]
        p = len(prompt)
        depth = []
        for f in range(FRAMES):
            ids = torch.cat([torch.zeros(1, dtype=torch.long), codes[:31, f]]).unsqueeze(0)
            out = tf.depth_decoder(input_ids=ids, backbone_last_hidden_state=h[:, p - 1 + f])
            depth.append(out.logits[0])  # [31, vocab]
    return c0[p - 1 : p - 1 + FRAMES], torch.stack(depth)


def ours_logits(model, prompt, codes):
    model.setup_caches(1)
    with torch.inference_mode():
        h = model.prefill(0, prompt.tokens, prompt.mask, 0)
        c0, depth = [], []
        for f in range(FRAMES):
            c0.append(model.c0_logits(h)[0])
            model.depth_step(h, 0)
            rows = []
            for i in range(1, 32):
                hd = model.depth_step(model.embed_audio(i - 1, codes[i - 1, f : f + 1]), i)
                rows.append(model.codebook_logits(i, hd)[0])
            depth.append(torch.stack(rows))
            pos = len(prompt) + f
            h = model.decode(torch.tensor([0]), codes[:, f].unsqueeze(0), torch.tensor([pos]), [pos + 1])
    return torch.stack(c0), torch.stack(depth)


def test_layouts_detected(checkpoints):
    _, hf, orig = checkpoints
    assert hf.layout == "transformers" and orig.layout == "original"
    assert hf.config.backbone == orig.config.backbone


@pytest.mark.parametrize("exact", [False, True])
def test_logits_match_transformers(checkpoints, exact):
    tf, hf, orig = checkpoints
    prompt, codes = teacher_forced_inputs()
    want_c0, want_depth = oracle_logits(tf, prompt, codes)
    results = []
    for lm in (hf, orig):
        lm.model.set_exact(exact)
        results.append(ours_logits(lm.model, prompt, codes))
    for c0, depth in results:
        torch.testing.assert_close(c0, want_c0, atol=1e-4, rtol=0)
        torch.testing.assert_close(depth, want_depth, atol=1e-4, rtol=0)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
