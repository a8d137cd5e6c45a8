"""Load / Save Concept Memory and Load Concept Images (a folder -> IMAGE batch)."""
from __future__ import annotations

from pathlib import Path

from comfy_api.latest import io

from ..core.atomic_io import next_free, resolve_prefix
from ..core.images import FITS, folder_fingerprint, load_image_folder
from ..core.memory import ContinualMemory
from .common import CATEGORY, Memory

PACK_DIR = Path(__file__).resolve().parents[1]
MEMORY_FOLDER = "concept_memory"  # under ComfyUI's output folder


def memory_dir() -> Path:
    import folder_paths

    return Path(folder_paths.get_output_directory()) / MEMORY_FOLDER


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
            description="All images of a folder as one batch (alpha composited on white, grayscale to RGB), each "
                        "brought to the model's size keeping its proportions.",
            inputs=[io.String.Input("folder", default="workflows/example_images/red-ring",
                                    tooltip="Folder: absolute, relative to ComfyUI's input folder, or to this pack."),
                    io.Int.Input("size", default=512, min=0, max=2048, step=8,
                                 tooltip="Square side the images are brought to: the model's native size (512 for "
                                         "SD1.x/2.x, 1024 for SDXL). 0 = keep (all images must then match)."),
                    io.Combo.Input("fit", options=list(FITS), default="crop", optional=True,
                                   tooltip="crop: scale the short side and cut the centre (keeps proportions); pad: "
                                           "scale the long side, centre on white; stretch: squash to the square.")],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def fingerprint_inputs(cls, folder, size, fit="crop"):
        """Run again when the folder's images change (names, sizes, mtimes), not only when the inputs do."""
        try:
            return folder_fingerprint(_resolve(folder, "folder"))
        except FileNotFoundError:
            return float("nan")  # never equal: execute() reports the missing folder

    @classmethod
    def execute(cls, folder, size, fit="crop") -> io.NodeOutput:
        return io.NodeOutput(load_image_folder(_resolve(folder, "folder"), size or None, fit))


class LoadConceptMemory(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinualConcepts_LoadConceptMemory", display_name="Load Concept Memory", category=CATEGORY,
            description="Read a continual memory (.safetensors) written by Save Concept Memory or Merge.",
            inputs=[io.String.Input("path", default="continual_concepts/memory.safetensors",
                                    tooltip="File: absolute, or relative to the input folder, output/concept_memory/ "
                                            "or the output folder.")],
            outputs=[Memory.Output(display_name="memory")],
        )

    @classmethod
    def execute(cls, path) -> io.NodeOutput:
        import folder_paths

        p = Path(path)
        roots = [folder_paths.get_input_directory(), memory_dir(), folder_paths.get_output_directory()]
        cands = [p] if p.is_absolute() else [Path(r) / p for r in roots]
        return io.NodeOutput(ContinualMemory.load(next((c for c in cands if c.exists()), cands[-1])))


class SaveConceptMemory(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinualConcepts_SaveConceptMemory", display_name="Save Concept Memory", category=CATEGORY,
            description="Write the memory to output/concept_memory/<prefix>_NNNNN.safetensors (atomic, never "
                        "overwrites).", is_output_node=True,
            inputs=[Memory.Input("memory", tooltip="The continual memory."),
                    io.String.Input("filename_prefix", default="memory",
                                    tooltip="Name (may hold subfolders) under output/concept_memory/; a counter is "
                                            "appended; empty or '.' means 'memory'.")],
            outputs=[io.String.Output(display_name="path")],
        )

    @classmethod
    def execute(cls, memory, filename_prefix) -> io.NodeOutput:
        base = resolve_prefix(memory_dir(), filename_prefix, "memory")
        path = base.with_name(f"{base.name}_{next_free([(base, '.safetensors')]):05d}.safetensors")
        memory.save(path)
        return io.NodeOutput(str(path), ui={"text": [str(path)]})
