"""Export learned concepts: a small per-concept row-delta file, the same delta as a LoRA, a textual-inversion
embedding, and a merged diffusers model folder. Every write is atomic and never overwrites."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .atomic_io import atomic_write, atomic_write_dir
from .memory import ConceptRecord

DELTA_FORMAT = "continual_concepts.row_delta"


def row_delta_as_lora(rows: torch.Tensor, delta: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A row delta is exactly a LoRA whose up-matrix selects rows: W + up @ down with up one-hot [out, r]. `shape`
    is the weight's; a convolution's LoRA is [out, r, 1, 1] @ [r, in, kh, kw], the layout LoRA loaders expect."""
    up = torch.zeros(shape[0], len(rows), dtype=delta.dtype)
    up[rows, torch.arange(len(rows))] = 1
    if len(shape) == 4:
        return up[:, :, None, None], delta.reshape(len(rows), *shape[1:]).clone()
    return up, delta.clone()


def save_concept_delta(path, record: ConceptRecord, dtype=torch.float16) -> Path:
    """rows + delta per layer, and the token embedding, keyed by backend-native layer names."""
    from safetensors.torch import save_file

    t = {}
    for n, r in record.rows.items():
        t[f"{n}.rows"] = r.long().contiguous()
        t[f"{n}.delta"] = record.delta[n].to(dtype).contiguous()
    if record.token is not None:
        t["token"] = record.token.float().contiguous()
    meta = {"format": DELTA_FORMAT, "name": record.name, "trigger": record.trigger, "prompt": record.prompt}
    return atomic_write(path, lambda tmp: save_file(t, tmp, metadata=meta))


def load_concept_delta(path) -> ConceptRecord:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"delta file {path} is corrupt or truncated ({e})") from None
    if meta.get("format") != DELTA_FORMAT:
        raise ValueError(f"{path} is not a Continual Concepts row-delta file")
    layers = sorted(k[: -len(".rows")] for k in t if k.endswith(".rows"))
    return ConceptRecord(meta["name"], meta["trigger"], meta["prompt"],
                         rows={n: t[f"{n}.rows"] for n in layers},
                         delta={n: t[f"{n}.delta"].float() for n in layers}, token=t.get("token"))


def save_embedding(path, trigger: str, token: torch.Tensor, parts: list[tuple[str, int]] | None = None) -> Path:
    """Textual-inversion embedding as ComfyUI / A1111 read it: 'emb_params' [1, D] for one text encoder; with
    several (SDXL: parts [("clip_l", 768), ("clip_g", 1280)]) one [1, width] tensor per encoder name."""
    from safetensors.torch import save_file

    token = token.float().reshape(1, -1)
    if parts and len(parts) > 1:
        t = {n: p.contiguous() for (n, _), p in zip(parts, token.split([w for _, w in parts], -1))}
    else:
        t = {"emb_params": token.contiguous()}
    return atomic_write(path, lambda tmp: save_file(t, tmp, metadata={"trigger": trigger}))


def save_diffusers_model(backend, out_dir, memory=None) -> Path:
    """The merged model as a diffusers folder (K/V deltas and trigger rows already baked into the backend)."""

    def write(tmp: Path):
        backend.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        backend.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        backend.tokenizer.save_pretrained(tmp / "tokenizer")
        backend.scheduler.save_pretrained(tmp / "scheduler")
        if backend.vae is not None:
            backend.vae.save_pretrained(tmp / "vae", safe_serialization=True)
        if memory is not None:
            (tmp / "concepts.json").write_text(json.dumps(
                [{"name": c.name, "trigger": c.trigger, "prompt": c.prompt} for c in memory.concepts], indent=2))

    return atomic_write_dir(out_dir, write)
