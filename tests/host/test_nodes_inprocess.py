"""The nodes on ComfyUI's real ModelPatcher / CLIP / VAE, run under inference_mode as ComfyUI runs them."""
import json

import pytest
import torch

pytest.importorskip("comfy_api")

KV = ("attn2.to_k.weight", "attn2.to_v.weight")


from conftest import run_node as run
from conftest import run_node_ui


def test_select_reports_and_pictures(trained):
    rep = json.loads(trained["report"])
    assert 0 < rep["selected_params"] <= rep["budget_params"]
    assert "64×64 px, far below this model's native 512 px" in rep["warning"]  # the fixture trains on 64 px images
    assert trained["nmap"].ndim == 4 and trained["nmap"].shape[-1] == 3


def test_train_returns_patched_clones_and_leaves_input_untouched(trained):
    model, m2 = trained["model"], trained["m2"]
    assert m2 is not model and not model.patches, "input MODEL got patches"
    assert not trained["clip"].patcher.patches, "input CLIP got patches"
    assert trained["c2"] is not trained["clip"]
    keys = set(m2.patches)
    assert keys and all("attn2.to_k" in k or "attn2.to_v" in k for k in keys)
    rows = trained["neurons"].rows
    for k, plist in m2.patches.items():
        diff = plist[0][1][0]
        nz = diff.abs().sum(1).nonzero().flatten().tolist()
        assert set(nz) <= set(rows[k[: -len(".weight")]].tolist())
    import comfy.model_management as mm

    mm.load_models_gpu([model])  # the input model, loaded again, still has its original weights
    after = {k: v for k, v in model.model.state_dict().items() if k.endswith(KV)}
    assert all(torch.equal(trained["before"][k], after[k]) for k in after)
    assert trained["loss"].shape[-1] == 3 and len(trained["mem"].concepts) == 1


