"""SDXL- (base and refiner) and SD2-family MODEL + CLIP pairs with random weights, built in memory from ComfyUI's own classes.

ComfyUI recognises these families' *checkpoints* only at full size (the SDXL UNet alone has 2.6 B parameters),
too big for CPU tests, so this builds the model configs directly: ComfyUI's model class for the family (SDXL:
ADM conditioning from the pooled text vector plus size embeddings, context 2048; SD2.1: v-prediction, context
1024) around a one-level UNet, and the family's CLIP (SDXL clip_l + clip_g, SD2 clip_h) at real widths with 3
layers each. Everything downstream is ComfyUI's real code. The SD1.5 family comes from a real checkpoint file
instead (comfy_sd15_checkpoint.py)."""
from __future__ import annotations

SLIM_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=64, num_res_blocks=[1],
                 channel_mult=[1], transformer_depth=[1], transformer_depth_output=[1, 1], transformer_depth_middle=1,
                 num_head_channels=32, use_linear_in_transformer=True, use_spatial_transformer=True, legacy=False,
                 use_temporal_attention=False, use_temporal_resblock=False)


def _build(config_cls, unet: dict, encoders: list[str], make=None, seed: int = 0):
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import torch

    from .comfy_sd15_checkpoint import random_init

    torch.manual_seed(seed)
    config = config_cls({**SLIM_UNET, **unet})
    config.set_inference_dtype(torch.float32, None)
    base = make(config) if make else config.get_model({})
    random_init(base.diffusion_model)
    model = comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    clip = comfy.sd.CLIP(config.clip_target(), model_options={f"{e}_model_config": {"num_hidden_layers": 3}
                                                               for e in encoders})
    random_init(clip.cond_stage_model)
    return model, clip


def build_slim_sdxl(seed: int = 0):
    """(MODEL, CLIP) as CheckpointLoaderSimple would return them for an SDXL checkpoint, at slim size."""
    import comfy.supported_models

    return _build(comfy.supported_models.SDXL, dict(context_dim=2048, adm_in_channels=2816, num_classes="sequential"),
                  ["clip_l", "clip_g"], seed=seed)


def build_slim_sdxl_refiner(seed: int = 0):
    """(MODEL, CLIP) like the SDXL refiner (clip_g only, ADM with an aesthetic score), at slim size."""
    import comfy.supported_models

    return _build(comfy.supported_models.SDXLRefiner, dict(context_dim=1280, adm_in_channels=2560,
                                                          num_classes="sequential"), ["clip_g"], seed=seed)


def build_slim_sd21_v(seed: int = 0):
    """(MODEL, CLIP) like an SD2.1-768 checkpoint (v-prediction, OpenCLIP-H text encoder), at slim size."""
    import comfy.model_base
    import comfy.supported_models

    return _build(comfy.supported_models.SD20, dict(context_dim=1024), ["clip_h"], seed=seed,
                  make=lambda c: comfy.model_base.BaseModel(c, model_type=comfy.model_base.ModelType.V_PREDICTION))
