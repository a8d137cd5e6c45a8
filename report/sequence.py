"""Learn a list of concepts one after another (core/sequence.py) and write everything a user wants to look at
afterwards: memory, per-concept deltas and embeddings, report JSON and PNG pictures."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..core.backends.base import Backend
from ..core.export import save_concept_delta, save_embedding
from ..core.memory import ContinualMemory
from ..core.neurons import SelectConfig
from ..core.row_delta import row_counts
from ..core.sampling import sample
from ..core.sequence import ConceptSpec, SequenceStep, learn_sequence, sequence_summary
from ..core.train import TrainConfig
from .pictures import dc_chart, heatmap, loss_curve, neuron_map, sample_grid, save_png


def run_sequence(backend: Backend, concepts: list[ConceptSpec], out_dir, select_cfg: SelectConfig | None = None,
                 train_cfg: TrainConfig | None = None, generic_prompt: str = "a photo",
                 calibration_prompts: list[str] | None = None, memory: ContinualMemory | None = None,
                 progress=None, log=print) -> dict:
    out = Path(out_dir)
    memory = memory or ContinualMemory.for_model(backend, generic_prompt)
    sizes = row_counts(backend, (select_cfg or SelectConfig()).parts)
    report = {"concepts": []}

    def write_step(s: SequenceStep):
        c, o = s.spec, s.outcome
        save_png(out / f"neurons_{c.name}.png", neuron_map(o.record.rows, sizes, f"concept neurons of {c.name}"))
        save_png(out / f"loss_{c.name}.png", loss_curve(o.result.history, f"loss while learning {c.name}"))
        save_concept_delta(out / "deltas" / f"{c.name}.safetensors", o.record)
        if o.record.token is not None:
            save_embedding(out / "embeddings" / f"{c.trigger}.safetensors", c.trigger, o.record.token)
        labels = [f"{x.name} #{j}" for x in concepts[: s.index + 1] for j in range(len(x.images))]
        save_png(out / f"dc_after_{c.name}.png",
                 dc_chart(s.dc_probs, memory.candidates(), labels, f"DC scores after {c.name}"))
        rep = {k: v for k, v in o.selection.report.items() if k not in ("per_layer", "calibration_prompts", "config")}
        report["concepts"].append({"name": c.name, "trigger": c.trigger, "selection": rep,
                                   "train_seconds": o.result.seconds, "final_loss": o.result.history[-1],
                                   "dc_probe_accuracy": s.dc_accuracy[-1]})

    t0 = time.perf_counter()
    mat = learn_sequence(backend, concepts, memory, select_cfg, train_cfg, calibration_prompts, write_step,
                         progress, log)
    report["dc_accuracy_matrix"] = mat
    save_png(out / "dc_accuracy_matrix.png", heatmap([r + [float("nan")] * (len(mat) - len(r)) for r in mat],
                                                      [f"after {c.name}" for c in concepts], [c.name for c in concepts],
                                                      "DC-probe accuracy"))
    prompts = [p for c in concepts for p in (c.eval_prompts or [c.prompt])]
    if prompts:
        save_png(out / "samples.png", sample_grid(sample(backend, prompts, seed=0), ncol=len(prompts)))
    memory.save(out / "memory.safetensors")
    report["summary"] = sequence_summary(backend, memory, mat, time.perf_counter() - t0)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report
