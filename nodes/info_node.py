"""Concept Memory Info: what a memory holds, as text in the graph (the table `python -m continual_concepts memory
show` prints), so a user sees which concepts a model was taught without leaving ComfyUI."""
from __future__ import annotations

from comfy_api.latest import io

from ..report.tables import memory_table
from .common import CATEGORY, Memory


class ConceptMemoryInfo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinualConcepts_ConceptMemoryInfo", display_name="Concept Memory Info", category=CATEGORY,
            description="The memory's base model fingerprint and, per concept, name, trigger, prompt, rows, % of UNet "
                        "parameters, steps, seconds, date and final loss: shown on the node and given as text.",
            is_output_node=True,
            inputs=[Memory.Input("memory", tooltip="The continual memory to describe.")],
            outputs=[io.String.Output(display_name="info")],
        )

    @classmethod
    def execute(cls, memory) -> io.NodeOutput:
        table = memory_table(memory.summary())
        return io.NodeOutput(table, ui={"text": [table]})
