"""Load / Save Concept Memory and Load Concept Images (a folder -> IMAGE batch)."""
from __future__ import annotations

from pathlib import Path

from comfy_api.latest import io

from ..core.atomic_io import safe_output_path
from ..core.images import load_image_folder
from ..core.memory import ContinualMemory
from .common import CATEGORY, Memory

PACK_DIR = Path(__file__).resolve().parents[1]


def _resolve(folder: str, kind: str) -> Path:
    """Absolute path, else relative to ComfyUI's input folder, else to this pack (its example images)."""
    import folder_paths

    p = Path(folder)
    for cand in ([p] if p.is_absolute() else [Path(folder_paths.get_input_directory()) / p, PACK_DIR / p]):
        if cand.exists():
            return cand
    raise FileNotFoundError(f"{kind}: '{folder}' not found (absolute, in the input folder, or in the pack)")


class LoadConceptImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinualConcepts_LoadConceptImages", display_name="Load Concept Images", category=CATEGORY,
            description="All images of a folder as one batch (alpha composited on white, grayscale to RGB).",
            inputs=[io.String.Input("folder", default="workflows/example_images/red-ring",
                                    tooltip="Folder: absolute, relative to ComfyUI's input folder, or to this pack."),
                    io.Int.Input("size", default=64, min=0, max=2048, step=8,
                                 tooltip="Resize to size×size (0 = keep; all images must then match).")],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def execute(cls, folder, size) -> io.NodeOutput:
        return io.NodeOutput(load_image_folder(_resolve(folder, "folder"), size or None))


class LoadConceptMemory(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinualConcepts_LoadConceptMemory", display_name="Load Concept Memory", category=CATEGORY,
            description="Read a continual memory (.safetensors) written by Save Concept Memory or Merge.",
            inputs=[io.String.Input("path", default="continual_concepts/memory.safetensors",
                                    tooltip="File: absolute, relative to the input folder, or to the output folder.")],
            outputs=[Memory.Output(display_name="memory")],
        )

    @classmethod
    def execute(cls, path) -> io.NodeOutput:
        import folder_paths

        p = Path(path)
        if not p.is_absolute() and not (Path(folder_paths.get_input_directory()) / p).exists():
            p = Path(folder_paths.get_output_directory()) / p
        else:
            p = p if p.is_absolute() else Path(folder_paths.get_input_directory()) / p
        return io.NodeOutput(ContinualMemory.load(p))


class SaveConceptMemory(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinualConcepts_SaveConceptMemory", display_name="Save Concept Memory", category=CATEGORY,
            description="Write the memory under the output folder (atomic, never overwrites).", is_output_node=True,
            inputs=[Memory.Input("memory", tooltip="The continual memory."),
                    io.String.Input("filename_prefix", default="continual_concepts/memory",
                                    tooltip="Relative path under the output folder; a counter is appended.")],
            outputs=[io.String.Output(display_name="path")],
        )

    @classmethod
    def execute(cls, memory, filename_prefix) -> io.NodeOutput:
        import folder_paths

        path = next_free(folder_paths.get_output_directory(), filename_prefix, ".safetensors")
        memory.save(path)
        return io.NodeOutput(str(path), ui={"text": [str(path)]})


def next_free(root: str, prefix: str, suffix: str) -> Path:
    """root/prefix_00001suffix, the first counter not taken; the prefix cannot leave root."""
    base = safe_output_path(root, prefix)
    for i in range(1, 100000):
        p = base.with_name(f"{base.name}_{i:05d}{suffix}")
        if not p.exists():
            return p
    raise FileExistsError(f"filename_prefix '{prefix}': no free file name left")
