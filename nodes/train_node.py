"""Continual Train Step (DC-regularized): learn one concept; returns patched clones, never edits the input."""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..core.checkpointing import CHECKPOINTING
from ..core.carried import require_carried, summed_changes, without
from ..core.continual import train_into_memory
from ..core.images import check_image_batch, training_views
from ..core.memory import ContinualMemory
from ..core.precision import PRECISIONS
from ..core.train import TrainConfig
from ..core.validate import check_trigger_in_prompt, concepts_to_replace, prior_prompt_lines
from ..report.pictures import loss_curve
from .common import (CATEGORY, Memory, Neurons, image, patched_clip, patched_model, progress, reading_backend,
                     size_warning, training_backend)


class ContinualTrainStep(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        f = io.Float.Input
        return io.Schema(
            node_id="ContinualConcepts_ContinualTrainStep", display_name="Continual Train Step (DC-regularized)",
            category=CATEGORY,
            description="Train only the selected cross-attention rows (a low-rank change per layer, and the trigger "
                        "word's embedding) with CNS, EWC-DC and DSC regularisers. Returns a MODEL and a CLIP that carry "
                        "the concept as patches; the inputs are left as they were.",
            inputs=[
                io.Model.Input("model", tooltip="Model before this concept (may already carry earlier concepts)."),
                io.Clip.Input("clip", tooltip="Text encoder before this concept."),
                io.Vae.Input("vae", tooltip="VAE to encode the concept images."),
                io.Image.Input("images", tooltip="The concept images (one batch)."),
                Neurons.Input("neurons", tooltip="Output of Select Concept Neurons."),
                io.String.Input("prompt", default="a photo of sks", tooltip="Training prompt with the trigger word."),
                io.String.Input("trigger", default="sks", tooltip="The concept's trigger word (one token)."),
                io.String.Input("name", default="my-concept", tooltip="Name of the concept in the memory."),
                io.Int.Input("steps", default=TrainConfig.steps, min=1, max=100000,
                             tooltip="Optimisation steps (>= 1); 300 was measured on the toy (600 tied and forgot more)."),
                f("lr", default=TrainConfig.lr, min=1e-6, max=1.0, step=1e-4,
                  tooltip="Learning rate of the row deltas, relative: a fraction of each trained layer's weight RMS per "
                          f"step, so one value fits SD1.5 and SDXL alike ({TrainConfig.lr} for rank {TrainConfig.rank}; "
                          "0.002 was measured for rank 0; the token's relative lr is fixed at "
                          f"{TrainConfig.token_lr})."),
                f("lam_prev", default=TrainConfig.lam_prev, min=0, max=1e6, step=0.01,
                  tooltip="CNS: keep rows of earlier concepts (0 = off)."),
                f("lam_base", default=TrainConfig.lam_base, min=0, max=1e6, step=0.01,
                  tooltip="CNS: keep new rows near pretrained (0 = off)."),
                f("lam_ewc", default=TrainConfig.lam_ewc, min=0, max=1e6, step=0.01,
                  tooltip="EWC with the DC-score Fisher (0 = off, the default: it showed no measurable effect on "
                          "forgetting in our benchmark; 1.0 turns it on). The Fisher is recorded only while it is on "
                          "(SD1.5: +176 MB in the memory, SDXL: +2.2 GB), so it protects concepts learned with it on."),
                f("lam_dsc", default=TrainConfig.lam_dsc, min=0, max=1e6, step=0.01,
                  tooltip="DSC: distil the DC scores and the generic prompt's prediction from the model before (0 = "
                          "off). It holds an earlier close relative and the unconditional branch guidance needs."),
                io.Int.Input("dc_every", default=TrainConfig.dc_every, min=1, max=1000,
                             tooltip="Run DSC every k steps (1: every step; its term on the generic prompt keeps the "
                                     "unconditional branch guidance needs, so rows do not break other prompts)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Seed: same seed, same result on CPU."),
                io.Boolean.Input("train_token", default=True,
                                 tooltip="Also learn the trigger word's embedding (the CLIP output carries it)."),
                io.Int.Input("batch_size", default=TrainConfig.batch_size, min=1, max=64,
                             tooltip="Images per step: 8 learned more than 4 on the toy (bench/RESULTS.md, "
                                     "\"Batch 8\"). Memory is micro_batch's and gradient_checkpointing's to "
                                     "fit, not this: a smaller batch learns less."),
                io.Combo.Input("gradient_checkpointing", options=list(CHECKPOINTING), default="auto",
                               tooltip="Recompute UNet blocks in the backward pass: less memory, slower (their forward "
                                       "runs twice). auto: one forward measures what a sample keeps, and it goes on "
                                       "only when a step would not fit the free memory even in micro-batches with DSC "
                                       "one candidate at a time (then a step keeps 2 samples' activations; SD1.5 at "
                                       "512 px keeps ~0.7 GB a sample without it: bench/RESULTS.md)."),
                Memory.Input("memory", optional=True, tooltip="Continual memory from earlier concepts (none: first concept)."),
                io.String.Input("generic_prompt", default="a photo", tooltip="DC candidate standing for what the model drew before."),
                io.Boolean.Input("replace", default=False,
                                 tooltip="Learn again a concept the memory already has (same name or trigger): its "
                                         "change is taken out of the model and the memory first. Off: that is an error."),
                io.Boolean.Input("flip", default=False, optional=True,
                                 tooltip="Random horizontal flip: train on the images and their mirror images too. "
                                         "Leave off for subjects whose sides differ (text, logos): it teaches both "
                                         "orientations."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto", optional=True,
                               tooltip="Arithmetic of the frozen model while training (the learned change is always "
                                       "kept in fp32). auto: bf16 on a GPU that has it, else fp32. fp16 trains with "
                                       "loss scaling (without it, small gradients vanish)."),
                io.Int.Input("rank", default=TrainConfig.rank, min=0, max=1024, optional=True,
                             tooltip="Each layer's change of its selected rows is a rank-r product (fewer trained "
                                     "numbers; the memory keeps the rows' change as before). With Q/K/V/output rows, "
                                     "rank 16 held by DSC learned most on the toy (bench/RESULTS.md). 0: every number "
                                     "of the rows trains (then lr 0.002)."),
                f("token_first", default=TrainConfig.token_first, min=0, max=0.95, step=0.05, optional=True,
                  tooltip="This fraction of the steps trains the trigger word alone, then rows and word together "
                          "(pivotal tuning: the concept finds its word before the rows move; 0 = both from the "
                          "start; no effect with train_token off). Measured on the toy: bench/RESULTS.md, "
                          "'Token first'."),
                f("lam_prior", default=TrainConfig.lam_prior, min=0, max=1e6, step=0.01, optional=True,
                  tooltip="Prior preservation: what the model predicts for the prior prompts stays what it predicted "
                          "before this concept (0 = off). Lets the rows learn without the model's other prompts "
                          "drifting; measured on the toy: bench/RESULTS.md, 'Prior preservation'."),
                io.String.Input("prior_prompts", default="", multiline=True, optional=True,
                                tooltip="The prompts lam_prior keeps, one per line, without the trigger (e.g. the "
                                        "subject's class: 'a photo of a dog'). Empty: 100 shipped generic prompts."),
                io.Int.Input("micro_batch", default=TrainConfig.micro_batch, min=0, max=64, optional=True,
                             tooltip="Images per forward/backward pass; their gradients add up to the whole batch's, "
                                     "so a step is the same in less memory. 0 = auto: as many as the free memory "
                                     "holds (measured), and DSC one candidate at a time if need be, before gradient "
                                     "checkpointing (bench/RESULTS.md, 'Batch 8 in any memory')."),
            ],
            outputs=[io.Model.Output(display_name="model"), io.Clip.Output(display_name="clip"),
                     Memory.Output(display_name="memory"), io.Image.Output(display_name="loss_curve")],
        )

    @classmethod
    def execute(cls, model, clip, vae, images, neurons, prompt, trigger, name, steps, lr, lam_prev, lam_base, lam_ewc,
                lam_dsc, dc_every, seed, train_token=True, batch_size=TrainConfig.batch_size,
                gradient_checkpointing="auto", memory=None, generic_prompt="a photo", replace=False,
                flip=TrainConfig.flip, precision="auto", rank=TrainConfig.rank,
                token_first=TrainConfig.token_first, lam_prior=TrainConfig.lam_prior, prior_prompts="",
                micro_batch=TrainConfig.micro_batch) -> io.NodeOutput:
        images = check_image_batch(images)
        check_trigger_in_prompt(prompt, trigger)
        prior = prior_prompt_lines(prior_prompts, trigger)
        if warning := size_warning(model, images):
            logging.warning("Continual Train Step: %s", warning)
        old = concepts_to_replace(memory, name, trigger, replace)
        cfg = TrainConfig(steps=steps, lr=lr, lam_prev=lam_prev, lam_base=lam_base, lam_ewc=lam_ewc, lam_dsc=lam_dsc,
                          dc_every=dc_every, train_token=train_token, seed=seed,
                          batch_size=batch_size, gradient_checkpointing=gradient_checkpointing, precision=precision,
                          flip=flip, rank=rank, token_first=token_first, lam_prior=lam_prior, micro_batch=micro_batch)
        cfg.validate()
        if old:  # the memory must explain the model as it came in, before anything is taken out
            with reading_backend(model, clip) as b:
                require_carried(memory, b)
            with torch.inference_mode(False):
                model = patched_model(model, summed_changes(old, -1.0))
        with training_backend(model, clip, vae) as b:
            b.trigger_token_id(trigger)
            if memory is not None:
                mem = without(memory, old)
                require_carried(mem, b)
            else:
                mem = ContinualMemory.for_model(b, generic_prompt)
            x0 = b.encode_images(training_views(images, None, cfg.flip)[0])
            cb = progress(steps, lambda s, t, terms: f"step {s}/{t} loss {terms.get('total', 0):.4f}")
            res, _ = train_into_memory(b, mem, x0, name, trigger, prompt, neurons.rows, cfg, callback=cb,
                                       first_image=images[0], prior_prompts=prior)
            logging.info("Continual Train Step: memory plan (micro-batch, gradient checkpointing) %s", res.checkpointing)
            out_clip = patched_clip(clip, b, trigger, res.token)
        with torch.inference_mode(False):
            out_model = patched_model(model, res.deltas)
        return io.NodeOutput(out_model, out_clip, mem, image(loss_curve(res.history, f"learning '{name}'")))
