"""(d) of `make bench`: our Merge into Checkpoint vs ComfyUI's own CheckpointSave, same model, same patches.

Runs with ComfyUI's python (COMFYUI_PATH, default /opt/ComfyUI, its .venv); bench/speed.py calls it as

    <comfy python> -m continual_concepts.bench.comfy_merge_bench prep --dir D         # slim SD1.5 checkpoint + a one-concept memory
    <comfy python> -m continual_concepts.bench.comfy_merge_bench ours|comfy --dir D   # one side per process: load, patch, save

Each side loads the same checkpoint, gives MODEL the same K/V row patches and CLIP the same trigger-token patch
(a CNS-sized concept: 0.13 % of UNet parameters), then saves: ours = MergeIntoCheckpoint.execute (checkpoint +
memory + LoRA + embedding), theirs = CheckpointSave.save (checkpoint only). Warm-up save, then `--repeats`
timed saves, median. Peak RSS: resource.getrusage(RUSAGE_SELF).ru_maxrss of the side's process (load included,
as the brief asks), and the save phase alone (VmHWM reset through /proc/self/clear_refs before each save).
Last stdout line: one JSON object."""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

from continual_concepts.bench.comfy_host import use_comfyui
from continual_concepts.bench.comfy_sd15_checkpoint import build_checkpoint


def prep(d: Path) -> dict:
    """Checkpoint + a memory holding one concept whose rows/deltas/token are random but CNS-sized."""
    import comfy.sd
    import torch

    from continual_concepts.core.backends.comfy_backend import ComfyBackend
    from continual_concepts.core.memory import ConceptRecord, ContinualMemory

    ckpt = build_checkpoint(str(d / "slim_sd15.safetensors"))
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(ckpt)
    b = ComfyBackend(model, clip, vae)
    layers = b.kv_layers()
    in_dim = layers[0].weight.shape[1]
    budget = max(len(layers), round(0.0013 * b.unet_param_count() / in_dim))
    g = torch.Generator().manual_seed(0)
    per = max(1, budget // len(layers))
    rows = {l.name: torch.sort(torch.randperm(l.weight.shape[0], generator=g)[:per]).values for l in layers}
    delta = {n: 1e-3 * torch.randn(len(r), in_dim, generator=g) for n, r in rows.items()}
    mem = ContinualMemory.for_model(b, "a photo")
    rec = ConceptRecord("bench", "sks", "a photo of sks", rows, delta, token=b.token_row("sks").float() + 0.01)
    mem.record_pretrained(b, rec.rows)
    mem.add_concept(rec)
    mem.save(d / "memory.safetensors")
    return {"checkpoint_mb": os.path.getsize(ckpt) / 2**20, "rows": sum(len(r) for r in rows.values()),
            "unet_params": b.unet_param_count()}


def _vm(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # MiB
    return float("nan")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def side(which: str, d: Path, repeats: int) -> dict:
    import comfy.sd
    import folder_paths
    import torch

    from continual_concepts.core.backends.comfy_backend import ComfyBackend
    from continual_concepts.core.memory import ContinualMemory
    from continual_concepts.nodes.common import patched_clip, patched_model

    out_dir = d / f"out_{which}"
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(d / "slim_sd15.safetensors"))
    mem = ContinualMemory.load(d / "memory.safetensors")
    rec = mem.concepts[0]
    with torch.inference_mode(False):
        m2 = patched_model(model, {n: (r, rec.delta[n]) for n, r in rec.rows.items()})
        c2 = patched_clip(clip, ComfyBackend(model, clip, vae), rec.trigger, rec.token)
    if which == "ours":
        from continual_concepts.nodes.merge_node import MergeIntoCheckpoint

        def save(i):
            with torch.inference_mode():
                MergeIntoCheckpoint.execute(m2, c2, vae, mem, f"bench/ours_{i}")
    else:
        from comfy_extras.nodes_model_merging import CheckpointSave

        def save(i):
            with torch.inference_mode():  # a fresh node per save: it reads the output folder in __init__
                CheckpointSave().save(m2, c2, vae, f"checkpoints/bench/comfy_{i}")
    for kind in ("loras", "embeddings"):  # Merge writes these where ComfyUI's loaders look: keep them in out_dir
        folder_paths.folder_names_and_paths[kind] = ([str(out_dir / kind)], folder_paths.folder_names_and_paths[kind][1])
    times, extra = [], []
    for i in range(repeats + 1):  # the first save is the warm-up
        shutil.rmtree(out_dir, ignore_errors=True)
        folder_paths.set_output_directory(str(out_dir))
        before = _vm("VmRSS")
        reset = _reset_peak()
        t0 = time.perf_counter()
        save(i)
        dt = time.perf_counter() - t0
        if i:
            times.append(dt)
            if reset:
                extra.append(_vm("VmHWM") - before)
    written = sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file()) / 2**20
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"side": which, "save_s": statistics.median(times), "save_times_s": times,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "save_phase_extra_rss_mb": statistics.median(extra) if extra else None, "written_mb": written}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["prep", "ours", "comfy"])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    use_comfyui(cpu=True)
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    r = prep(d) if a.what == "prep" else side(a.what, d, a.repeats)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
