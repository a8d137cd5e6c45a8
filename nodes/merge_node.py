"""Merge into Checkpoint: one standard checkpoint with every learned concept baked in, plus, where ComfyUI's loaders
look, the memory, a per-concept LoRA (a row delta is a LoRA whose up-matrix selects rows) and each trigger embedding."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from comfy_api.latest import io

from ..core.atomic_io import atomic_write, next_free, resolve_prefix
from ..core.backends.comfy_backend import token_parts
from ..core.carried import CARRIED, require_carried
from ..core.export import row_delta_as_lora, save_embedding
from ..core.row_delta import weight_shapes
from ..core.strength import parse_strengths
from .common import CATEGORY, STRENGTH_TOOLTIP, Memory, at_strengths, reading_backend
from .memory_nodes import memory_dir


def lora_tensors(record, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """ComfyUI LoRA keys (lora_unet_*) for one concept's row deltas (`shapes`: each layer's weight shape); alpha =
    rank so the scale is 1."""
    t = {}
    for layer, rows in record.rows.items():
        up, down = row_delta_as_lora(rows, record.delta[layer].float(), shapes[layer])
        key = "lora_unet_" + layer[len("diffusion_model."):].replace(".", "_")
        t[f"{key}.lora_up.weight"] = up.half().contiguous()
        t[f"{key}.lora_down.weight"] = down.half().contiguous()
        t[f"{key}.alpha"] = torch.tensor(float(len(rows)))
    return t


SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "as loaded": None}


def save_checkpoint(path, model, clip, vae, float_dtype, metadata) -> None:
    """comfy.sd.save_checkpoint's steps (patches baked, ComfyUI's own key layout), written tensor by tensor in
    `float_dtype`: casting the whole state dict first would hold a second model (SDXL on a CPU: +6.5 GiB)."""
    import comfy.model_management as mm

    from ..core.stream_safetensors import write_safetensors

    clip_sd, vae_sd = clip.get_sd(), vae.get_sd()
    mm.load_models_gpu([model, clip.load_model()], force_patch_weights=True)
    write_safetensors(path, model.model.state_dict_for_saving(clip_sd, vae_sd, None), metadata, float_dtype)


def file_part(text: str) -> str:
    """A concept name or trigger as part of a file name (no separators, no dots that hide the extension)."""
    return re.sub(r"[^\w-]+", "_", text).strip("_") or "concept"


class MergeIntoCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinualConcepts_MergeIntoCheckpoint", display_name="Merge into Checkpoint", category=CATEGORY,
            description="Write output/checkpoints/<prefix>_NNNNN.safetensors (loads with CheckpointLoaderSimple), one "
                        "LoRA per concept to models/loras/ (LoraLoader), one embedding per trigger to models/embeddings/ "
                        "and the memory to output/concept_memory/. Checks first that the model carries every concept "
                        "of the memory; a strength per concept may scale them. Atomic; never overwrites.",
            is_output_node=True,
            inputs=[io.Model.Input("model", tooltip="The trained model (carries the concepts as patches)."),
                    io.Clip.Input("clip", tooltip="The trained text encoder (carries the trigger tokens)."),
                    io.Vae.Input("vae", tooltip="The VAE to include."),
                    Memory.Input("memory", tooltip="The continual memory of the learned concepts."),
                    io.String.Input("filename_prefix", default="continual_concepts/merged",
                                    tooltip="Name (may hold subfolders) under each file's folder; a counter is "
                                            "appended; empty or '.' means 'merged'."),
                    io.String.Input("strength", default="", optional=True,
                                    tooltip=STRENGTH_TOOLTIP + " The checkpoint, LoRAs, embeddings and memory written "
                                            "all hold the concepts at these strengths (concepts at 0 left out)."),
                    io.Combo.Input("save_dtype", options=list(SAVE_DTYPES), default="fp16", optional=True,
                                   tooltip="The checkpoint's floating-point weights: fp16 (default) is how SD1.5 and "
                                           "SDXL checkpoints are shared and what ComfyUI holds and saves on a GPU "
                                           "(the learned rows keep the precision the model computes with there); "
                                           "'as loaded' writes what ComfyUI holds now, as Save Checkpoint does (fp32 "
                                           "on a CPU: twice the size, and an SDXL file then needs ~26 GiB RAM to "
                                           "load on a CPU).")],
            outputs=[io.String.Output(display_name="checkpoint_path")],
        )

    @classmethod
    def execute(cls, model, clip, vae, memory, filename_prefix, strength="", save_dtype="fp16") -> io.NodeOutput:
        import folder_paths
        from safetensors.torch import save_file

        if save_dtype not in SAVE_DTYPES:
            raise ValueError(f"save_dtype: '{save_dtype}' is not one of {', '.join(SAVE_DTYPES)}")
        roots = {"checkpoints": Path(folder_paths.get_output_directory()) / "checkpoints", "memory": memory_dir(),
                 "loras": Path(folder_paths.get_folder_paths("loras")[0]),
                 "embeddings": Path(folder_paths.get_folder_paths("embeddings")[0])}
        base = {k: resolve_prefix(r, filename_prefix, "merged") for k, r in roots.items()}
        strengths = parse_strengths(strength, memory)
        with reading_backend(model, clip) as b:
            require_carried(memory, b)
            shapes = weight_shapes(b)
            if any(s != 1 for s in strengths.values()):
                states = {c.name: CARRIED for c in memory.concepts}
                model, clip, memory = at_strengths(model, clip, b, memory, states, strengths)
        loras = [(c, f".{file_part(c.name)}.safetensors") for c in memory.concepts]
        embs = [(c, f".{file_part(c.trigger)}.safetensors") for c in memory.concepts if c.token is not None]
        n = next_free([(base["checkpoints"], ".safetensors"), (base["memory"], ".safetensors")]
                      + [(base["loras"], s) for _, s in loras] + [(base["embeddings"], s) for _, s in embs])

        def name(kind, suffix):
            return base[kind].with_name(f"{base[kind].name}_{n:05d}{suffix}")

        ckpt = name("checkpoints", ".safetensors")
        meta = {"continual_concepts": ", ".join(f"{c.name}={c.trigger}" for c in memory.concepts)}
        atomic_write(ckpt, lambda tmp: save_checkpoint(tmp, model, clip, vae, SAVE_DTYPES[save_dtype], meta))
        written = [ckpt, memory.save(name("memory", ".safetensors"))]
        for c, suffix in loras:
            t = lora_tensors(c, shapes)
            written.append(atomic_write(name("loras", suffix),
                                        lambda tmp, t=t, c=c: save_file(t, tmp, metadata={"trigger": c.trigger})))
        for c, suffix in embs:
            written.append(save_embedding(name("embeddings", suffix), c.trigger, c.token, token_parts(clip)))
        return io.NodeOutput(str(ckpt), ui={"text": [str(p) for p in written]})
