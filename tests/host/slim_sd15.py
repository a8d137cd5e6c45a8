"""Build a slim SD1.5-shaped checkpoint with random weights from ComfyUI's own classes (test-time only):
UNet with model_channels 320, one level, one res block, depth 1, context 768; full CLIP-L; full SD VAE."""
from __future__ import annotations

import torch


def build_checkpoint(path: str, seed: int = 0) -> str:
    import comfy.ops
    import comfy.sd1_clip
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    ops = comfy.ops.disable_weight_init
    unet = UNetModel(image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[1],
                     channel_mult=[1], num_heads=8, use_spatial_transformer=True, transformer_depth=[1],
                     transformer_depth_output=[1, 1], transformer_depth_middle=1, context_dim=768,
                     use_linear_in_transformer=False, operations=ops)
    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    sd = {}
    for prefix, m in (("model.diffusion_model.", unet), ("cond_stage_model.transformer.", clip.transformer),
                      ("first_stage_model.", vae)):
        _init(m)
        sd.update({prefix + k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in m.state_dict().items()})
    save_file(sd, path)
    return path


@torch.no_grad()
def _init(model: torch.nn.Module):
    """ComfyUI's ops skip weight init: give every tensor a sane random value (norms 1/0, others N(0, 0.02))."""
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
