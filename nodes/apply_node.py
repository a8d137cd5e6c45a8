"""Apply Concept Memory: bring a base model (and its CLIP) to carry every concept of a memory — the way to go on
from a saved memory another day. Concepts the model already carries are left as they are."""
from __future__ import annotations

import json

import torch
from comfy_api.latest import io

from ..core.carried import APPLY_NODE, MISSING, missing_changes, model_states
from .common import CATEGORY, Memory, patched_clip, patched_model, reading_backend


class ApplyConceptMemory(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinualConcepts_ApplyConceptMemory", display_name=APPLY_NODE, category=CATEGORY,
            description="Patch the memory's concepts (K/V rows and trigger tokens) onto a model made from the same base "
                        "model; concepts it already carries are kept. The inputs are left as they were.",
            inputs=[io.Model.Input("model", tooltip="A model made from the memory's base model (e.g. the base checkpoint)."),
                    io.Clip.Input("clip", tooltip="Its text encoder."),
                    Memory.Input("memory", tooltip="The continual memory whose concepts the model should carry.")],
            outputs=[io.Model.Output(display_name="model"), io.Clip.Output(display_name="clip"),
                     io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, model, clip, memory) -> io.NodeOutput:
        with reading_backend(model, clip) as b:
            states = model_states(memory, b)
            out_clip = clip.clone()
            for c in memory.concepts:
                if states[c.name] == MISSING and c.token is not None:
                    out_clip = patched_clip(out_clip, b, c.trigger, c.token)
        with torch.inference_mode(False):
            out_model = patched_model(model, missing_changes(memory, states))
        report = json.dumps({"applied": [n for n, s in states.items() if s == MISSING],
                             "already_carried": [n for n, s in states.items() if s != MISSING]})
        return io.NodeOutput(out_model, out_clip, report, ui={"text": [report]})
