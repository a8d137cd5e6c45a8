"""DC Score Probe: which learned concept (or generic prompt) explains each image best."""
from __future__ import annotations

import json

import torch
from comfy_api.latest import io

from ..core.backends.counting import CountingBackend
from ..core.carried import require_carried
from ..core.dc_scores import dc_scores
from ..core.images import check_image_batch
from ..report.pictures import dc_chart
from .common import CATEGORY, Memory, image, progress, training_backend


def candidates(memory, prompts: str) -> tuple[list[str], dict]:
    cands = memory.candidates() if memory is not None else []
    cands += [p.strip() for p in prompts.splitlines() if p.strip()]
    if not cands:
        raise ValueError("candidates: connect a memory and/or write prompts (one per line); the list is empty")
    return cands, (memory.tokens() if memory is not None else {})


class DCScoreProbe(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinualConcepts_DCScoreProbe", display_name="DC Score Probe", category=CATEGORY,
            description="Diffusion-classifier scores: the model's own denoising errors under each candidate prompt.",
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="Model to probe (e.g. after training)."),
                io.Clip.Input("clip", tooltip="Its text encoder."),
                io.Vae.Input("vae", tooltip="Its VAE."),
                io.Image.Input("images", tooltip="Images to classify."),
                io.String.Input("prompts", default="", multiline=True, tooltip="Extra candidate prompts, one per line."),
                io.Int.Input("timesteps", default=16, min=1, max=1000, tooltip="Evenly spaced timesteps per image (shared noise)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Noise seed."),
                Memory.Input("memory", optional=True, tooltip="Learned concepts become candidates (plus the generic prompt)."),
            ],
            outputs=[io.String.Output(display_name="scores_json"), io.Image.Output(display_name="chart"),
                     io.String.Output(display_name="predicted")],
        )

    @classmethod
    def execute(cls, model, clip, vae, images, prompts, timesteps, seed, memory=None) -> io.NodeOutput:
        images = check_image_batch(images)
        cands, tokens = candidates(memory, prompts)
        total = len(images) * timesteps * len(cands)
        with training_backend(model, clip, vae) as b, torch.no_grad():
            if memory is not None:
                require_carried(memory, b)
            x0, ctx = b.encode_images(images), b.encode_text(cands, tokens)
            counted = CountingBackend(b, progress(total, lambda n, t: f"{n}/{t} denoiser evaluations"))
            r = dc_scores(counted, x0, ctx, n_timesteps=timesteps, seed=seed)
        pred = [cands[i] for i in r.predicted.tolist()]
        data = {"candidates": cands, "probs": r.probs.tolist(), "errors": r.errors.tolist(), "predicted": pred,
                "timesteps": r.timesteps.tolist()}
        js = json.dumps(data)
        return io.NodeOutput(js, image(dc_chart(r.probs, cands)), "\n".join(pred), ui={"text": [js]})
