"""Shared node plumbing: custom types, the training backend, progress/cancel, pictures as IMAGE, patched clones
(rows, tokens, concepts at a strength)."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from comfy_api.latest import io

from ..core.backends.base import rows_view
from ..core.backends.comfy_backend import ComfyBackend, model_type_name, text_encoders
from ..core.carried import ATOL, CARRIED, RTOL
from ..core.memory import ConceptRecord
from ..report.pictures import to_comfy_image
from ..core.strength import HIGH, LOW, SYNTAX, strength_changes, strength_tokens, weighted_memory

CATEGORY = "continual_concepts"
Neurons = io.Custom("CC_NEURONS")
Memory = io.Custom("CC_CONCEPT_MEMORY")
STRENGTH_TOOLTIP = (f"Per-concept strength, {LOW:g} to {HIGH:g}: {SYNTAX}; empty = all 1. 0 = the model without that "
                    "concept, 1 = as learned: it scales the concept's row change and blends its trigger token "
                    "between the original and the learned embedding.")


def size_warning(model, images: torch.Tensor) -> str | None:
    """Images far below the family's native size (SDXL 1024, SD1.x/2.x 512) train the concept at a resolution
    the model never generates at: say so rather than let it pass unnoticed."""
    native = 1024 if "SDXL" in model_type_name(model) else 512
    h, w = images.shape[1:3]
    if min(h, w) < native // 2:
        return (f"images are {h}×{w} px, far below this model's native {native} px: the concept is learned at a "
                f"resolution it is not generated at (Load Concept Images: size {native})")
    return None


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


@contextmanager
def reading_backend(model, clip):
    """A backend over MODEL and CLIP as they are (patches applied), to read their weights; changes nothing."""
    b = ComfyBackend(model, clip, None)
    try:
        yield b
    finally:
        b.close()


def progress(total: int, describe=None):
    """ProgressBar callback for core, cb(done, total, *info): Cancel raises here (ComfyUI's server hook also raises
    from update(); asking directly makes it hold without that hook); describe(done, total, *info) is shown as text."""
    import comfy.model_management as mm
    import comfy.utils

    bar = comfy.utils.ProgressBar(total)

    def cb(done, total_=total, *info):
        mm.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, total_)
        if describe is None:
            return
        try:
            from server import PromptServer

            PromptServer.instance.send_progress_text(describe(done, total_, *info), None)
        except Exception:  # no server (in-process use): the bar alone is enough
            pass

    return cb


def patched_model(model, deltas: dict) -> object:
    """model.clone() + one `diff` patch per trained layer holding only the selected rows' deltas."""
    out = model.clone()
    sd = out.model.state_dict()
    patches = {}
    for layer, (rows, d) in deltas.items():
        key = f"{layer}.weight"
        diff = torch.zeros_like(sd[key], device="cpu", dtype=torch.float32)
        rows_view(diff)[rows] = d.float()
        patches[key] = (diff,)
    accepted = out.add_patches(patches)
    if len(accepted) != len(patches):
        raise RuntimeError(f"ComfyUI rejected {len(patches) - len(accepted)} of the concept's weight patches")
    return out


def _token_key(encoder: str) -> str:
    return f"{encoder}.transformer.text_model.embeddings.token_embedding.weight"


def patched_clip(clip, backend: ComfyBackend, trigger: str, token: torch.Tensor | None):
    """clip.clone() whose trigger-word embedding row (in every text encoder: SDXL has two) holds `token`."""
    out = clip.clone()
    if token is None:
        return out
    tid = backend.trigger_token_id(trigger)
    base = backend.split_token(backend.token_row(trigger))
    patches = {(_token_key(name), (0, tid, 1)): ((part.float() - base[name]).view(1, -1),)
               for name, part in backend.split_token(token).items()}
    if len(out.add_patches(patches)) != len(patches):
        raise RuntimeError("ComfyUI rejected the token-embedding patch")
    return out


def original_token(clip, backend: ComfyBackend, record: ConceptRecord, carried: bool) -> torch.Tensor:
    """The concept's trigger embedding without the concept. A model lacking it has it now; for one carrying it, the
    CLIP's own table under every patch (learned tokens arrive as patches). A table that holds the learned token (a
    merged checkpoint) has lost the original: an error rather than a blend that changes nothing."""
    if not carried:
        return backend.token_row(record.trigger)
    tid = backend.trigger_token_id(record.trigger)
    row = torch.cat([clip.patcher.get_key_patches(_token_key(n))[_token_key(n)][0][0][tid].detach().float().cpu()
                     for n, _ in text_encoders(clip)])
    if torch.allclose(row, record.token.float(), rtol=RTOL, atol=ATOL):
        raise ValueError(f"clip: the trigger '{record.trigger}' of concept '{record.name}' holds its learned embedding "
                         "in the CLIP's own weights (a merged checkpoint), so its original embedding is unknown: load "
                         "the base checkpoint and bring the memory in with 'Apply Concept Memory'")
    return row


def at_strengths(model, clip, backend: ComfyBackend, memory, states: dict[str, str], strengths: dict[str, float]):
    """(MODEL clone, CLIP clone, the memory they carry) with each concept of the memory at its strength, from a
    model whose concepts are in `states` (carried or missing)."""
    def original(c):
        return original_token(clip, backend, c, states[c.name] == CARRIED)

    out_clip = clip.clone()
    for trigger, row in strength_tokens(memory, states, strengths, original).items():
        out_clip = patched_clip(out_clip, backend, trigger, row)
    with torch.inference_mode(False):
        out_model = patched_model(model, strength_changes(memory, states, strengths))
    return out_model, out_clip, weighted_memory(memory, strengths, original)
