"""ComfyUI side of bench/gpu_sd15.py: our nodes vs ComfyUI's TrainLoraNode (rank 8) on the same model.

    <comfy python> -m continual_concepts.bench.comfy_train_bench [--arch sd15|sdxl] [--small] [--cpu] [--steps N]

Builds a checkpoint with random weights in a temp dir (SD1.5: bench/comfy_sd15_checkpoint.py, --small the slim one;
SDXL: bench/comfy_sdxl_checkpoint.py, 2.6 B UNet parameters, --small the slim in-memory SDXL of
comfy_slim_models.py); loads it with comfy.sd.load_checkpoint_guess_config (detected as SD15 / SDXL); then times
  - Select Concept Neurons (default budget, 4 calibration prompts),
  - Continual Train Step (EWC-DC + DSC at dc_every 5): it/s from two runs, (T(N) - T(n0)) / (N - n0), so the
    per-call setup (VAE encode, cloning) is not counted as step time; as users run it (trigger token trained:
    a CLIP forward and backward every step) and K/V rows only (like TrainLoraNode, which trains the UNet only),
  - TrainLoraNode rank 8, batch 1, AdamW, no gradient checkpointing, bf16 on CUDA (fp32 on CPU), same way.
Native size, batch 1: SD1.5 512 px (64x64 latents), SDXL 1024 px (128x128); --small uses 64 px. Last stdout line:
one JSON object."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from continual_concepts.bench.comfy_host import use_comfyui
from continual_concepts.bench.comfy_sd15_checkpoint import build_checkpoint

NATIVE_PX = {"sd15": 512, "sdxl": 1024}


def load(arch: str, small: bool):
    """(MODEL, CLIP, VAE) with random weights, as CheckpointLoaderSimple returns them."""
    import comfy.sd

    if arch == "sdxl" and small:  # ComfyUI detects SDXL checkpoints only at full size
        from continual_concepts.bench.comfy_slim_models import build_slim_sdxl
        from continual_concepts.bench.comfy_sd15_checkpoint import random_vae_state_dict

        return (*build_slim_sdxl(), comfy.sd.VAE(sd=random_vae_state_dict()))
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / f"{arch}_random.safetensors")
        if arch == "sdxl":
            from continual_concepts.bench.comfy_sdxl_checkpoint import build_sdxl_checkpoint

            build_sdxl_checkpoint(path)
        else:
            build_checkpoint(path, full=not small)
        return comfy.sd.load_checkpoint_guess_config(path)[:3]


def run(arch: str, small: bool, steps: int, n0: int) -> dict:
    import comfy.model_management as mm
    import torch
    from comfy_extras.nodes_train import TrainLoraNode

    from continual_concepts.nodes.select_node import SelectConceptNeurons
    from continual_concepts.nodes.train_node import ContinualTrainStep

    dev = mm.get_torch_device()
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def peak_reset():
        if cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak():
        return torch.cuda.max_memory_allocated() / 2**30 if cuda else None

    model, clip, vae = load(arch, small)
    px = 64 if small else NATIVE_PX[arch]
    images = torch.rand(4, px, px, 3, generator=torch.Generator().manual_seed(0))
    out = {"device": torch.cuda.get_device_name() if cuda else "cpu", "size": f"{'slim-' * small}{arch}-{px}px",
           "model_type": type(model.model.model_config).__name__,
           "unet_params": sum(p.numel() for p in model.model.diffusion_model.parameters())}

    with torch.inference_mode():
        peak_reset()
        t0 = time.perf_counter()
        neurons, _, report = SelectConceptNeurons.execute(
            model=model, clip=clip, vae=vae, images=images, prompt="a photo of sks", trigger="sks", budget_pct=0.13,
            calibration_prompts=4, general_scoring="taylor", seed=0).args
        sync()
        out["select_s"], out["select_peak_gb"] = time.perf_counter() - t0, peak()
        out["selected_rows"] = json.loads(report)["selected_rows"]

        def it_per_s(call):
            """Steps/s from two timed runs after a warm-up, steps / (T(n0 + steps) - T(n0)): setup cancels out."""
            def timed(n):
                sync()
                t = time.perf_counter()
                call(n)
                sync()
                return time.perf_counter() - t

            timed(n0)
            peak_reset()
            t_n0, t_n = timed(n0), timed(n0 + steps)
            return steps / max(t_n - t_n0, 1e-9), peak()

        def ours(train_token):
            return lambda n: ContinualTrainStep.execute(
                model=model, clip=clip, vae=vae, images=images[:1], neurons=neurons, prompt="a photo of sks",
                trigger="sks", name="a", steps=n, lr=2e-3, lam_prev=1.0, lam_base=0.1, lam_ewc=1.0, lam_dsc=1.0,
                dc_every=5, seed=0, train_token=train_token)

        out["ours_it_s"], out["ours_peak_gb"] = it_per_s(ours(True))
        out["ours_rows_only_it_s"], _ = it_per_s(ours(False))
        cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of sks"))
        lat = {"samples": vae.encode(images[:1])}
        dt = "bf16" if cuda else "fp32"
        out["trainloranode_it_s"], out["trainloranode_peak_gb"] = it_per_s(lambda n: TrainLoraNode().train(
            model, lat, cond, batch_size=1, steps=n, grad_accumulation_steps=1, learning_rate=5e-4, rank=8,
            optimizer="AdamW", loss_function="MSE", seed=0, training_dtype=dt, lora_dtype=dt, algorithm="LoRA",
            gradient_checkpointing=False, existing_lora="[None]"))
    out["ours_vs_trainloranode"] = out["ours_it_s"] / out["trainloranode_it_s"]
    out["ours_rows_only_vs_trainloranode"] = out["ours_rows_only_it_s"] / out["trainloranode_it_s"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=tuple(NATIVE_PX), default="sd15")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--n0", type=int, default=2)
    a = ap.parse_args(argv)
    use_comfyui(cpu=a.cpu)
    print(json.dumps(run(a.arch, a.small, a.steps, a.n0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