def test_cancel_stops_after_one_step_and_leaves_nothing_applied(trained):
    """Cancel (ComfyUI's interrupt flag) raises from the first step's progress update; no hook stays on the
    shared modules, the inputs carry no patches and a second run is unaffected."""
    import comfy.model_management as mm

    from continual_concepts.nodes.train_node import ContinualTrainStep

    t = trained
    kw = dict(model=t["model"], clip=t["clip"], vae=t["vae"], images=t["images"], neurons=t["neurons"],
              prompt="a photo of sks", trigger="sks", name="c", steps=10_000, lr=1e-2, lam_prev=0, lam_base=0,
              lam_ewc=0, lam_dsc=0, dc_every=1, seed=0)
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        run(ContinualTrainStep, **kw)
    assert not mm.processing_interrupted(), "the interrupt was not consumed"
    dm = t["model"].model.diffusion_model
    assert not any(m._forward_hooks for n, m in dm.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v")))
    assert not t["model"].patches and not t["clip"].patcher.patches
    m2 = run(ContinualTrainStep, **{**kw, "steps": 1})[0]
    assert m2.patches


def test_gradient_checkpointing_gives_the_same_concept_and_is_undone(trained):
    """Checkpointing wraps the shared UNet blocks only while training; the learned rows and token are the same."""
    from continual_concepts.nodes.train_node import ContinualTrainStep

    t = trained
    kw = dict(model=t["m2"], clip=t["c2"], vae=t["vae"], images=t["images"], neurons=t["neurons"],
              prompt="a photo of ohwx", trigger="ohwx", name="c", steps=2, lr=1e-2, lam_prev=1.0, lam_base=0.1,
              lam_ewc=1.0, lam_dsc=1.0, dc_every=1, seed=0, batch_size=2, memory=t["mem"])
    mem_plain = run(ContinualTrainStep, **kw, gradient_checkpointing="off")[2]
    mem_ckpt = run(ContinualTrainStep, **kw, gradient_checkpointing="on")[2]
    plain, ckpt = mem_plain.concepts[-1], mem_ckpt.concepts[-1]
    for layer, d in plain.delta.items():
        assert torch.allclose(d, ckpt.delta[layer], atol=1e-6), layer
    assert torch.allclose(plain.token, ckpt.token, atol=1e-6) and plain.delta
    assert mem_plain.fisher and set(mem_plain.fisher) == set(mem_ckpt.fisher)
    for layer, f in mem_plain.fisher.items():  # the DC Fisher's layer-by-layer gradients, also read under recompute
        assert torch.allclose(f, mem_ckpt.fisher[layer], rtol=1e-4, atol=1e-6 * float(f.max())), layer
    dm = t["model"].model.diffusion_model
    blocks = [*dm.input_blocks, dm.middle_block, *dm.output_blocks]
    assert not any("forward" in vars(b) for b in blocks)
    from continual_concepts.nodes.common import training_backend

    with training_backend(t["model"], t["clip"], t["vae"]) as b:
        b.enable_gradient_checkpointing()
        assert all("forward" in vars(blk) for blk in blocks)  # what the training above ran with
    assert not any("forward" in vars(blk) for blk in blocks)


def test_comfyui_own_dataset_loader_feeds_our_nodes(trained, tmp_path):
    """ComfyUI 0.3.64's 'Load Image Dataset from Folder' (comfy_extras/nodes_train.py, experimental) reads
    subfolders of input/; its IMAGE batch goes straight into our nodes."""
    import folder_paths
    import numpy as np
    from comfy_extras.nodes_train import LoadImageSetFromFolderNode
    from PIL import Image

    from continual_concepts.nodes.probe_node import DCScoreProbe

    (tmp_path / "concept").mkdir()
    for i in range(2):
        rgb = (np.random.default_rng(i).random((64, 64, 3)) * 255).astype("uint8")
        Image.fromarray(rgb).save(tmp_path / "concept" / f"{i}.png")
    before = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    try:
        (images,) = LoadImageSetFromFolderNode().load_images("concept", "None")
    finally:
        folder_paths.set_input_directory(before)
    js, _, pred = run(DCScoreProbe, model=trained["m2"], clip=trained["c2"], vae=trained["vae"], images=images,
                      prompts="a dog", timesteps=2, seed=0, memory=trained["mem"])
    assert images.shape == (2, 64, 64, 3) and len(json.loads(js)["probs"]) == 2 and len(pred.splitlines()) == 2


def _encode(clip, text, tokens=None):
    from continual_concepts.core.backends.comfy_backend import override_tokens

    return clip.encode_from_tokens(override_tokens(clip.tokenize(text), tokens or {}))


def test_train_learns_the_trigger_token_into_the_clip_output(trained):
    """The token is trained inside ComfyUI (through its in-place CLIP forward) and travels as a CLIP patch."""
    token = trained["mem"].concepts[0].token
    assert token is not None and token.shape == (768,)
    key = "clip_l.transformer.text_model.embeddings.token_embedding.weight"
    base = trained["clip"].cond_stage_model.state_dict()[key]
    tid = trained["clip"].tokenize("sks")["l"][0][1][0]
    assert not torch.allclose(token, base[tid].float()), "the token did not move"
    before = _encode(trained["clip"], "a photo of sks")
    after = _encode(trained["c2"], "a photo of sks")
    with_override = _encode(trained["clip"], "a photo of sks", {"l": {tid: token}})
    moved, err = (after - before).abs().max(), (after - with_override).abs().max()
    assert err < 0.01 * moved, (err, moved)  # equal up to the patch's rounding into the stored weight dtype
    assert torch.equal(_encode(trained["clip"], "a photo of sks"), before), "input CLIP changed"


def test_token_gradient_through_comfy_clip_matches_finite_difference(loaded):
    from continual_concepts.core.backends.comfy_backend import ComfyBackend

    model, clip, vae = loaded
    with torch.inference_mode(False), torch.enable_grad():
        b = ComfyBackend(model.clone(), clip.clone(), vae)
        b.prepare_for_training()
        tok = b.token_row("sks").requires_grad_(True)
        w = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1))
        (b.encode_text(["a photo of sks"], {"sks": tok}) * w).sum().backward()
        d = torch.randn(768, generator=torch.Generator().manual_seed(2))
        h = 1e-3
        with torch.no_grad():
            f = lambda v: (b.encode_text(["a photo of sks"], {"sks": v}) * w).sum().double()  # noqa: E731
            fd = (f(tok + h * d) - f(tok - h * d)) / (2 * h)
        b.close()
    assert tok.grad.abs().sum() > 0
    assert abs(float(tok.grad @ d) - float(fd)) <= 2e-2 * abs(float(fd)) + 1e-4, (float(tok.grad @ d), float(fd))


