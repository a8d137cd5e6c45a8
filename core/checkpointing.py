"""Gradient checkpointing on, off, or auto — auto measures instead of guessing from the model's name: one training
forward of one sample counts the bytes autograd keeps for the backward pass, and checkpointing goes on when a
step's sample passes (the batch, DSC's candidate passes and the prior term's) would not fit in part of the device's free memory.
So SDXL at 1024 px on a 12 GB card (~4.9 GiB kept per sample) turns it on, a toy model on a CPU leaves it off."""
from __future__ import annotations

import torch

CHECKPOINTING = ("auto", "on", "off")
FREE_SHARE = 0.8  # of the free memory the kept activations may use: the rest is left to transient buffers


def check_checkpointing(value) -> None:
    if value not in CHECKPOINTING:
        raise ValueError(f"gradient_checkpointing must be one of {', '.join(CHECKPOINTING)} (got {value!r})")


def saved_bytes(forward, resident=frozenset()) -> int:
    """Bytes autograd keeps for the backward pass of `forward()`, each storage counted once (views share one);
    storages in `resident` (the model's own weights, which exist anyway) are not counted."""
    kept: dict[int, torch.Tensor] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in resident:
            kept[ptr] = t  # holding each one keeps storage addresses unique while counting
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    n = sum(t.untyped_storage().nbytes() for t in kept.values())
    del out, kept
    return n


def resident_storages(modules) -> set[int]:
    return {t.untyped_storage().data_ptr() for m in modules for t in (*m.parameters(), *m.buffers())}


def decide(mode: str, forward, passes: int, free_bytes: int | None, networks=()) -> dict:
    """Whether to checkpoint, and why: {'on', 'mode', and for auto the measured MiB per sample, passes, free MiB}.
    `forward` runs one training forward of one sample (only called in auto mode) through `networks`;
    free_bytes None = unknown (off)."""
    check_checkpointing(mode)
    if mode != "auto":
        return {"mode": mode, "on": mode == "on"}
    try:
        per_sample = saved_bytes(forward, resident_storages(networks))
    except torch.OutOfMemoryError:  # one sample's activations alone do not fit
        return {"mode": mode, "on": True, "reason": "one sample's activations did not fit"}
    need = per_sample * passes
    on = free_bytes is not None and need > FREE_SHARE * free_bytes
    return {"mode": mode, "on": on, "saved_mib_per_sample": round(per_sample / 2**20, 1), "passes": passes,
            "free_mib": None if free_bytes is None else round(free_bytes / 2**20)}
