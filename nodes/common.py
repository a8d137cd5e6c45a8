"""Shared node plumbing: custom types, the training backend, progress/cancel, pictures as IMAGE."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from comfy_api.latest import io

from ..core.backends.comfy_backend import ComfyBackend
from ..core.pictures import to_comfy_image

CATEGORY = "continual_concepts"
Neurons = io.Custom("CC_NEURONS")
Memory = io.Custom("CC_CONCEPT_MEMORY")


def image(array) -> torch.Tensor:
    return to_comfy_image(array)


@contextmanager
def training_backend(model, clip, vae):
    """A backend over *clones* of MODEL and CLIP, with gradients possible (inference mode off); on exit, even
    after Cancel or an error, the shared modules are left as they were and ComfyUI's allocator cache is released
    (training leaves large activations behind)."""
    import comfy.model_management as mm

    b = None
    try:
        with torch.inference_mode(False), torch.enable_grad():
            b = ComfyBackend(model.clone(), clip.clone() if clip is not None else None, vae)
            b.prepare_for_training()
            yield b
    finally:
        if b is not None:
            b.close()
        mm.soft_empty_cache()


def progress(total: int):
    """ProgressBar callback for core: UI progress with the loss as text. Cancel raises here, after every step
    (ComfyUI's server hook also raises from update(); asking directly makes it hold without that hook)."""
    import comfy.model_management as mm
    import comfy.utils

    bar = comfy.utils.ProgressBar(total)

    def cb(step, total_, terms):
        mm.throw_exception_if_processing_interrupted()
        bar.update_absolute(step, total_)
        try:
            from server import PromptServer

            PromptServer.instance.send_progress_text(f"step {step}/{total_} loss {terms.get('total', 0):.4f}", None)
        except Exception:  # no server (in-process use): the bar alone is enough
            pass

    return cb


def patched_model(model, deltas: dict) -> object:
    """model.clone() + one `diff` patch per K/V layer holding only the selected rows' deltas."""
    out = model.clone()
    sd = out.model.state_dict()
    patches = {}
    for layer, (rows, d) in deltas.items():
        key = f"{layer}.weight"
        diff = torch.zeros_like(sd[key], device="cpu", dtype=torch.float32)
        diff[rows] = d.float()
        patches[key] = (diff,)
    accepted = out.add_patches(patches)
    if len(accepted) != len(patches):
        raise RuntimeError(f"ComfyUI rejected {len(patches) - len(accepted)} K/V patches")
    return out


def patched_clip(clip, backend: ComfyBackend, trigger: str, token: torch.Tensor | None):
    """clip.clone() whose trigger-word embedding row (in every text encoder: SDXL has two) holds the learned token."""
    out = clip.clone()
    if token is None:
        return out
    tid = backend.trigger_token_id(trigger)
    base = backend.split_token(backend.token_row(trigger))
    patches = {(f"{name}.transformer.text_model.embeddings.token_embedding.weight", (0, tid, 1)):
               ((part.float() - base[name]).view(1, -1),) for name, part in backend.split_token(token).items()}
    if len(out.add_patches(patches)) != len(patches):
        raise RuntimeError("ComfyUI rejected the token-embedding patch")
    return out
