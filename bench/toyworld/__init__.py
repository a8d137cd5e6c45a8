"""The toy world: a tiny pretrained text-to-image model, an oracle and procedural data, shipped in the repo."""
from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).with_name("model")


def load_components(dtype=None, folder=None) -> dict:
    """The shipped diffusers-format model, loaded offline from MODEL_DIR (weights stored fp16, run fp32)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

    dtype = dtype or torch.float32
    d = Path(folder or MODEL_DIR)
    if not (d / "unet").is_dir():
        raise FileNotFoundError(f"toy-world model not found in {d}")
    return {
        "unet": UNet2DConditionModel.from_pretrained(d / "unet", torch_dtype=dtype),
        "text_encoder": CLIPTextModel.from_pretrained(d / "text_encoder", torch_dtype=dtype),
        "tokenizer": PreTrainedTokenizerFast.from_pretrained(d / "tokenizer"),
        "scheduler": DDPMScheduler.from_pretrained(d / "scheduler"),
        "vae": AutoencoderKL.from_pretrained(d / "vae", torch_dtype=dtype),
    }
