"""Remove Concept: a model, CLIP and memory without one learned concept (its rows' change taken out, its trigger
token back to the original embedding), and a report saying whether that was exact."""
from __future__ import annotations

import json

import torch
from comfy_api.latest import io

from ..core.carried import require_carried
from ..core.remove import memory_without_concept
from ..core.validate import known_concept
from .common import CATEGORY, Memory, original_token, patched_clip, patched_model, reading_backend


class RemoveConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinualConcepts_RemoveConcept", display_name="Remove Concept", category=CATEGORY,
            description="Take one concept out of a model that carries the memory: its row change is subtracted, "
                        "its trigger token restored, and the memory returned without it. Exact unless a later "
                        "concept was trained on some of its rows: then those keep the later concept's change and the "
                        "report names it and how many rows it shares. The inputs are left as they were.",
            inputs=[io.Model.Input("model", tooltip="A model carrying every concept of the memory (trained in this "
                                                    "graph, or a base model through 'Apply Concept Memory')."),
                    io.Clip.Input("clip", tooltip="Its text encoder (carrying the learned trigger tokens)."),
                    Memory.Input("memory", tooltip="The continual memory holding the concept."),
                    io.String.Input("name", default="", tooltip="The concept's name, as in the memory (Concept "
                                                                "Memory Info or `memory show` lists them).")],
            outputs=[io.Model.Output(display_name="model"), io.Clip.Output(display_name="clip"),
                     Memory.Output(display_name="memory"), io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, model, clip, memory, name) -> io.NodeOutput:
        new_memory, change, report = memory_without_concept(memory, name)
        record = known_concept(memory, name)
        with reading_backend(model, clip) as b:
            require_carried(memory, b)
            token = None if record.token is None else original_token(clip, b, record, carried=True)
            out_clip = patched_clip(clip, b, record.trigger, token)
        with torch.inference_mode(False):
            out_model = patched_model(model, change)
        text = json.dumps(report)
        return io.NodeOutput(out_model, out_clip, new_memory, text, ui={"text": [text]})
