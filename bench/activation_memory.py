"""What training keeps for the backward pass, measured on the CPU at real SD1.5 / SDXL architecture sizes
(random weights): bytes of the tensors autograd saves in one denoiser forward per sample, with and without
gradient checkpointing, and what a default training step multiplies it by — the numbers the memory defaults
(batch size, gradient checkpointing) are chosen from, where no GPU is at hand.

    python -m continual_concepts.bench.activation_memory [--arch sd15|sdxl] [--latent 64] [--threads 2]
Saved tensors are counted once per storage (views share it). Last line: one JSON object."""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), use_linear_projection=True, cross_attention_dim=2048,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)


def saved_bytes(unet, latent: int, checkpointing: bool) -> tuple[int, int]:
    """(bytes autograd keeps for backward in one forward of one sample, UNet parameter count); only a K/V
    row delta requires grad, as in our training."""
    from ..core.backends.base import row_delta_hook

    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()  # diffusers checkpoints only in training mode (no dropout in these configs)
    layer = next(m for n, m in unet.named_modules() if n.endswith("attn2.to_k"))  # the earliest K layer
    delta = torch.zeros(4, layer.in_features, requires_grad=True)
    h = layer.register_forward_hook(row_delta_hook(torch.arange(4), lambda: delta))
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    x = torch.randn(1, 4, latent, latent)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim)
    extra = {}
    if unet.config.addition_embed_type == "text_time":
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 1280), "time_ids": torch.randn(1, 6)}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = unet(x, torch.tensor([500]), encoder_hidden_states=ctx, **extra).sample
    out.float().pow(2).mean().backward()
    h.remove()
    params = {p.untyped_storage().data_ptr() for p in unet.parameters()}
    return sum(b for p, b in seen.items() if p not in params), sum(p.numel() for p in unet.parameters())


def main(argv=None) -> int:
    from diffusers import UNet2DConditionModel

    from .gpu_sd15 import SD15_UNET

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("sd15", "sdxl"), default="sd15")
    ap.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = SD15_UNET if a.arch == "sd15" else SDXL_UNET
    out = {"arch": a.arch, "latent": a.latent, "pixels": 8 * a.latent}
    for ckpt in (False, True):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**cfg).requires_grad_(False)
        t0 = time.perf_counter()
        b, n = saved_bytes(unet, a.latent, ckpt)
        key = "checkpointed" if ckpt else "plain"
        out[f"{key}_saved_MiB_fp32_per_sample"] = round(b / 2**20, 1)
        out[f"{key}_seconds"] = round(time.perf_counter() - t0, 1)
        out["unet_params"] = n
        print(f"{key}: {b / 2**20:.0f} MiB saved per sample (fp32)", file=sys.stderr)
        del unet
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
