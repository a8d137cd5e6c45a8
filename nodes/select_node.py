"""Select Concept Neurons: which cross-attention rows to train for a concept (thin wrapper over core.neurons)."""
from __future__ import annotations

import json

from comfy_api.latest import io

from ..core.images import check_image_batch
from ..core.neurons import SelectConfig, default_calibration_prompts, select_concept_neurons
from ..core.precision import compute_dtype
from ..core.row_delta import row_counts
from ..core.validate import check_trigger_in_prompt
from ..report.pictures import neuron_map
from .common import CATEGORY, Memory, Neurons, image, progress, size_warning, training_backend


class SelectConceptNeurons(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinualConcepts_SelectConceptNeurons", display_name="Select Concept Neurons", category=CATEGORY,
            description="Find the cross-attention rows (all four projections, or K/V) that respond most to the concept, "
                        "optionally leaving out rows that generic prompts need (CNS's general filter).",
            inputs=[
                io.Model.Input("model", tooltip="The model to personalise (SD1.x / SD2.x / SDXL)."),
                io.Clip.Input("clip", tooltip="Its text encoder."),
                io.Vae.Input("vae", tooltip="Its VAE, to encode the concept images."),
                io.Image.Input("images", tooltip="A few images of the concept (one batch, same size)."),
                io.String.Input("prompt", default="a photo of sks", tooltip="Prompt describing the concept, with the trigger word."),
                io.String.Input("trigger", default="sks", tooltip="A rare word that is exactly one token; it will mean the concept."),
                io.Float.Input("budget_pct", default=0.13, min=0.001, max=10.0, step=0.01, tooltip="At most this % of UNet parameters is trained (CNS: ~0.13 % for SD1.5, 2.5 % of its "
                                         "cross-attention; the same share of SDXL's is ~0.54)."),
                io.Int.Input("calibration_prompts", default=SelectConfig.n_calibration, min=0, max=100, tooltip="How many generic prompts decide which rows are 'general' (and never trained; CNS uses 20). 0, the default: no such filter, the top-scoring rows within the budget (no calibration passes); with the Train node's rank 16 this learned most on the toy, 8 concepts in a row (bench/RESULTS.md)."),
                io.Combo.Input("general_scoring", options=["taylor", "activation"], tooltip="taylor: gradients on your images with generic prompts; activation: text only, faster."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Seed for timesteps, noise and the prompt sample."),
                io.Int.Input("batch_size", default=4, min=1, max=64,
                             tooltip="Images per forward/backward pass while scoring (lower = less memory)."),
                Memory.Input("memory", optional=True, tooltip="Continual memory, to report overlap with earlier concepts."),
                io.Combo.Input("precision", options=["auto", "bf16", "fp32"], default="auto", optional=True,
                               tooltip="Arithmetic of the model while scoring. auto: bf16 on a GPU that has it, else "
                                       "fp32 (fp16 is not offered: scores are gradients, and unscaled fp16 loses "
                                       "small ones)."),
                io.Combo.Input("layers", options=["kv", "qkvo", "qkvoc"], default=SelectConfig.parts, optional=True,
                               tooltip="Which layers rows come from. qkvo (default): the cross-attention's keys, values, "
                                       "queries and output projections; the last two read the image features and carry "
                                       "most of what K/V rows cannot learn (toy, 8 concepts in a row, rank-16 training: "
                                       "0.60 held-out over 5 runs vs 0.57 for CNS's K/V rows; bench/RESULTS.md). kv: keys and "
                                       "values only, as CNS and Custom Diffusion train (the text side). qkvoc: also the "
                                       "output channels of the ResNet blocks' convolutions, which carry a subject's fixed "
                                       "layout (which side a colour is on, how parts sit): on the toy a split circle's "
                                       "sides 0.92-1.00 against 0.46-0.54; a conv row is in_channels x 9 weights, so give "
                                       "it a larger budget (toy: 10-100 %); it changes more of the model and, over 8 "
                                       "concepts, forgot more (bench/RESULTS.md, \"Convolution rows\")."),
            ],
            outputs=[Neurons.Output(display_name="neurons"), io.Image.Output(display_name="neuron_map"),
                     io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, model, clip, vae, images, prompt, trigger, budget_pct, calibration_prompts, general_scoring,
                seed, batch_size=4, memory=None, precision="auto", layers=SelectConfig.parts) -> io.NodeOutput:
        images = check_image_batch(images)
        check_trigger_in_prompt(prompt, trigger)
        cfg = SelectConfig(budget_pct=budget_pct, n_calibration=calibration_prompts, general_scoring=general_scoring, seed=seed,
                           batch_size=batch_size, parts=layers)
        with training_backend(model, clip, vae) as b:
            b.trigger_token_id(trigger)
            b.set_compute_dtype(compute_dtype(precision, b.device))
            passes = 1 + min(calibration_prompts, len(default_calibration_prompts()))
            sel = select_concept_neurons(b, b.encode_images(images), prompt, cfg,
                                         prev_rows=memory.prev_rows() if memory else None,
                                         progress=progress(passes, lambda i, t: f"scoring pass {i}/{t}"))
            sizes = row_counts(b, cfg.parts)
        pic = image(neuron_map(sel.rows, sizes, f"concept neurons for '{trigger}'"))
        rep = {k: v for k, v in sel.report.items() if k not in ("calibration_prompts",)}
        if warning := size_warning(model, images):
            rep["warning"] = warning
        return io.NodeOutput(sel, pic, json.dumps(rep, indent=1))
