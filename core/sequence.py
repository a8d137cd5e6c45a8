"""Learn a list of concepts one after another and write everything a user wants to look at afterwards:
memory, merged model, per-concept deltas and embeddings, report JSON and PNG pictures."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .backends.base import Backend
from .continual import learn_concept
from .dc_scores import dc_scores
from .export import save_concept_delta, save_embedding
from .memory import ContinualMemory
from .neurons import SelectConfig
from .pictures import dc_chart, heatmap, loss_curve, neuron_map, sample_grid, save_png
from .sampling import sample
from .train import TrainConfig


@dataclass
class ConceptSpec:
    name: str
    trigger: str
    prompt: str
    images: torch.Tensor  # [B,H,W,3] 0..1
    eval_prompts: list[str] = field(default_factory=list)  # held-out contexts (accuracy that counts)
    captions: list[str] | None = None  # one per image (its context); None: `prompt` for every image
    train_prompts: list[str] = field(default_factory=list)  # the training contexts (reported apart)


def dc_probe_accuracy(backend: Backend, memory: ContinualMemory, images: list[torch.Tensor],
                      n_timesteps: int = 8, seed: int = 0) -> tuple[list[float], torch.Tensor]:
    """For each learned concept: fraction of its images whose DC prediction is that concept."""
    with torch.no_grad():
        ctx = backend.encode_text(memory.candidates(), memory.tokens())
    accs, probs = [], []
    for i, imgs in enumerate(images):
        r = dc_scores(backend, backend.encode_images(imgs), ctx, n_timesteps=n_timesteps, seed=seed)
        accs.append(float((r.predicted == i + 1).float().mean()))
        probs.append(r.probs)
    return accs, torch.cat(probs)


def run_sequence(backend: Backend, concepts: list[ConceptSpec], out_dir, select_cfg: SelectConfig | None = None,
                 train_cfg: TrainConfig | None = None, generic_prompt: str = "a photo",
                 calibration_prompts: list[str] | None = None, memory: ContinualMemory | None = None,
                 progress=None, log=print) -> dict:
    for c in concepts:  # validate everything before any work
        backend.trigger_token_id(c.trigger)
        if c.images.ndim != 4 or len(c.images) == 0:
            raise ValueError(f"concept '{c.name}': no images")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    memory = memory or ContinualMemory.for_model(backend, generic_prompt)
    sizes = {l.name: l.weight.shape[0] for l in backend.kv_layers()}
    report = {"concepts": [], "dc_accuracy_matrix": []}
    t0 = time.perf_counter()
    for k, c in enumerate(concepts):
        log(f"[{k + 1}/{len(concepts)}] learning '{c.name}' (trigger '{c.trigger}')")
        o = learn_concept(backend, memory, c.images, c.name, c.trigger, c.prompt, select_cfg, train_cfg,
                          calibration_prompts, callback=progress, captions=c.captions)
        save_png(out / f"neurons_{c.name}.png", neuron_map(o.record.rows, sizes, f"concept neurons of {c.name}"))
        save_png(out / f"loss_{c.name}.png", loss_curve(o.result.history, f"loss while learning {c.name}"))
        save_concept_delta(out / "deltas" / f"{c.name}.safetensors", o.record)
        if o.record.token is not None:
            save_embedding(out / "embeddings" / f"{c.trigger}.safetensors", c.trigger, o.record.token)
        accs, probs = dc_probe_accuracy(backend, memory, [x.images for x in concepts[: k + 1]])
        report["dc_accuracy_matrix"].append(accs)
        labels = [f"{x.name} #{j}" for x in concepts[: k + 1] for j in range(len(x.images))]
        save_png(out / f"dc_after_{c.name}.png", dc_chart(probs, memory.candidates(), labels, f"DC scores after {c.name}"))
        rep = {k2: v for k2, v in o.selection.report.items() if k2 not in ("per_layer", "calibration_prompts", "config")}
        report["concepts"].append({"name": c.name, "trigger": c.trigger, "selection": rep,
                                   "train_seconds": o.result.seconds, "final_loss": o.result.history[-1],
                                   "dc_probe_accuracy": accs[-1]})
    mat = report["dc_accuracy_matrix"]
    save_png(out / "dc_accuracy_matrix.png", heatmap([r + [float("nan")] * (len(mat) - len(r)) for r in mat],
                                                      [f"after {c.name}" for c in concepts], [c.name for c in concepts],
                                                      "DC-probe accuracy"))
    prompts = [p for c in concepts for p in (c.eval_prompts or [c.prompt])]
    if prompts:
        imgs = sample(backend, prompts, seed=0)
        save_png(out / "samples.png", sample_grid(imgs, ncol=len(prompts)))
    memory.save(out / "memory.safetensors")
    final = mat[-1]
    report["summary"] = {
        "concepts": len(concepts),
        "dc_avg_acc": sum(final) / len(final),
        "dc_avg_forgetting": (sum(max(r[i] for r in mat[i:]) - final[i] for i in range(len(final) - 1)) / max(1, len(final) - 1)),
        "params_pct": 100 * sum(c.n_rows for c in memory.concepts) * next(iter(backend.kv_layers())).weight.shape[1]
        / backend.unet_param_count() / len(concepts),
        "seconds": time.perf_counter() - t0,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report
