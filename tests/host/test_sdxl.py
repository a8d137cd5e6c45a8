"""SDXL family: the nodes on ComfyUI's real SDXL model class and SDXL CLIP (clip_l + clip_g, pooled/ADM
conditioning), built at slim size in memory (bench/comfy_slim_models.py says why not from a checkpoint)."""
import json

import pytest
import torch

pytest.importorskip("comfy_api")

L_KEY = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
G_KEY = "conditioner.embedders.1.model.token_embedding.weight"
KV = ("attn2.to_k.weight", "attn2.to_v.weight")


def run(node, **kw):
    with torch.inference_mode():
        return node.execute(**kw).args


@pytest.fixture(scope="module")
def sdxl(loaded, teach):
    from continual_concepts.bench.comfy_slim_models import build_slim_sdxl

    with torch.inference_mode():
        model, clip = build_slim_sdxl()
    # the SD VAE: same architecture as SDXL's; only the latent scale differs, which does not matter here
    return teach(model, clip, loaded[2], budget_pct=1.0)


def test_pooled_vector_rides_in_the_context_and_conditions_the_unet(sdxl):
    from continual_concepts.core.backends.comfy_backend import ComfyBackend

    with torch.inference_mode(False):
        b = ComfyBackend(sdxl["model"].clone(), sdxl["clip"].clone(), sdxl["vae"])
        ctx = b.encode_text(["a photo of sks", "a dog"])
        assert ctx.shape == (2, 78, 2048) and b.text_context(ctx).shape == (2, 77, 2048)
        x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        t, eps = torch.tensor([500, 500]), torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref = b.noise_and_predict_eps(x0, t, eps, ctx)
            other = ctx.clone()
            other[:, -1] = ctx.flip(0)[:, -1]  # same token context, the other prompt's pooled vector
            swapped = b.noise_and_predict_eps(x0, t, eps, other)
    assert not torch.allclose(ref, swapped), "the pooled vector did not reach the UNet (no ADM conditioning)"


def test_select_and_train_on_sdxl_patch_only_kv_rows_and_both_token_rows(sdxl):
    rep = json.loads(sdxl["report"])
    assert 0 < rep["selected_params"] <= rep["budget_params"]
    model, m2, c2 = sdxl["model"], sdxl["m2"], sdxl["c2"]
    assert not model.patches and not sdxl["clip"].patcher.patches, "inputs got patches"
    assert m2.patches and all("attn2.to_k" in k or "attn2.to_v" in k for k in m2.patches)
    token = sdxl["mem"].concepts[0].token
    assert token.shape == (768 + 1280,)
    assert sorted(k.split(".")[0] for k in c2.patcher.patches) == ["clip_g", "clip_l"]


def test_probe_on_sdxl(sdxl):
    from continual_concepts.nodes.probe_node import DCScoreProbe

    js, chart, pred = run(DCScoreProbe, model=sdxl["m2"], clip=sdxl["c2"], vae=sdxl["vae"], images=sdxl["images"],
                          prompts="a dog\n", timesteps=2, seed=0, memory=sdxl["mem"])
    data = json.loads(js)
    assert data["candidates"] == ["a photo", "a photo of sks", "a dog"]
    assert all(abs(sum(p) - 1) < 1e-4 for p in data["probs"])


def test_merge_sdxl_checkpoint_lora_and_two_part_embedding(sdxl, comfy_dirs, lora_kv):
    from safetensors.torch import load_file

    from continual_concepts.nodes.merge_node import MergeIntoCheckpoint

    with torch.inference_mode():
        res = MergeIntoCheckpoint.execute(model=sdxl["m2"], clip=sdxl["c2"], vae=sdxl["vae"], memory=sdxl["mem"],
                                          filename_prefix="cc/sdxl")
    path = res.args[0]
    written = res.ui["text"]  # checkpoint, memory, then each LoRA (models/loras) and embedding (models/embeddings)
    sd = load_file(path)
    rows = sdxl["neurons"].rows
    assert {t.dtype for t in sd.values() if t.is_floating_point()} == {torch.float16}  # save_dtype's default
    for k, v in sdxl["before"].items():  # UNet: only the selected K/V rows changed (at the file's precision)
        changed = (sd["model." + k] != v.half()).any(1).nonzero().flatten().tolist()
        assert set(changed) <= set(rows[k[: -len(".weight")]].tolist()), k
    assert any((sd["model." + k] != v.half()).any() for k, v in sdxl["before"].items())
    tid = sdxl["clip"].tokenize("sks")["l"][0][1][0]
    token = sdxl["mem"].concepts[0].token
    assert torch.allclose(sd[L_KEY][tid].float(), token[:768], atol=1e-2)  # the trigger works from the checkpoint
    assert torch.allclose(sd[G_KEY][tid].float(), token[768:], atol=1e-2)
    (emb_file,) = [f for f in written if "/embeddings/" in f and f.endswith(".sks.safetensors")]
    emb = load_file(emb_file)
    assert emb["clip_l"].shape == (1, 768) and emb["clip_g"].shape == (1, 1280)  # ComfyUI's SDXL embedding keys

    # the per-concept LoRA, loaded the way LoraLoader loads it, reproduces the trained K/V rows on the base model
    (lora_file,) = [f for f in written if "/loras/" in f and f.endswith(".a.safetensors")]
    applied = lora_kv(sdxl["model"], load_file(lora_file))
    for k, v in applied.items():
        assert torch.allclose(v, sd["model." + k].float(), atol=2e-3), k
    assert any(not torch.equal(applied[k], v.float()) for k, v in sdxl["before"].items())

    # 'as loaded': what ComfyUI holds (fp32 here, on a CPU), as its Save Checkpoint writes it
    with torch.inference_mode():
        held = MergeIntoCheckpoint.execute(model=sdxl["m2"], clip=sdxl["c2"], vae=sdxl["vae"], memory=sdxl["mem"],
                                           filename_prefix="cc/held", save_dtype="as loaded").args[0]
    sd32 = load_file(held)
    for k, v in sdxl["before"].items():
        assert sd32["model." + k].dtype == v.dtype
        changed = (sd32["model." + k] != v).any(1).nonzero().flatten().tolist()
        assert set(changed) <= set(rows[k[: -len(".weight")]].tolist()), k
    assert torch.equal(sd32["model." + k].half(), sd["model." + k])
