"""An SDXL-family MODEL and CLIP with random weights, built in memory from ComfyUI's own SDXL classes.

ComfyUI recognises an SDXL *checkpoint* only at full size (UNet 2.6 B parameters, CLIP-G 32 layers), too big
for CPU tests, so this builds the model config directly: ComfyUI's SDXL model class (ADM conditioning from
the pooled text vector plus size embeddings, context 2048) around a one-level UNet, and its SDXL CLIP
(clip_l + clip_g at their real widths, 3 layers each). Everything downstream is ComfyUI's real code."""
from __future__ import annotations

UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=64, num_res_blocks=[1], channel_mult=[1],
            transformer_depth=[1], transformer_depth_output=[1, 1], transformer_depth_middle=1, context_dim=2048,
            num_head_channels=32, use_linear_in_transformer=True, adm_in_channels=2816, num_classes="sequential",
            use_spatial_transformer=True, legacy=False, use_temporal_attention=False, use_temporal_resblock=False)
LAYERS = {"clip_l_model_config": {"num_hidden_layers": 3}, "clip_g_model_config": {"num_hidden_layers": 3}}


def build_slim_sdxl(seed: int = 0):
    """(MODEL, CLIP) as CheckpointLoaderSimple would return them for an SDXL checkpoint, at slim size."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import torch

    from .comfy_sd15_checkpoint import random_init

    torch.manual_seed(seed)
    config = comfy.supported_models.SDXL(dict(UNET))
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({})
    random_init(base.diffusion_model)
    model = comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    clip = comfy.sd.CLIP(config.clip_target(), model_options=LAYERS)
    random_init(clip.cond_stage_model)
    return model, clip