def test_training_recomputes_clip_layers_same_token_gradient_less_kept(loaded):
    """A training backend runs each CLIP layer under checkpointing (ComfyUI keeps an fp32 cast of every CLIP weight
    for the backward pass otherwise): the token's gradient is the same, autograd keeps less, close() undoes it."""
    from comfy.clip_model import CLIPLayer

    from continual_concepts.core.backends.comfy_backend import ComfyBackend
    from continual_concepts.core.checkpointing import saved_bytes

    model, clip, vae = loaded
    w = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1))
    grads, kept = [], []
    with torch.inference_mode(False), torch.enable_grad():
        for prepare in (False, True):
            b = ComfyBackend(model.clone(), clip.clone(), vae)
            if prepare:
                b.prepare_for_training()
            tok = b.token_row("sks").requires_grad_(True)
            loss = lambda: (b.encode_text(["a photo of sks"], {"sks": tok}) * w).sum()  # noqa: E731
            kept.append(saved_bytes(loss))
            loss().backward()
            grads.append(tok.grad)
            b.close()
    assert torch.allclose(grads[1], grads[0], rtol=1e-5, atol=1e-7 * float(grads[0].abs().max()))
    assert kept[1] < 0.5 * kept[0], kept
    assert not any("forward" in vars(m) for m in clip.cond_stage_model.modules() if isinstance(m, CLIPLayer))


def test_probe_json_and_predicted(trained):
    from continual_concepts.nodes.probe_node import DCScoreProbe

    js, chart, pred = run(DCScoreProbe, model=trained["m2"], clip=trained["c2"], vae=trained["vae"],
                          images=trained["images"], prompts="a dog\n", timesteps=2, seed=0, memory=trained["mem"])
    data = json.loads(js)
    assert data["candidates"] == ["a photo", "a photo of sks", "a dog"]
    assert all(abs(sum(p) - 1) < 1e-4 for p in data["probs"]) and len(pred.splitlines()) == 2


def test_memory_info_shows_the_table_memory_show_prints(trained, tmp_path, capsys):
    from continual_concepts.core.cli import main
    from continual_concepts.nodes.info_node import ConceptMemoryInfo

    mem = trained["mem"]
    res = run_node_ui(ConceptMemoryInfo, memory=mem)
    (text,) = res.args
    assert res.ui["text"] == [text]
    rec = mem.concepts[0]
    assert f"base model fingerprint: {mem.fingerprint[:16]}" in text and "concepts: 1" in text
    row = text.splitlines()[-1].split()
    assert row[:5] == ["a", "sks", "a", "photo", "of"] and row[6] == str(rec.n_rows) and row[8] == "3"  # 3 steps
    mem.save(tmp_path / "m.safetensors")
    capsys.readouterr()
    assert main(["memory", "show", str(tmp_path / "m.safetensors")]) == 0
    shown = capsys.readouterr().out.strip().splitlines()
    assert shown[0].startswith("file: ") and text.splitlines()[1:] == shown[1:]  # the CLI adds the file and its size


