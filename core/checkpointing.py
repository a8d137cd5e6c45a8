"""How a training step fits the memory: micro-batches and gradient checkpointing, each on, off or auto. Auto
measures instead of guessing from the model's name: one training forward of one sample counts the bytes autograd
keeps for the backward pass. A step back-propagates one term at a time, so it keeps the activations of its largest
term only (a micro-batch of the batch, or DSC's candidate passes); the micro-batch shrinks first (no extra compute),
and checkpointing goes on only when even that does not fit. So batch 8 trains anywhere batch 1 does, with batch 8's
gradients; SDXL at 1024 px on a 12 GB card (~4.9 GiB kept per sample) checkpoints, a toy model on a CPU does neither."""
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


def _measure(forward, networks) -> int | None:
    try:
        return saved_bytes(forward, resident_storages(networks))
    except torch.OutOfMemoryError:  # one sample's activations alone do not fit
        return None


def _samples_that_fit(per_sample: int | None, free_bytes: int) -> int:
    return int(FREE_SHARE * free_bytes // per_sample) if per_sample else 0


def decide(mode: str, forward, batch: int, fixed: int, free_bytes: int | None, networks=(), micro: int = 0,
           enable=lambda: None) -> dict:
    """How a step fits the memory: whether to checkpoint, and how many samples of the batch go through one
    forward/backward (the micro-batch: their gradients add up to the whole batch's, so the step is the same).
    A step back-propagates one term at a time, so it keeps max(micro-batch, `fixed`) samples' activations, `fixed`
    being its largest regulariser pass (DSC's candidates, the prior's prompts). Micro-batches cost no extra compute and
    checkpointing re-runs every block, so auto shrinks the micro-batch first and checkpoints only when `fixed`
    samples (or one) do not fit. `forward` runs one training forward of one sample through `networks`; `enable()`
    turns checkpointing on. micro 0 = auto; free_bytes None = unknown (the whole batch, no checkpointing in auto).
    Returns {'mode', 'on', 'micro_batch', 'passes', and what auto measured}."""
    check_checkpointing(mode)
    plan = {"mode": mode, "on": mode == "on"}
    known = free_bytes is not None
    per = None
    if mode == "auto" or (mode == "off" and micro == 0 and known):
        per = _measure(forward, networks)
        plan.update(saved_mib_per_sample=None if per is None else round(per / 2**20, 1),
                    free_mib=round(free_bytes / 2**20) if known else None)
    if mode == "auto" and known:
        least = max(1 if micro == 0 else min(micro, batch), fixed)  # the fewest samples a step can keep unchecked
        plan["on"] = per is None or least > _samples_that_fit(per, free_bytes)
        if per is None:
            plan["reason"] = "one sample's activations did not fit"
    if plan["on"]:
        enable()
    chunk = min(micro, batch) if micro > 0 else batch
    if micro == 0 and known:
        if plan["on"]:  # what a sample keeps once its blocks are recomputed
            per = _measure(forward, networks)
            plan["checkpointed_mib_per_sample"] = None if per is None else round(per / 2**20, 1)
        chunk = min(batch, max(1, _samples_that_fit(per, free_bytes)))
    plan.update(micro_batch=chunk, passes=max(chunk, fixed))
    return plan
