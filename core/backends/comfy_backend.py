"""Backend over ComfyUI's MODEL (ModelPatcher), CLIP and VAE — the only core module that imports comfy.

It never writes the shared weights: row deltas are forward hooks on the training clone, and results leave
as ModelPatcher / CLIP patches (see nodes/). Construct and use it inside torch.inference_mode(False) after
`prepare_for_training` has replaced ComfyUI's inference-mode tensors by ordinary copies (same values)."""
from __future__ import annotations

from contextlib import ExitStack, contextmanager, nullcontext

import torch

from .base import Backend, ProjectionLayer, UnsupportedModelError, row_delta_hook, rows_view

def model_type_name(model) -> str:
    cfg = getattr(model.model, "model_config", None)
    return type(cfg).__name__ if cfg is not None else type(model.model).__name__


def text_encoders(clip) -> list[tuple[str, torch.nn.Module]]:
    """The CLIP text encoders inside ComfyUI's CLIP, in the order their outputs are concatenated:
    SD1.x clip_l, SD2.x clip_h, SDXL clip_l + clip_g, SDXL refiner clip_g. Tokenizer key = name[5:]."""
    from comfy.sd1_clip import SDClipModel

    encs = [(n, m) for n, m in clip.cond_stage_model.named_children() if isinstance(m, SDClipModel)]
    if not encs or any(not n.startswith("clip_") for n, _ in encs):
        raise UnsupportedModelError(f"clip: {type(clip.cond_stage_model).__name__} is not a CLIP text encoder of the "
                                    "SD1.x / SD2.x / SDXL families")
    return encs


def token_parts(clip) -> list[tuple[str, int]]:
    """(encoder name, embedding width) in the order a trigger's token vector concatenates them."""
    return [(n, m.transformer.get_input_embeddings().weight.shape[1]) for n, m in text_encoders(clip)]


@contextmanager
def differentiable_clip(text_model, recompute: bool = False):
    """ComfyUI's CLIPLayer adds residuals in place (x += attn(ln1(x))) after its layer norm saved x, so
    autograd refuses to differentiate it. Cloning each layer norm's input (pre-hooks, removed on exit)
    leaves the values unchanged and lets a trigger token's gradient through.

    recompute: also run each CLIPLayer under activation checkpointing (its input cloned, as the layer writes into
    it). ComfyUI computes CLIP in fp32 from fp16 weights, and autograd kept every weight's fp32 cast for the
    backward pass, per caption encoded (SDXL: 3.1 GiB); now one layer's at a time, for one more CLIP forward. The
    hooks must then outlive the backward pass (the recomputation runs them): hold the block open until then."""
    from torch.utils.checkpoint import checkpoint
    from comfy.clip_model import CLIPLayer

    layers = [m for m in text_model.modules() if isinstance(m, CLIPLayer)]
    hooks = [ln.register_forward_pre_hook(lambda _m, args: (args[0].clone(), *args[1:]))
             for layer in layers for ln in (layer.layer_norm1, layer.layer_norm2)]
    wrapped = [layer for layer in layers if recompute and "forward" not in vars(layer)]
    for layer in wrapped:
        layer.forward = lambda x, *a, _f=layer.forward, **k: checkpoint(lambda y, *b, **c: _f(y.clone(), *b, **c), x, *a,
                                                                      use_reentrant=False, **k)
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for layer in wrapped:
            del layer.forward


def override_tokens(tokens: dict, over: dict[str, dict[int, torch.Tensor]]) -> dict:
    """ComfyUI token lists (per tokenizer key: 'l', 'g', 'h') with every token id in over[key] replaced by its
    embedding vector (ComfyUI feeds tensors in a token list straight to the transformer, as for textual
    inversion)."""
    def swap(t, o):
        return (o[int(t[0])], *t[1:]) if not torch.is_tensor(t[0]) and int(t[0]) in o else t

    return {k: [[swap(t, over[k]) for t in seq] for seq in v] if over.get(k) else v for k, v in tokens.items()}


