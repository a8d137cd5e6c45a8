"""How a training step fits the memory: micro-batches, DSC one candidate at a time, and gradient checkpointing
(on, off or auto). Auto measures instead of guessing from the model's name: one training forward of one sample
counts the bytes autograd keeps for the backward pass. A step back-propagates one term at a time, so it keeps the
activations of its largest term only (a micro-batch of the batch, DSC's candidate passes, the prior's prompts); the
micro-batch shrinks first (no extra compute), then DSC goes one candidate at a time, and checkpointing goes on only
when even that does not fit. So batch 8 trains wherever two samples fit, with batch 8's gradients; SDXL at 1024 px
on a 12 GB card (~4.9 GiB kept per sample) checkpoints, a toy model on a CPU does none of it."""
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
           enable=lambda: None, fixed_split: int | None = None) -> dict:
    """How a step fits the memory, by the cheapest means first. A step back-propagates one term at a time, so it
    keeps max(micro-batch, `fixed`) samples' activations, `fixed` being its largest regulariser's passes (DSC's
    candidates, the prior's prompts), or `fixed_split` when DSC goes one candidate at a time:
    1. micro-batches (the batch's gradients add up the same; no extra compute);
    2. DSC one candidate at a time (`dsc_split`: the student runs once more without gradients);
    3. gradient checkpointing (every block runs twice), only in auto and only when 1 and 2 do not fit.
    `forward` runs one training forward of one sample through `networks`; `enable()` turns checkpointing on.
    micro 0 = auto; free_bytes None = unknown (the whole batch, nothing else in auto).
    Returns {'mode', 'on', 'micro_batch', 'dsc_split', 'passes', and what was measured}."""
    check_checkpointing(mode)
    fixed_split = fixed if fixed_split is None else fixed_split
    plan = {"mode": mode, "on": mode == "on"}
    known = free_bytes is not None
    per = None

    def measure(key):
        nonlocal per
        per = _measure(forward, networks)
        plan[key] = None if per is None else round(per / 2**20, 1)

    def fits(samples):
        return known and samples <= _samples_that_fit(per, free_bytes)

    if mode == "auto" or (known and mode == "off"):  # "on" measures once, checkpointed (below)
        measure("saved_mib_per_sample")
        plan["free_mib"] = round(free_bytes / 2**20) if known else None
    least = 1 if micro == 0 else min(micro, batch)  # the fewest batch samples a step can hold at once
    if mode == "auto" and known:
        plan["on"] = not fits(max(least, fixed_split))
        if per is None:
            plan["reason"] = "one sample's activations did not fit"
    if plan["on"]:
        enable()
        if known:  # what a sample keeps once its blocks are recomputed
            measure("checkpointed_mib_per_sample")
    split = known and fixed_split < fixed and not fits(max(least, fixed))
    chunk = min(micro, batch) if micro > 0 else batch
    if micro == 0 and known:
        chunk = min(batch, max(1, _samples_that_fit(per, free_bytes)))
    plan.update(micro_batch=chunk, dsc_split=split, passes=max(chunk, fixed_split if split else fixed))
    return plan
