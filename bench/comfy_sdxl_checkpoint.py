"""A full-size SDXL-base checkpoint file with random weights, built from ComfyUI's own classes (no download): the
UNet ComfyUI detects as SDXL (2.57 B parameters), CLIP-L + OpenCLIP-G at full depth, the SD VAE; fp16 as released
checkpoints are (~6.9 GB). For `make test-host-full` only: it needs ~10 GB RAM to build."""
from __future__ import annotations

FULL_SDXL_UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4],
    transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
    transformer_depth_middle=10, num_head_channels=64, context_dim=2048, adm_in_channels=2816,
    num_classes="sequential", use_linear_in_transformer=True, use_spatial_transformer=True, legacy=False,
    use_temporal_attention=False, use_temporal_resblock=False,
)


def build_sdxl_checkpoint(path: str, seed: int = 0) -> str:
    import comfy.sd
    import comfy.supported_models
    import torch
    from safetensors.torch import save_file

    from .comfy_sd15_checkpoint import half, random_init, random_vae_state_dict

    torch.manual_seed(seed)
    config = comfy.supported_models.SDXL(dict(FULL_SDXL_UNET))
    config.set_inference_dtype(torch.float16, None)
    model = config.get_model({})
    random_init(model.diffusion_model)
    clip = comfy.sd.CLIP(config.clip_target(), model_options={"dtype": torch.float16})
    random_init(clip.cond_stage_model)
    # ComfyUI's own saving path (as CheckpointSave): renames to the released layout, OpenCLIP-G included
    sd = model.state_dict_for_saving(clip.get_sd(), random_vae_state_dict())
    save_file(half(sd), path)
    return path
