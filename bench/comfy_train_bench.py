"""ComfyUI side of bench/gpu_sd15.py: our nodes vs ComfyUI's TrainLoraNode (rank 8) on the same model.

    <comfy python> -m continual_concepts.bench.comfy_train_bench [--small] [--cpu] [--steps N]

Builds an SD1.5 checkpoint with random weights (bench/comfy_sd15_checkpoint.py: full UNet; --small: the slim one)
in a temp dir; loads it with comfy.sd.load_checkpoint_guess_config (detected as SD15); then times
  - Select Concept Neurons (default budget, 4 calibration prompts),
  - Continual Train Step (EWC-DC + DSC at dc_every 5): it/s from two runs, (T(N) - T(n0)) / (N - n0), so the
    per-call setup (VAE encode, cloning) is not counted as step time; as users run it (trigger token trained:
    a CLIP forward and backward every step) and K/V rows only (like TrainLoraNode, which trains the UNet only),
  - TrainLoraNode rank 8, batch 1, AdamW, no gradient checkpointing, bf16 on CUDA (fp32 on CPU), same way.
512 px images (64x64 latents), batch 1; --small uses 64 px. Last stdout line: one JSON object."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from continual_concepts.bench.comfy_host import use_comfyui
from continual_concepts.bench.comfy_sd15_checkpoint import build_checkpoint


def run(small: bool, steps: int, n0: int) -> dict:
    import comfy.model_management as mm
    import comfy.sd
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

    with tempfile.TemporaryDirectory() as d:
        ckpt = build_checkpoint(str(Path(d) / "sd15_random.safetensors"), full=not small)
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(ckpt)
    px = 64 if small else 512
    images = torch.rand(4, px, px, 3, generator=torch.Generator().manual_seed(0))
    out = {"device": torch.cuda.get_device_name() if cuda else "cpu", "size": "slim-sd15-64px" if small else "sd15-512px",
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
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--n0", type=int, default=2)
    a = ap.parse_args(argv)
    use_comfyui(cpu=a.cpu)
    print(json.dumps(run(a.small, a.steps, a.n0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
