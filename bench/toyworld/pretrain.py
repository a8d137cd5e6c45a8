"""Pretrain the toy model: first the VAE, then UNet + text encoder on pre-encoded latents.

Deterministic (seeded) and resumable: a checkpoint with optimizer state every --save-every steps in
--work (outside git). The finished model is written, in fp16, to bench/toyworld/model/.

    python -m continual_concepts.bench.toyworld.pretrain --stage vae --steps 500
    python -m continual_concepts.bench.toyworld.pretrain --stage unet --steps 5000
    python -m continual_concepts.bench.toyworld.pretrain --stage unet --steps 3000 --vae-from bench/toyworld/model
    python -m continual_concepts.bench.toyworld.pretrain --stage export
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import torch

from .model import MAX_LEN, build_components
from .world import pretrain_batch

MODEL_DIR = Path(__file__).with_name("model")
# Share of pattern scenes (world.render_scene): the VAE must reconstruct every pattern the concepts use, and the
# UNet must be able to draw them (patterns and several objects from words).
VAE_SCENES, UNET_SCENES = 0.5, 0.4


def _to_px(imgs) -> torch.Tensor:
    return torch.tensor(imgs, dtype=torch.float32).permute(0, 3, 1, 2) / 127.5 - 1


def _load(work: Path, stage: str, comps: dict, opt):
    ck = work / f"{stage}.pt"
    if not ck.exists():
        return 0
    state = torch.load(ck, weights_only=True)
    for k, v in state["models"].items():
        comps[k].load_state_dict(v)
    opt.load_state_dict(state["opt"])
    torch.set_rng_state(state["rng"])
    return state["step"]


def _save(work: Path, stage: str, comps: dict, keys, opt, step):
    tmp = work / f"{stage}.pt.tmp"
    torch.save({"models": {k: comps[k].state_dict() for k in keys}, "opt": opt.state_dict(),
                "rng": torch.get_rng_state(), "step": step}, tmp)
    tmp.replace(work / f"{stage}.pt")


def train_vae(work: Path, steps: int, save_every: int, log):
    torch.manual_seed(0)
    comps = build_components()
    vae = comps["vae"].train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    start = _load(work, "vae", comps, opt)
    t0 = time.time()
    for step in range(start, steps):
        x = _to_px(pretrain_batch(64, random.Random(f"vae-{step}"), scenes=VAE_SCENES)[0])
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = (rec - x).pow(2).mean() + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0:
            log(f"vae step {step + 1}/{steps} loss {loss.item():.5f} ({time.time() - t0:.0f} s)")
        if (step + 1) % save_every == 0 or step + 1 == steps:
            _save(work, "vae", comps, ["vae"], opt, step + 1)


def import_vae(work: Path, src: Path, log):
    """Start the UNet stage from an exported model's VAE (retraining the UNet and text encoder only)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(src / "vae", torch_dtype=torch.float32)
    torch.save({"models": {"vae": vae.state_dict()}}, work / "vae.pt")
    log(f"VAE taken from {src}")


def encode_dataset(work: Path, n: int, log):
    """Fixed pretraining set: n renders (jittered) encoded once to latent means, with captions."""
    out = work / "latents.pt"
    if out.exists():
        return torch.load(out, weights_only=True)
    comps = build_components()
    comps["vae"].load_state_dict(torch.load(work / "vae.pt", weights_only=True)["models"]["vae"])
    vae = comps["vae"].eval()
    imgs, caps = pretrain_batch(n, random.Random("dataset"), scenes=UNET_SCENES)
    with torch.no_grad():
        z = torch.cat([vae.encode(_to_px(imgs[i : i + 256])).latent_dist.mean for i in range(0, n, 256)])
    scale = float(1 / z.std())
    data = {"latents": z * scale, "scale": scale, "captions": caps}
    torch.save(data, out)
    log(f"encoded {n} renders; latent scaling factor {scale:.4f}")
    return data


def train_unet(work: Path, steps: int, save_every: int, log, batch: int = 64, n_data: int = 24000):
    data = encode_dataset(work, n_data, log)
    torch.manual_seed(1)
    comps = build_components()
    unet, text, tok, sched = comps["unet"].train(), comps["text_encoder"].train(), comps["tokenizer"], comps["scheduler"]
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=6e-4, weight_decay=0.01)
    start = _load(work, "unet", comps, opt)
    z, caps = data["latents"], data["captions"]
    abar = sched.alphas_cumprod
    gen = torch.Generator().manual_seed(1000 + start)
    t0 = time.time()
    for step in range(start, steps):
        idx = torch.randint(0, len(z), (batch,), generator=gen)
        x0 = z[idx]
        prompts = ["" if torch.rand(1, generator=gen).item() < 0.1 else caps[i] for i in idx.tolist()]
        ids = tok(prompts, padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="pt").input_ids
        t = torch.randint(0, 1000, (batch,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        lr = 6e-4 * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * (1 - step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = (unet(xt, t, encoder_hidden_states=text(ids).last_hidden_state).sample - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (step + 1) % 100 == 0:
            log(f"unet step {step + 1}/{steps} loss {loss.item():.4f} lr {lr:.2e} ({time.time() - t0:.0f} s)")
        if (step + 1) % save_every == 0 or step + 1 == steps:
            _save(work, "unet", comps, ["unet", "text_encoder"], opt, step + 1)


def export(work: Path, log, dest: Path = MODEL_DIR):
    """Write the diffusers folder (fp16 weights) from the latest checkpoints."""
    comps = build_components()
    comps["vae"].load_state_dict(torch.load(work / "vae.pt", weights_only=True)["models"]["vae"])
    st = torch.load(work / "unet.pt", weights_only=True)
    comps["unet"].load_state_dict(st["models"]["unet"])
    comps["text_encoder"].load_state_dict(st["models"]["text_encoder"])
    comps["vae"].register_to_config(scaling_factor=torch.load(work / "latents.pt", weights_only=True)["scale"])
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for k in ("unet", "text_encoder", "vae"):
        comps[k].half().save_pretrained(tmp / k, safe_serialization=True)
    comps["tokenizer"].save_pretrained(tmp / "tokenizer")
    comps["scheduler"].save_pretrained(tmp / "scheduler")
    (tmp / "training.json").write_text(json.dumps({"unet_steps": st["step"]}))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    log(f"exported to {dest}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["vae", "unet", "export"], required=True)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--work", default="out/toy_pretrain")
    ap.add_argument("--dest", default=str(MODEL_DIR), help="export: the diffusers folder to write")
    ap.add_argument("--vae-from", default=None, help="unet: take the VAE of this exported model folder")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)

    def log(s):
        print(s, flush=True)

    if a.stage == "vae":
        train_vae(work, a.steps, a.save_every, log)
    elif a.stage == "unet":
        if a.vae_from and not (work / "vae.pt").exists():
            import_vae(work, Path(a.vae_from), log)
        train_unet(work, a.steps, a.save_every, log)
    else:
        export(work, log, Path(a.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
