"""Concept Gallery: every learned concept (and the generic prompt) sampled with fixed seeds in one labelled grid, with
a DC self-check, so what the model has learned, and whether a later concept broke an earlier one, shows at a glance."""
from __future__ import annotations

import json

import torch
from comfy_api.latest import io

from ..core.carried import require_carried
from ..core.gallery import DEFAULT_CFG, check_gallery, concept_gallery, gallery_work, with_self_check
from ..report.gallery import gallery_picture
from .common import CATEGORY, Memory, image, progress, training_backend


class ConceptGallery(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinualConcepts_ConceptGallery", display_name="Concept Gallery", category=CATEGORY,
            description="Sample every learned concept's prompt and the generic prompt with fixed seeds: one column "
                        "each (training thumbnail on top, name and trigger below) and a DC self-check: which "
                        "candidate the DC probe picks on each concept's own generations.",
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="A model carrying the memory's concepts (e.g. the Train Step's output)."),
                io.Clip.Input("clip", tooltip="Its text encoder (with the learned trigger tokens)."),
                io.Vae.Input("vae", tooltip="Its VAE."),
                Memory.Input("memory", tooltip="The continual memory whose concepts are shown."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Noise seed; every column starts from the same noise, so galleries after each "
                                     "concept compare like for like."),
                io.Int.Input("samples", default=4, min=1, max=64, tooltip="Images per concept (and for the generic prompt)."),
                io.Int.Input("size", default=512, min=64, max=2048, step=8,
                             tooltip="Sample width and height in pixels (SD1.x 512, SDXL 1024)."),
                io.Int.Input("steps", default=20, min=1, max=200, tooltip="Sampling steps (DDIM)."),
                io.Float.Input("cfg", default=DEFAULT_CFG, min=1.0, max=30.0, step=0.5, optional=True,
                               tooltip="Classifier-free guidance scale (1: none)."),
            ],
            outputs=[io.Image.Output(display_name="gallery"), io.String.Output(display_name="self_check_json"),
                     Memory.Output(display_name="memory",
                                   tooltip="The memory with each concept's DC self-check recorded (Concept Memory "
                                           "Info and `memory show` list it).")],
        )

    @classmethod
    def execute(cls, model, clip, vae, memory, seed, samples, size, steps, cfg=DEFAULT_CFG) -> io.NodeOutput:
        check_gallery(memory, samples, size, steps)
        total = gallery_work(len(memory.concepts), samples, steps, cfg)
        with training_backend(model, clip, vae) as b, torch.no_grad():
            require_carried(memory, b)
            g = concept_gallery(b, memory, seed=seed, samples=samples, size=size, steps=steps, cfg=cfg,
                                progress=progress(total, lambda n, t: f"{n}/{t} denoiser evaluations"))
        check = g.self_check()
        js = json.dumps(check)
        return io.NodeOutput(image(gallery_picture(g)), js, with_self_check(memory, check), ui={"text": [js]})
