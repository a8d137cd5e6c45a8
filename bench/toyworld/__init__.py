"""The toy world: a tiny pretrained text-to-image model, an oracle and procedural data, shipped in the repo."""
from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).with_name("model")


def load_components(dtype=None) -> dict:
    """The shipped diffusers-format model, loaded offline from MODEL_DIR (weights stored fp16, run fp32)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

    dtype = dtype or torch.float32
    if not (MODEL_DIR / "unet").is_dir():
        raise FileNotFoundError(f"toy-world model not found in {MODEL_DIR}")
    return {
        "unet": UNet2DConditionModel.from_pretrained(MODEL_DIR / "unet", torch_dtype=dtype),
        "text_encoder": CLIPTextModel.from_pretrained(MODEL_DIR / "text_encoder", torch_dtype=dtype),
        "tokenizer": PreTrainedTokenizerFast.from_pretrained(MODEL_DIR / "tokenizer"),
        "scheduler": DDPMScheduler.from_pretrained(MODEL_DIR / "scheduler"),
        "vae": AutoencoderKL.from_pretrained(MODEL_DIR / "vae", torch_dtype=dtype),
    }
