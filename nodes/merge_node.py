"""Merge into Checkpoint: one standard checkpoint with every learned concept baked in, plus beside it the
memory, a per-concept LoRA (a row delta is a LoRA whose up-matrix selects rows) and the trigger embedding."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..core.atomic_io import atomic_write
from ..core.backends.comfy_backend import token_parts
from ..core.export import row_delta_as_lora, save_embedding
from .common import CATEGORY, Memory
from .memory_nodes import next_free


def lora_tensors(record, out_dims: dict[str, int]) -> dict[str, torch.Tensor]:
    """ComfyUI LoRA keys (lora_unet_*) for one concept's row deltas; alpha = rank so the scale is 1."""
    t = {}
    for layer, rows in record.rows.items():
        up, down = row_delta_as_lora(rows, record.delta[layer].float(), out_dims[layer])
        key = "lora_unet_" + layer[len("diffusion_model."):].replace(".", "_")
        t[f"{key}.lora_up.weight"] = up.half().contiguous()
        t[f"{key}.lora_down.weight"] = down.half().contiguous()
        t[f"{key}.alpha"] = torch.tensor(float(len(rows)))
    return t


class MergeIntoCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinualConcepts_MergeIntoCheckpoint", display_name="Merge into Checkpoint", category=CATEGORY,
            description="Write output/checkpoints/<prefix>_NNNNN.safetensors (loads with CheckpointLoaderSimple) and, "
                        "beside it, the memory, one LoRA and one embedding per concept. Atomic; never overwrites.",
            is_output_node=True,
            inputs=[io.Model.Input("model", tooltip="The trained model (carries the concepts as patches)."),
                    io.Clip.Input("clip", tooltip="The trained text encoder (carries the trigger tokens)."),
                    io.Vae.Input("vae", tooltip="The VAE to include."),
                    Memory.Input("memory", tooltip="The continual memory of the learned concepts."),
                    io.String.Input("filename_prefix", default="continual_concepts/merged",
                                    tooltip="Relative path under output/checkpoints/; cannot leave the output folder.")],
            outputs=[io.String.Output(display_name="checkpoint_path")],
        )

    @classmethod
    def execute(cls, model, clip, vae, memory, filename_prefix) -> io.NodeOutput:
        import comfy.sd
        import folder_paths
        from safetensors.torch import save_file

        root = folder_paths.get_output_directory()
        ckpt = next_free(root, f"checkpoints/{filename_prefix}", ".safetensors")
        stem = ckpt.with_suffix("")
        meta = {"continual_concepts": ", ".join(f"{c.name}={c.trigger}" for c in memory.concepts)}
        atomic_write(ckpt, lambda tmp: comfy.sd.save_checkpoint(tmp, model, clip, vae, metadata=meta))
        memory.save(stem.with_name(stem.name + ".memory.safetensors"))
        dims = {k[: -len(".weight")]: v.shape[0] for k, v in model.model.state_dict().items()
                if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))}
        written = [str(ckpt)]
        for c in memory.concepts:
            t = lora_tensors(c, dims)
            p = stem.with_name(f"{stem.name}.{c.name}.lora.safetensors")
            atomic_write(p, lambda tmp, t=t: save_file(t, tmp, metadata={"trigger": c.trigger}))
            written.append(str(p))
            if c.token is not None:
                written.append(str(save_embedding(stem.with_name(f"{stem.name}.{c.trigger}.embedding.safetensors"),
                                                  c.trigger, c.token, token_parts(clip))))
        return io.NodeOutput(str(ckpt), ui={"text": written})