class ComfyBackend(Backend):
    """SD1.x / SD2.x / SDXL UNets. Models with ADM conditioning (SDXL) also need CLIP's pooled vector: it rides
    in the context tensor as extra trailing positions (core treats contexts as opaque, so batching, indexing and
    caching keep it with its prompt), and predict_eps turns it into ComfyUI's `y` via the model's encode_adm."""

    def __init__(self, model, clip=None, vae=None):
        import comfy.model_management as mm

        name = model_type_name(model)
        dm = getattr(model.model, "diffusion_model", None)
        self.mp, self.clip, self.vae, self.dm = model, clip, vae, dm
        kinds = {"attn2.to_q": "q", "attn2.to_k": "k", "attn2.to_v": "v", "attn2.to_out.0": "o"}
        modules = list(dm.named_modules()) if dm else []
        self._layers = [ProjectionLayer(f"diffusion_model.{n}", kinds[n[n.rindex("attn2"):]], m.weight)
                        for n, m in modules if n.endswith(tuple(kinds))]
        # a ResBlock's two 3x3 convolutions (diffusers' conv1 / conv2), after the projections as in DiffusersBackend
        self._layers += [ProjectionLayer(f"diffusion_model.{n}.{c}", "c", rows_view(m.get_submodule(c).weight))
                         for n, m in modules if type(m).__name__ == "ResBlock" for c in ("in_layers.2", "out_layers.3")]
        if not any(l.kind == "k" for l in self._layers):
            raise UnsupportedModelError(
                f"{name} ({type(dm).__name__}) has no cross-attention key/value projections: continual concept "
                "training needs a text-conditioned UNet (SD1.x / SD2.x / SDXL); DiT families (SD3, Flux, ...) are "
                "not supported")
        if getattr(model.model, "concat_keys", ()):
            raise UnsupportedModelError(f"{name}: this model needs extra image inputs at every step "
                                        f"({', '.join(model.model.concat_keys)}: an inpainting or edit model); "
                                        "train on its base model instead")
        self._adm = getattr(dm, "num_classes", None) is not None
        mm.load_models_gpu([model], force_full_load=True)
        self.device = model.load_device
        self.dtype = getattr(model.model, "manual_cast_dtype", None) or model.model.get_dtype()  # what it computes in
        sig = model.model.model_sampling.sigmas.float()
        self._abar = (1.0 / (1.0 + sig**2)).to(self.device)
        self._hooks: dict[str, object] = {}
        self._patched_forward: list[torch.nn.Module] = []
        self._pooled_width: int | None = None
        self._size_cache: dict[tuple[int, int], torch.Tensor] = {}
        self._frozen: list[torch.nn.Parameter] = []
        self._training_clip: ExitStack | None = None  # differentiable_clip(recompute), prepare_for_training..close

    # ------------------------------------------------------------------ weights
    def prepare_for_training(self) -> int:
        """Swap inference tensors (ComfyUI loads under inference_mode) for ordinary copies, and freeze every host
        parameter until close(): a model loaded outside inference mode has trainable parameters, which would
        all receive .grad (memory and time spent on weights we never change). Returns the count swapped."""
        import comfy.utils

        n = 0
        targets = [self.mp.model] + ([self.clip.cond_stage_model] if self.clip is not None else [])
        for root in targets:
            # names only: a list of the parameters themselves would keep every original alive until the loop
            # ends, two copies of the UNet at once (SD1.5 full size: +2.9 GiB at the start of Select)
            for name in [k for k, p in root.named_parameters() if p.is_inference()]:
                comfy.utils.set_attr_param(root, name, comfy.utils.get_attr(root, name).clone())
                n += 1
            for p in root.parameters():
                if p.requires_grad:
                    self._frozen.append(p)
                    p.requires_grad_(False)
        if self.clip is not None and self._training_clip is None:
            self._training_clip = ExitStack()
            self._training_clip.enter_context(differentiable_clip(self.clip.cond_stage_model, recompute=True))
        return n

    def set_compute_dtype(self, dtype):
        """ComfyUI's own switch, as its TrainLoraNode uses it: the training clone casts each weight to `dtype` as
        it is used (an SD1.5 UNet stored fp16 on CUDA then computes in bf16 or fp32); the input MODEL keeps its
        setting, since the patch lives on the clone."""
        import comfy.model_management as mm

        if dtype != self.dtype:
            self.mp.set_model_compute_dtype(dtype)
            mm.load_models_gpu([self.mp], force_full_load=True)
            self.dtype = dtype

    def layer_module(self, layer):
        return self.mp.model.get_submodule(layer)

    def projection_layers(self):
        return [ProjectionLayer(l.name, l.kind, rows_view(self.layer_module(l.name).weight)) for l in self._layers]

    def set_weight_fn(self, layer, fn):
        self.layer_module(layer).weight_function = [fn] if fn is not None else []

    def set_row_delta(self, layer, rows, get_delta):
        self.clear_row_delta(layer)
        self._hooks[layer] = self.layer_module(layer).register_forward_hook(row_delta_hook(rows, get_delta))

    def clear_row_delta(self, layer):
        h = self._hooks.pop(layer, None)
        if h is not None:
            h.remove()

    def enable_gradient_checkpointing(self):
        """Recompute each top-level UNet block in the backward pass (as ComfyUI's TrainLoraNode does): less
        activation memory for more time. The blocks are shared with the input MODEL, so close() undoes it."""
        from torch.utils.checkpoint import checkpoint

        blocks = [*self.dm.input_blocks, self.dm.middle_block, *self.dm.output_blocks]
        for block in blocks:
            if "forward" not in vars(block):
                block.forward = lambda *a, _f=block.forward, **k: checkpoint(_f, *a, use_reentrant=False, **k)
                self._patched_forward.append(block)

    def networks(self):
        return [self.mp.model] + ([self.clip.cond_stage_model] if self.clip is not None else [])

    def free_memory(self):
        import comfy.model_management as mm

        return mm.get_free_memory(self.device)

    def close(self):
        """Leave the shared modules as they were: no row-delta hooks, no checkpointing wrappers, the parameters
        prepare_for_training froze trainable again."""
        for layer in list(self._hooks):
            self.clear_row_delta(layer)
        for block in self._patched_forward:
            del block.forward
        self._patched_forward.clear()
        for p in self._frozen:
            p.requires_grad_(True)
        self._frozen.clear()
        if self._training_clip is not None:
            self._training_clip.close()
            self._training_clip = None

    def bake_rows(self, layer, rows, delta):
        raise NotImplementedError("ComfyUI models are shared between nodes: return patches, never bake")

    def set_token_row(self, trigger, value):
        raise NotImplementedError("ComfyUI CLIPs are shared between nodes: return a patched clone instead")

    def unet_param_count(self):
        return sum(p.numel() for p in self.dm.parameters())

    # ------------------------------------------------------------------ text
    def _need_clip(self):
        if self.clip is None:
            raise ValueError("clip: this operation needs the CLIP input")

    def token_parts(self) -> list[tuple[str, int]]:
        self._need_clip()
        return token_parts(self.clip)

    def split_token(self, token: torch.Tensor) -> dict[str, torch.Tensor]:
        """A trigger's token vector -> {encoder name: its row} (SDXL: 768 for clip_l, 1280 for clip_g)."""
        parts = self.token_parts()
        if token.shape[-1] != sum(w for _, w in parts):
            raise ValueError(f"token: width {token.shape[-1]} does not fit this CLIP ({parts})")
        return dict(zip([n for n, _ in parts], token.split([w for _, w in parts], -1)))

    def trigger_token_id(self, trigger):
        self._need_clip()
        def ids(text):
            return [int(t[0]) for t in next(iter(self.clip.tokenize(text).values()))[0]]

        start, end = ids("")[:2]  # the empty prompt is [start, end, padding...]
        inner = []
        for i in ids(trigger)[1:]:
            if i == end:
                break
            inner.append(i)
        if len(trigger.split()) != 1 or len(inner) != 1:
            raise ValueError(f"trigger '{trigger}' is {len(inner)} tokens for this CLIP: pick a rare word that is "
                             "exactly one token (e.g. 'sks')")
        return inner[0]

    def token_row(self, trigger):
        tid = self.trigger_token_id(trigger)
        self.clip.load_model()  # the CLIP's own patches (a learned token) are on its weights only once loaded
        return torch.cat([m.transformer.get_input_embeddings().weight[tid].detach().float().cpu()
                          for _, m in text_encoders(self.clip)])

    def encode_text(self, prompts, tokens=None):
        self._need_clip()
        over: dict[str, dict[int, torch.Tensor]] = {}
        for trigger, vec in (tokens or {}).items():
            tid = self.trigger_token_id(trigger)
            for name, part in self.split_token(vec).items():
                over.setdefault(name[len("clip_"):], {})[tid] = part
        grad = bool(over) and torch.is_grad_enabled()
        outs = []
        for p in prompts:
            toks = override_tokens(self.clip.tokenize(p), over)
            per_call = grad and self._training_clip is None
            with differentiable_clip(self.clip.cond_stage_model) if per_call else nullcontext():
                cond, pooled = self.clip.encode_from_tokens(toks, return_pooled=True)
            outs.append(self._pack(cond.to(self.device), pooled))
        if len({o.shape[1] for o in outs}) > 1:
            raise ValueError("prompts: all prompts must fit the same number of 77-token chunks")
        return torch.cat(outs)

    def _pack(self, cond, pooled):
        """ADM models: append the pooled vector as ceil(P / D) zero-padded context positions."""
        if not self._adm:
            return cond
        if pooled is None:
            raise UnsupportedModelError("clip: this model needs a pooled text vector and the CLIP gave none")
        B, D = cond.shape[0], cond.shape[-1]
        self._pooled_width = P = pooled.shape[-1]
        n = -(-P // D)
        packed = torch.nn.functional.pad(pooled.to(cond), (0, n * D - P)).view(B, n, D)
        return torch.cat([cond, packed], 1)

    def _n_packed(self, context) -> int:
        if self._pooled_width is None:
            raise ValueError("context: this model's contexts must come from encode_text (they carry the pooled vector)")
        return -(-self._pooled_width // context.shape[-1])

    def text_context(self, context):
        return context[:, : context.shape[1] - self._n_packed(context)] if self._adm else context

    def _size_embedding(self, h: int, w: int) -> torch.Tensor:
        """The part of ComfyUI's ADM vector after the pooled text (SDXL: size/crop embeddings; refiner: + aesthetic
        score) for ComfyUI's default size conditioning (latent size x 8, no crop). It depends only on the size, and
        encode_adm builds it on the CPU, so it is made once per size rather than at every step (a device sync)."""
        cache = self._size_cache
        if (h, w) not in cache:
            y = self.mp.model.encode_adm(pooled_output=torch.zeros(1, self._pooled_width), width=w * 8, height=h * 8,
                                         device=self.device)
            cache[h, w] = y[:, self._pooled_width:].to(self.device)
        return cache[h, w]

    # ------------------------------------------------------------------ images and noise
    def encode_images(self, images):
        if self.vae is None:
            raise ValueError("vae: this operation needs the VAE input")
        with torch.no_grad():
            lat = self.vae.encode(images[..., :3])
        return self.mp.model.process_latent_in(lat).to(self.device, self.dtype)

    def decode(self, x0):
        with torch.no_grad():
            return self.vae.decode(self.mp.model.process_latent_out(x0.to(self.device)))

    @property
    def alphas_cumprod(self):
        return self._abar

    def predict_eps(self, x_t, t, context):
        abar = self._abar[t.to(self.device)].view(-1, 1, 1, 1)
        sigma = ((1 - abar) / abar).sqrt()
        x = x_t / abar.sqrt()
        extra = {}
        if self._adm:
            text = self.text_context(context)
            pooled = context[:, text.shape[1]:].flatten(1)[:, : self._pooled_width]
            size = self._size_embedding(*x.shape[-2:]).to(pooled)
            extra["y"] = torch.cat([pooled, size.expand(len(pooled), -1)], 1)
            context = text
        x0 = self.mp.model.apply_model(x, sigma.flatten(), c_crossattn=context, **extra)
        return (x - x0) / sigma
