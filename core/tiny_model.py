"""Tiny randomly initialised diffusers models built from configs in code: for tests, demos and benches.

Nothing is downloaded; shapes follow SD1.x (cross-attention K/V read a text context) at toy size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .word_tokenizer import build_word_tokenizer

TINY_WORDS = (
    "a photo of the an in on with and red green blue yellow black white gray orange purple pink "
    "circle square triangle ring star diamond cross dot stripes striped checkered background dog cat "
    "house tree car flower painting picture small big sks zwx qfv plk mrt vbn"
).split()


@dataclass
class TinyModelSpec:
    sample_size: int = 16
    in_channels: int = 3  # pixel space unless with_vae
    block_out_channels: tuple = (32, 64)
    cross_attention_dim: int = 32
    text_layers: int = 2
    max_length: int = 12
    with_vae: bool = False
    seed: int = 0


def build_tiny_components(spec: TinyModelSpec | None = None) -> dict:
    """Return {unet, text_encoder, tokenizer, scheduler, vae|None} with seeded random weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = spec or TinyModelSpec()
    torch.manual_seed(spec.seed)
    tokenizer = build_word_tokenizer(TINY_WORDS, spec.max_length)
    text_cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.cross_attention_dim,
        intermediate_size=spec.cross_attention_dim * 2,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=2,
        max_position_embeddings=spec.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = CLIPTextModel(text_cfg)
    vae = None
    latent_channels, latent_size = spec.in_channels, spec.sample_size
    if spec.with_vae:
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
            sample_size=spec.sample_size * 2,
        )
        latent_channels = 4
    n = len(spec.block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=spec.block_out_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=spec.cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return {"unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler, "vae": vae}