def test_merge_writes_each_file_where_comfyui_loaders_look(trained, comfy_dirs, lora_kv):
    """Checkpoint in output/checkpoints/, LoRA in loras, embedding in embeddings (as the stock loaders list them),
    memory in output/concept_memory/; the report names every file; files are 0644; only selected rows changed."""
    import os

    import comfy.sd
    import folder_paths
    from safetensors.torch import load_file

    from continual_concepts.nodes.merge_node import MergeIntoCheckpoint

    out = comfy_dirs / "output"
    res = run_node_ui(MergeIntoCheckpoint, model=trained["m2"], clip=trained["c2"], vae=trained["vae"],
                                      memory=trained["mem"], filename_prefix="cc/test")
    path = res.args[0]
    written = res.ui["text"]
    assert written == [str(out / "checkpoints/cc/test_00001.safetensors"),
                       str(out / "concept_memory/cc/test_00001.safetensors"),
                       str(comfy_dirs / "models/loras/cc/test_00001.a.safetensors"),
                       str(comfy_dirs / "models/embeddings/cc/test_00001.sks.safetensors")]
    assert path == written[0] and all(os.stat(f).st_mode & 0o777 == 0o644 for f in written)
    assert "cc/test_00001.a.safetensors" in folder_paths.get_filename_list("loras")
    assert "cc/test_00001.sks.safetensors" in folder_paths.get_filename_list("embeddings")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        ["checkpoints/cc/test_00001.safetensors", "concept_memory/cc/test_00001.safetensors"]
    sd = load_file(path)
    rows = trained["neurons"].rows
    for k, v in trained["before"].items():
        changed = (sd["model." + k].float() != v.half().float()).any(1).nonzero().flatten().tolist()
        assert set(changed) <= set(rows[k[: -len(".weight")]].tolist()), k
    assert any((sd["model." + k].float() != v.half().float()).any() for k, v in trained["before"].items())
    m, c, v, _ = comfy.sd.load_checkpoint_guess_config(path)
    assert type(m.model.model_config).__name__ == "SD15"
    applied = lora_kv(trained["model"], load_file(written[2]))  # as the stock LoraLoader does
    for k, v in applied.items():
        assert torch.allclose(v, sd["model." + k].float(), atol=2e-3), k
    assert any(not torch.equal(applied[k], v.float()) for k, v in trained["before"].items())
    token = trained["mem"].concepts[0].token
    tid = trained["clip"].tokenize("sks")["l"][0][1][0]
    emb = sd["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
    assert torch.allclose(emb[tid].float(), token, atol=1e-2), "merged checkpoint lacks the learned token"
    assert load_file(written[3])["emb_params"].shape == (1, 768)
    again = run(MergeIntoCheckpoint, model=trained["m2"], clip=trained["c2"], vae=trained["vae"],
                memory=trained["mem"], filename_prefix="cc/test")[0]
    assert again.endswith("test_00002.safetensors")  # never overwrite: the next counter for every file


def tiny_sd3():
    """ComfyUI's real SD3 (MMDiT) model class at toy size: a DiT family we refuse."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    cfg = comfy.supported_models.SD3(dict(
        in_channels=16, out_channels=16, patch_size=2, depth=2, adm_in_channels=2048, pos_embed_max_size=32,
        num_patches=1024, context_embedder_config={"target": "torch.nn.Linear",
                                                   "params": {"in_features": 4096, "out_features": 128}}))
    cfg.set_inference_dtype(torch.float32, None)
    return comfy.model_patcher.ModelPatcher(cfg.get_model({}), load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


@pytest.mark.parametrize("case", ["empty_images", "zero_steps", "corrupt_memory", "empty_candidates", "bad_trigger",
                                  "prefix_escape", "unsupported_model", "inpainting_model"])
def test_bad_input_gives_one_clear_error(trained, case, tmp_path):
    from continual_concepts.core.memory import ContinualMemory
    from continual_concepts.nodes.merge_node import MergeIntoCheckpoint
    from continual_concepts.nodes.probe_node import DCScoreProbe
    from continual_concepts.nodes.train_node import ContinualTrainStep

    t = trained
    common = dict(model=t["model"], clip=t["clip"], vae=t["vae"])
    train_kw = dict(common, images=t["images"], neurons=t["neurons"], prompt="a photo of sks", trigger="sks", name="b",
                    steps=1, lr=1e-2, lam_prev=0, lam_base=0, lam_ewc=0, lam_dsc=0, dc_every=1, seed=0)
    if case == "empty_images":
        with pytest.raises(ValueError, match="images"):
            run(ContinualTrainStep, **{**train_kw, "images": torch.zeros(0, 64, 64, 3)})
    elif case == "zero_steps":
        with pytest.raises(ValueError, match="steps"):
            run(ContinualTrainStep, **{**train_kw, "steps": 0})
    elif case == "corrupt_memory":
        p = tmp_path / "m.safetensors"
        p.write_bytes(b"\x00" * 64)
        with pytest.raises(ValueError, match="corrupt"):
            ContinualMemory.load(p)
    elif case == "empty_candidates":
        with pytest.raises(ValueError, match="candidates"):
            run(DCScoreProbe, **common, images=t["images"], prompts="  \n", timesteps=1, seed=0)
    elif case == "bad_trigger":
        with pytest.raises(ValueError, match="trigger 'not a word' is 3 tokens"):
            run(ContinualTrainStep, **{**train_kw, "trigger": "not a word", "prompt": "a photo of not a word"})
    elif case == "prefix_escape":
        import folder_paths

        folder_paths.set_output_directory(str(tmp_path))
        with pytest.raises(ValueError, match="filename_prefix"):
            run(MergeIntoCheckpoint, model=t["m2"], clip=t["c2"], vae=t["vae"], memory=t["mem"],
                filename_prefix="../../escape")
    elif case == "unsupported_model":
        from continual_concepts.nodes.select_node import SelectConceptNeurons

        with pytest.raises(ValueError, match=r"SD3 .* DiT families"):
            run(SelectConceptNeurons, **{**common, "model": tiny_sd3()}, images=t["images"], prompt="a photo of sks",
                trigger="sks", budget_pct=0.5, calibration_prompts=2, general_scoring="activation", seed=0)
    elif case == "inpainting_model":
        from continual_concepts.bench.comfy_slim_models import build_slim_sdxl
        from continual_concepts.nodes.select_node import SelectConceptNeurons

        inpaint, clip = build_slim_sdxl()
        inpaint.model.set_inpaint()
        with pytest.raises(ValueError, match=r"SDXL: .*mask, masked_image"):
            run(SelectConceptNeurons, model=inpaint, clip=clip, vae=t["vae"], images=t["images"], prompt="a photo of sks",
                trigger="sks", budget_pct=0.5, calibration_prompts=2, general_scoring="activation", seed=0)
    assert not t["model"].patches


def test_training_freezes_every_host_parameter_and_restores_it(slim_ckpt):
    """A model loaded outside inference mode keeps trainable parameters: a train step must give no .grad to any
    UNet or CLIP parameter (only the row deltas and the token train), and closing the backend restores the flags.
    (Its own load: the shared fixture's parameters were already swapped by tests that ran before.)"""
    import comfy.sd

    from continual_concepts.core.train import TrainConfig, train_concept
    from continual_concepts.nodes.common import training_backend

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(slim_ckpt)
    roots = [model.model, clip.cond_stage_model]
    flags = [[p.requires_grad for p in r.parameters()] for r in roots]
    assert any(any(f) for f in flags), "premise: this load leaves parameters trainable"
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    with training_backend(model, clip, vae) as b:
        rows = {l.name: torch.arange(4) for l in b.kv_layers()[:2]}
        res = train_concept(b, b.encode_images(images), "a photo of sks", "sks", rows, None,
                            TrainConfig(steps=1, lam_ewc=0, lam_dsc=0))
        with_grad = [n for r in roots for n, p in r.named_parameters() if p.grad is not None]
    assert res.token is not None and all(d.abs().sum() > 0 for _, d in res.deltas.values())
    assert with_grad == [], f"{len(with_grad)} host parameters received .grad, e.g. {with_grad[:3]}"
    assert [[p.requires_grad for p in r.parameters()] for r in roots] == flags


def test_precision_sets_the_clones_arithmetic_and_leaves_the_input_model_as_it_was(trained):
    """precision=bf16: the training clone's K/V layers compute in bf16 through ComfyUI's own manual cast (the
    stored weights keep their dtype), the learned change is fp32 and non-zero; the input MODEL, loaded again,
    computes in its own dtype."""
    import comfy.model_management as mm

    from continual_concepts.nodes.train_node import ContinualTrainStep

    t = trained
    layer = t["model"].model.diffusion_model.get_submodule(next(iter(t["neurons"].rows))[len("diffusion_model."):])
    seen = []
    h = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
    try:
        kw = dict(model=t["model"], clip=t["clip"], vae=t["vae"], images=t["images"], neurons=t["neurons"],
                  prompt="a photo of ohwx", trigger="ohwx", name="p", steps=2, lr=2e-3, lam_prev=1.0, lam_base=0.1,
                  lam_ewc=0, lam_dsc=1.0, dc_every=1, seed=0, batch_size=2)
        mem = run(ContinualTrainStep, **kw, precision="bf16")[2]
        assert torch.bfloat16 in seen, seen
        stored = layer.weight.dtype
        c = mem.concepts[-1]
        assert all(d.dtype == torch.float32 and torch.isfinite(d).all() and d.abs().sum() > 0 for d in c.delta.values())
        seen.clear()
        mm.load_models_gpu([t["model"]])
        with torch.inference_mode():
            t["model"].model.apply_model(torch.zeros(1, 4, 8, 8), torch.ones(1), c_crossattn=torch.zeros(1, 77, 768))
        assert seen and torch.bfloat16 not in seen and layer.weight.dtype == stored, (seen, layer.weight.dtype)
    finally:
        h.remove()


def test_flip_is_off_by_default_and_changes_what_is_trained(trained):
    """The default trains on the images only; flip=True on the images and their mirror images (random flip)."""
    from continual_concepts.nodes.train_node import ContinualTrainStep

    t = trained
    kw = dict(model=t["model"], clip=t["clip"], vae=t["vae"], images=t["images"], neurons=t["neurons"],
              prompt="a photo of ohwx", trigger="ohwx", name="f", steps=1, lr=2e-3, lam_prev=1.0, lam_base=0.1,
              lam_ewc=0, lam_dsc=0, dc_every=1, seed=0, batch_size=4, gradient_checkpointing="off")
    flipped, plain = (run(ContinualTrainStep, **kw, **extra)[2].concepts[-1] for extra in ({"flip": True}, {}))
    assert any(not torch.equal(d, plain.delta[n]) for n, d in flipped.delta.items())


def test_query_and_output_rows_patch_apply_and_export_as_lora(loaded, teach):
    """layers='qkvo' on ComfyUI's real model: Q and output-projection rows (which read the image width) are selected,
    trained and returned as `diff` patches on the clone only; Apply Concept Memory rebuilds the same patches on the
    base model, and the LoRA export maps every key in the stock loader."""
    import comfy.sd

    from continual_concepts.nodes.apply_node import ApplyConceptMemory
    from continual_concepts.nodes.merge_node import lora_tensors

    model, clip, vae = loaded
    out = teach(model, clip, vae, budget_pct=1.0, layers="qkvo")
    m2, mem = out["m2"], out["mem"]
    assert not model.patches and not clip.patcher.patches, "the input model got patches"
    kinds = {k.split("attn2.")[1] for k in m2.patches}
    assert {"to_q.weight", "to_out.0.weight"} <= kinds <= {"to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"}
    for k, plist in m2.patches.items():
        nz = plist[0][1][0].abs().sum(1).nonzero().flatten().tolist()
        assert nz and set(nz) <= set(out["neurons"].rows[k[: -len(".weight")]].tolist()), k
    m3, _ = run(ApplyConceptMemory, model=model, clip=clip, memory=mem)[:2]
    assert set(m3.patches) == set(m2.patches)
    assert all(torch.allclose(m3.patches[k][0][1][0], m2.patches[k][0][1][0]) for k in m2.patches)
    sd = model.model.state_dict()
    lora = lora_tensors(mem.concepts[0], {k[: -len(".weight")]: tuple(v.shape) for k, v in sd.items()})
    with torch.inference_mode():
        patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    assert len(patched.patches) == len(lora) // 3, "the stock LoRA loader did not map every Q/output key"


def test_resnet_convolution_rows_patch_apply_and_export_as_conv_lora(loaded, teach):
    """layers='qkvoc' on ComfyUI's real model: output channels of the ResBlocks' convolutions (in_layers.2,
    out_layers.3) are selected and trained, returned as 4-D `diff` patches that change only those channels; Apply
    Concept Memory rebuilds them, and the LoRA export's [out, r, 1, 1] @ [r, in, 3, 3] pairs load in the stock
    loader and give the same weights as the patches."""
    import comfy.sd

    from continual_concepts.nodes.apply_node import ApplyConceptMemory
    from continual_concepts.nodes.merge_node import lora_tensors

    model, clip, vae = loaded
    out = teach(model, clip, vae, budget_pct=2.0, layers="qkvoc")
    m2, mem = out["m2"], out["mem"]
    assert not model.patches, "the input model got patches"
    conv = [k for k in m2.patches if k.endswith(("in_layers.2.weight", "out_layers.3.weight"))]
    assert conv, "no convolution row was trained"
    for k in conv:
        diff = m2.patches[k][0][1][0]
        assert diff.dim() == 4
        nz = diff.flatten(1).abs().sum(1).nonzero().flatten().tolist()
        assert nz and set(nz) <= set(out["neurons"].rows[k[: -len(".weight")]].tolist()), k
    m3, _ = run(ApplyConceptMemory, model=model, clip=clip, memory=mem)[:2]
    assert set(m3.patches) == set(m2.patches)
    sd = model.model.state_dict()
    lora = lora_tensors(mem.concepts[0], {k[: -len(".weight")]: tuple(v.shape) for k, v in sd.items()})
    with torch.inference_mode():
        patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    assert len(patched.patches) == len(lora) // 3, "the stock LoRA loader did not map every convolution key"
    import comfy.lora

    k = conv[0]
    w = sd[k].float()
    via_lora, via_diff = (comfy.lora.calculate_weight(p.patches[k], w.clone(), k) for p in (patched, m2))
    assert not torch.equal(via_diff, w)
    assert torch.allclose(via_lora, via_diff, atol=2e-3), "the LoRA is not the same change as the patch"
