"""An SD1.5-shaped checkpoint with random weights, built from ComfyUI's own classes (no download), for the host
tests and the ComfyUI-side benchmarks. Speed and patch behaviour do not depend on weight values.

slim: UNet model_channels 320, one level, one res block, depth 1, context 768 (ComfyUI still detects SD15);
full: the SD1.5 UNet (channel_mult 1,2,4,4, two res blocks, attention at the first three levels).
CLIP-L and the SD VAE are always full size. Weights are stored fp16, as released checkpoints are."""
from __future__ import annotations

SLIM = dict(num_res_blocks=[1], channel_mult=[1], transformer_depth=[1], transformer_depth_output=[1, 1])
FULL = dict(num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
            transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])


def build_checkpoint(path: str, seed: int = 0, full: bool = False) -> str:
    import comfy.ops
    import comfy.sd1_clip
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    unet = UNetModel(image_size=32, in_channels=4, model_channels=320, out_channels=4, num_heads=8,
                     use_spatial_transformer=True, transformer_depth_middle=1, context_dim=768,
                     use_linear_in_transformer=False, operations=comfy.ops.disable_weight_init,
                     **(FULL if full else SLIM))
    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    sd = {}
    for prefix, m in (("model.diffusion_model.", unet), ("cond_stage_model.transformer.", clip.transformer)):
        random_init(m)
        sd.update(half(m.state_dict(), prefix))
    sd.update(half(random_vae_state_dict(), "first_stage_model."))
    save_file(sd, path)
    return path


def half(sd: dict, prefix: str = "") -> dict:
    """Tensors as released checkpoints store them: floating point in fp16, contiguous, under `prefix`."""
    return {prefix + k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def random_vae_state_dict() -> dict:
    """The SD / SDXL VAE (same architecture; only the latent scale differs) with random weights."""
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    random_init(vae)
    return vae.state_dict()


def random_init(model) -> None:
    """ComfyUI's ops skip weight init: give every tensor a sane random value (norms 1/0, others N(0, 0.02))."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            for name, p in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
                if not p.is_floating_point():
                    continue
                if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm)) or "norm" in type(m).__name__.lower():
                    p.fill_(1.0 if name == "weight" else 0.0)
                elif name == "bias" or p.dim() < 2:
                    p.zero_()
                else:
                    p.normal_(0, 0.02)
