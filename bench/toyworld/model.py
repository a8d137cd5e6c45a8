"""The toy text-to-image model in diffusers format: a small AutoencoderKL (32×32×3 -> 8×8×4), a
UNet2DConditionModel with cross-attention at both levels, a small CLIPTextModel and a word tokenizer."""
from __future__ import annotations

import torch

from ...core.word_tokenizer import build_word_tokenizer
from .world import VOCAB

MAX_LEN = 17  # the longest caption: three objects (15 words) + BOS/EOS
TEXT_DIM = 128


def build_components(seed: int = 0) -> dict:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tok = build_word_tokenizer(VOCAB, MAX_LEN)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=TEXT_DIM, intermediate_size=2 * TEXT_DIM, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_LEN, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 128), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=16, norm_num_groups=32)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return {"unet": unet, "text_encoder": text, "tokenizer": tok, "scheduler": sched, "vae": vae}
