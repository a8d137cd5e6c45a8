"""Apply Concept Memory: bring a base model (and its CLIP) to carry every concept of a memory — the way to go on
from a saved memory another day — optionally each at its own strength. Concepts the model already carries are kept
(at strength 1) or moved to the strength asked, so the output is the same whatever the model carried."""
from __future__ import annotations

import json

from comfy_api.latest import io

from ..core.carried import APPLY_NODE, MISSING, model_states
from ..core.strength import parse_strengths
from .common import CATEGORY, STRENGTH_TOOLTIP, Memory, at_strengths, reading_backend


class ApplyConceptMemory(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinualConcepts_ApplyConceptMemory", display_name=APPLY_NODE, category=CATEGORY,
            description="Patch the memory's concepts (cross-attention rows and trigger tokens) onto a model made from the same base "
                        "model, each at its strength; concepts it already carries are kept. The memory output is the "
                        "one the patched model carries (changes scaled, concepts at 0 left out): connect it to Merge "
                        "or Train downstream. The inputs are left as they were.",
            inputs=[io.Model.Input("model", tooltip="A model made from the memory's base model (e.g. the base checkpoint)."),
                    io.Clip.Input("clip", tooltip="Its text encoder."),
                    Memory.Input("memory", tooltip="The continual memory whose concepts the model should carry."),
                    io.String.Input("strength", default="", optional=True,
                                    tooltip=STRENGTH_TOOLTIP + " Also for concepts the model already carries (their "
                                            "original token is read from the CLIP's own weights; a merged checkpoint "
                                            "has lost it: use the base checkpoint).")],
            outputs=[io.Model.Output(display_name="model"), io.Clip.Output(display_name="clip"),
                     io.String.Output(display_name="report"), Memory.Output(display_name="memory")],
        )

    @classmethod
    def execute(cls, model, clip, memory, strength="") -> io.NodeOutput:
        strengths = parse_strengths(strength, memory)
        with reading_backend(model, clip) as b:
            states = model_states(memory, b)
            out_model, out_clip, out_memory = at_strengths(model, clip, b, memory, states, strengths)
        report = json.dumps({"applied": [n for n, s in states.items() if s == MISSING],
                             "already_carried": [n for n, s in states.items() if s != MISSING],
                             "strengths": {n: s for n, s in strengths.items() if s != 1}})
        return io.NodeOutput(out_model, out_clip, report, out_memory, ui={"text": [report]})
