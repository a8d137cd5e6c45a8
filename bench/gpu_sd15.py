"""GPU benchmark at full SD1.5 size with random weights (speed does not depend on weight values).

    python -m continual_concepts.bench.gpu_sd15            # CUDA, 512 px, batch 1, bf16
    python -m continual_concepts.bench.gpu_sd15 --device cpu --small   # the same code at toy size (tests)
    python -m continual_concepts.bench.gpu_sd15 --arch sdxl --record   # SDXL at 1024 px, in ComfyUI only

Measures: train it/s of our step (CNS-sized selection, EWC-DC + DSC at the default schedule), peak memory,
DC probe seconds per image (5 candidates × 16 timesteps), selection time, selection + 500 steps (estimated
from the measured step rate); and, when a ComfyUI checkout is present, the same in ComfyUI through our nodes next
to ComfyUI's TrainLoraNode rank 8 (bench/comfy_train_bench.py). SDXL (--arch sdxl) runs the ComfyUI side only: our
diffusers backend has no SDXL added conditioning, ComfyUI's SDXL class has. Appends a dated line to
bench/RESULTS.md with --record."""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import torch

from . import comfy_host

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, hidden_act="quick_gelu")


def build(small: bool, device: str, dtype):
    """SD1.5-architecture UNet + CLIP-L-shaped text encoder (word tokenizer), pixel-free latent space."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..core.backends.diffusers_backend import DiffusersBackend
    from ..core.tiny_model import TINY_WORDS
    from ..core.word_tokenizer import build_word_tokenizer

    unet_cfg, text_cfg = dict(SD15_UNET), dict(SD15_TEXT)
    if small:
        unet_cfg.update(sample_size=8, block_out_channels=(32, 32, 64, 64), layers_per_block=1, cross_attention_dim=32,
                        norm_num_groups=16)
        text_cfg.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        max_position_embeddings=16)
    tok = build_word_tokenizer(TINY_WORDS, text_cfg["max_position_embeddings"])
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **text_cfg))
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return DiffusersBackend(UNet2DConditionModel(**unet_cfg), text, tok, sched, None, device, dtype)


def run(small: bool, device: str, steps: int) -> dict:
    from ..core.dc_scores import dc_scores
    from ..core.memory import ConceptRecord, ContinualMemory
    from ..core.neurons import SelectConfig, select_concept_neurons
    from ..core.train import TrainConfig, train_concept

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    b = build(small, device, dtype)
    s = b.unet.config.sample_size
    x0 = torch.randn(4, 4, s, s, device=device, dtype=dtype)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    sel = select_concept_neurons(b, x0, "a sks dog", SelectConfig(n_calibration=4, n_draws=1, batch_size=1),
                                 ["a red circle", "a photo of a dog", "a blue square", "a cat", "a small tree"])
    sync()
    select_s = time.perf_counter() - t0
    mem = ContinualMemory.for_model(b)
    mem.add_concept(ConceptRecord("earlier", "zwx", "a zwx cat", rows={}, delta={}))  # an earlier concept for DSC
    cfg = TrainConfig(steps=steps, batch_size=1, gradient_checkpointing="off")  # precision auto: bf16 on CUDA
    stamps = []
    train_concept(b, x0, "a sks dog", "sks", sel.rows, mem, TrainConfig(steps=2, batch_size=1))  # warm-up
    sync()
    t0 = time.perf_counter()
    train_concept(b, x0, "a sks dog", "sks", sel.rows, mem, cfg, callback=lambda *a: stamps.append(1))
    sync()
    it_s = steps / (time.perf_counter() - t0)
    cands = b.encode_text(["a photo", "a sks dog", "a zwx cat", "a red circle", "a blue square"])
    dc_scores(b, x0[:1], cands, n_timesteps=2)
    sync()
    t0 = time.perf_counter()
    dc_scores(b, x0[:2], cands, n_timesteps=16)
    sync()
    probe_s = (time.perf_counter() - t0) / 2
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "date": date.today().isoformat(), "size": "small" if small else "sd15-512px",
        "dtype": str(dtype).replace("torch.", ""), "unet_params": b.unet_param_count(),
        "selected_rows": sel.n_rows, "params_pct": sel.report["params_pct"],
        "train_it_s": it_s, "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "probe_s_per_image": probe_s, "select_s": select_s,
        "select_plus_500_steps_s": select_s + 500 / it_s,
    }


def comfyui_side(small: bool, cpu: bool, steps: int, arch: str = "sd15") -> dict:
    """Our Select + Train nodes vs ComfyUI's TrainLoraNode (rank 8) on one SD1.5 model, in ComfyUI's own python
    (bench/comfy_train_bench.py); skipped with the reason when no ComfyUI checkout with a .venv is present."""
    if why := comfy_host.missing():
        return {"skipped": why}
    try:
        return comfy_host.run_json("continual_concepts.bench.comfy_train_bench", "--arch", arch, "--steps", str(steps),
                                   *["--small"] * small, *["--cpu"] * cpu)
    except RuntimeError as e:
        return {"skipped": f"comfy_train_bench failed: {e}"}

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--arch", choices=("sd15", "sdxl"), default="sd15")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--no-comfyui", action="store_true", help="skip the TrainLoraNode comparison in ComfyUI")
    ap.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; use --device cpu --small to check the script", file=sys.stderr)
        return 2
    if a.arch == "sdxl":
        if a.no_comfyui:
            print("error: --arch sdxl runs in ComfyUI only; drop --no-comfyui", file=sys.stderr)
            return 2
        r = {"device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu", "date": date.today().isoformat(),
             "arch": "sdxl"}
    else:
        r = run(a.small, a.device, a.steps)
    if not a.no_comfyui:
        r["comfyui"] = comfyui_side(a.small, a.device == "cpu", a.steps, a.arch)
    if a.record:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write(f"\n- GPU bench {r['date']} on {r['device']}: {json.dumps(r)}\n")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
