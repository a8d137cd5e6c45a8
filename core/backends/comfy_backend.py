"""Backend over ComfyUI's MODEL (ModelPatcher), CLIP and VAE — the only core module that imports comfy.

It never writes the shared weights: row deltas are forward hooks on the training clone, and results leave
as ModelPatcher / CLIP patches (see nodes/). Construct and use it inside torch.inference_mode(False) after
`prepare_for_training` has replaced ComfyUI's inference-mode tensors by ordinary copies (same values)."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from .base import Backend, KVLayer, UnsupportedModelError, row_delta_hook

SUPPORTED = ("SD15", "SD20", "SD21UnclipL", "SD21UnclipH", "SD_X4Upscaler")


def model_type_name(model) -> str:
    cfg = getattr(model.model, "model_config", None)
    return type(cfg).__name__ if cfg is not None else type(model.model).__name__


@contextmanager
def differentiable_clip(text_model):
    """ComfyUI's CLIPLayer adds residuals in place (x += attn(ln1(x))) after its layer norm saved x, so
    autograd refuses to differentiate it. Cloning each layer norm's input (pre-hooks, removed on exit)
    leaves the values unchanged and lets a trigger token's gradient through."""
    from comfy.clip_model import CLIPLayer

    hooks = [ln.register_forward_pre_hook(lambda _m, args: (args[0].clone(), *args[1:]))
             for layer in text_model.modules() if isinstance(layer, CLIPLayer)
             for ln in (layer.layer_norm1, layer.layer_norm2)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def override_tokens(tokens: dict, over: dict[int, torch.Tensor]) -> dict:
    """ComfyUI token lists with every token id in `over` replaced by its embedding vector (ComfyUI feeds
    tensors in a token list straight to the transformer, as it does for textual-inversion embeddings)."""
    if not over:
        return tokens
    return {k: [[(over[int(t[0])], *t[1:]) if not torch.is_tensor(t[0]) and int(t[0]) in over else t for t in seq]
                for seq in v] for k, v in tokens.items()}


class ComfyBackend(Backend):
    def __init__(self, model, clip=None, vae=None):
        import comfy.model_management as mm

        name = model_type_name(model)
        dm = getattr(model.model, "diffusion_model", None)
        if getattr(dm, "num_classes", None) is not None:  # SDXL-style UNets need pooled/ADM conditioning
            raise UnsupportedModelError(
                f"{name}: UNets with pooled/ADM conditioning (SDXL family) are not supported yet; "
                "SD1.x and SD2.x are")
        self.mp, self.clip, self.vae, self.dm = model, clip, vae, dm
        self._layers = [KVLayer(f"diffusion_model.{n}", n[-1], m.weight) for n, m in (dm.named_modules() if dm else [])
                        if n.endswith(("attn2.to_k", "attn2.to_v"))]
        if not self._layers:
            raise UnsupportedModelError(
                f"{name} ({type(dm).__name__}) has no cross-attention key/value projections: continual concept "
                "training needs a text-conditioned UNet (SD1.x / SD2.x); DiT families (SD3, Flux, ...) are not supported")
        mm.load_models_gpu([model], force_full_load=True)
        self.device = model.load_device
        self.dtype = model.model.get_dtype()
        sig = model.model.model_sampling.sigmas.float()
        self._abar = (1.0 / (1.0 + sig**2)).to(self.device)
        self._hooks: dict[str, object] = {}

    # ------------------------------------------------------------------ weights
    def prepare_for_training(self) -> int:
        """Swap inference tensors (ComfyUI loads under inference_mode) for ordinary copies; returns the count."""
        import comfy.utils

        n = 0
        targets = [self.mp.model] + ([self.clip.cond_stage_model] if self.clip is not None else [])
        for root in targets:
            for name, p in list(root.named_parameters()):
                if p.is_inference():
                    comfy.utils.set_attr_param(root, name, p.clone())
                    n += 1
        return n

    def _module(self, layer):
        return self.mp.model.get_submodule(layer)

    def kv_layers(self):
        return [KVLayer(l.name, l.kind, self._module(l.name).weight) for l in self._layers]

    def set_weight_fn(self, layer, fn):
        self._module(layer).weight_function = [fn] if fn is not None else []

    def set_row_delta(self, layer, rows, get_delta):
        self.clear_row_delta(layer)
        self._hooks[layer] = self._module(layer).register_forward_hook(row_delta_hook(rows, get_delta))

    def clear_row_delta(self, layer):
        h = self._hooks.pop(layer, None)
        if h is not None:
            h.remove()

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

    def _encoder(self):
        cm = self.clip.cond_stage_model
        key = getattr(cm, "clip", None)
        if key is None:
            raise UnsupportedModelError(f"{type(cm).__name__}: only single-text-encoder CLIPs (SD1.x, SD2.x) are supported")
        return key, getattr(cm, key)

    def token_embedding_key(self) -> str:
        key, _ = self._encoder()
        return f"{key}.transformer.text_model.embeddings.token_embedding.weight"

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
        _, enc = self._encoder()
        return enc.transformer.get_input_embeddings().weight[self.trigger_token_id(trigger)].detach().float().clone()

    def encode_text(self, prompts, tokens=None):
        self._need_clip()
        over = {self.trigger_token_id(k): v for k, v in (tokens or {}).items()}
        outs = []
        for p in prompts:
            toks = override_tokens(self.clip.tokenize(p), over)
            with differentiable_clip(self.clip.cond_stage_model) if over and torch.is_grad_enabled() else nullcontext():
                outs.append(self.clip.encode_from_tokens(toks).to(self.device))
        if len({o.shape[1] for o in outs}) > 1:
            raise ValueError("prompts: all prompts must fit the same number of 77-token chunks")
        return torch.cat(outs)

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
        x0 = self.mp.model.apply_model(x, sigma.flatten(), c_crossattn=context)
        return (x - x0) / sigma
