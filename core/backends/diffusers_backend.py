"""Backend over diffusers UNet2DConditionModel + transformers CLIPTextModel (+ AutoencoderKL, or pixel space)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from .base import Backend, ProjectionLayer, UnsupportedModelError, WeightFn, row_delta_hook, rows_view


class _Fn(nn.Module):
    """Adapts a plain weight function to torch parametrization."""

    def __init__(self, fn: WeightFn):
        super().__init__()
        self.fn = fn

    def forward(self, w):
        return self.fn(w)


class _TokenOverride:
    """Forward hook on the token-embedding table: rows of some ids are replaced by given (trainable)
    vectors. A hook, not a wrapper module, so the text encoder's structure and saved keys stay stock."""

    def __init__(self, table: nn.Embedding):
        self.table = table
        self.overrides: dict[int, torch.Tensor] = {}
        table.register_forward_hook(self)

    def __call__(self, module, inputs, emb):
        ids = inputs[0]
        for tid, vec in self.overrides.items():
            emb = torch.where((ids == tid).unsqueeze(-1), vec.to(emb.dtype), emb)
        return emb


class DiffusersBackend(Backend):
    def __init__(self, unet, text_encoder, tokenizer, scheduler, vae=None, device="cpu", dtype=torch.float32):
        self.device, self.dtype = torch.device(device), dtype
        self.unet = _to(unet, self.device, dtype)
        self.text_encoder = _to(text_encoder, self.device, dtype)
        self.vae = _to(vae, self.device, dtype) if vae is not None else None
        self.tokenizer, self.scheduler = tokenizer, scheduler
        self.prediction_type = getattr(scheduler.config, "prediction_type", "epsilon")
        self._abar = scheduler.alphas_cumprod.to(self.device, torch.float32)
        self._layers = self._find_projections()
        self._row_hooks: dict = {}
        self._tokens = _TokenOverride(self.text_encoder.get_input_embeddings())

    @classmethod
    def from_folder(cls, path, device="cpu", dtype=torch.float32):
        """Load a diffusers-format folder (unet/, text_encoder/, tokenizer/, scheduler/, optional vae/), offline."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        p = Path(path)
        for part in ("unet", "text_encoder", "tokenizer", "scheduler"):
            if not (p / part).is_dir():
                raise FileNotFoundError(f"model folder {p}: missing '{part}/' (expected a diffusers-format folder)")
        vae = AutoencoderKL.from_pretrained(p / "vae", torch_dtype=dtype) if (p / "vae").is_dir() else None
        return cls(
            UNet2DConditionModel.from_pretrained(p / "unet", torch_dtype=dtype),
            CLIPTextModel.from_pretrained(p / "text_encoder", torch_dtype=dtype),
            AutoTokenizer.from_pretrained(p / "tokenizer"),
            DDPMScheduler.from_pretrained(p / "scheduler"),
            vae,
            device,
            dtype,
        )

    def _find_projections(self) -> list[ProjectionLayer]:
        layers = []
        for name, mod in self.unet.named_modules():
            if getattr(mod, "is_cross_attention", False) and hasattr(mod, "to_k"):
                for kind, attr in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0")):
                    layers.append(ProjectionLayer(f"{name}.{attr}", kind, mod.get_submodule(attr).weight))
        if not layers:
            raise UnsupportedModelError(
                f"{type(self.unet).__name__} has no cross-attention key/value projections: "
                "continual concept training needs a text-conditioned UNet with cross-attention"
            )
        return layers + [ProjectionLayer(f"{name}.{c}", "c", rows_view(getattr(mod, c).weight))
                         for name, mod in self.unet.named_modules() if type(mod).__name__ == "ResnetBlock2D"
                         for c in ("conv1", "conv2")]

    def layer_module(self, layer: str) -> nn.Module:
        return self.unet.get_submodule(layer)

    def projection_layers(self):
        return [ProjectionLayer(l.name, l.kind, rows_view(self._weight(l.name))) for l in self._layers]

    def _weight(self, layer):
        mod = self.layer_module(layer)
        return mod.parametrizations.weight.original if parametrize.is_parametrized(mod, "weight") else mod.weight

    def set_weight_fn(self, layer, fn):
        mod = self.layer_module(layer)
        if parametrize.is_parametrized(mod, "weight"):
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)
        if fn is not None:
            parametrize.register_parametrization(mod, "weight", _Fn(fn), unsafe=True)

    def set_row_delta(self, layer, rows, get_delta):
        """Output-space row delta: out[..., rows] += x @ delta^T; only the selected rows get gradients."""
        self.clear_row_delta(layer)
        self._row_hooks[layer] = self.layer_module(layer).register_forward_hook(row_delta_hook(rows, get_delta))

    def clear_row_delta(self, layer):
        h = self._row_hooks.pop(layer, None)
        if h is not None:
            h.remove()

    @torch.no_grad()
    def bake_rows(self, layer, rows, delta):
        w = rows_view(self._weight(layer))
        w.index_add_(0, rows.to(w.device), delta.to(w.device, w.dtype))

    def networks(self):
        return [self.unet, self.text_encoder]

    def unet_param_count(self):
        return sum(p.numel() for p in self.unet.parameters())

    def trigger_token_id(self, trigger):
        ids = self.tokenizer(trigger, add_special_tokens=False).input_ids
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if len(ids) != 1 or ids[0] == unk:
            raise ValueError(
                f"trigger '{trigger}' is {len(ids)} tokens for this tokenizer"
                + (" (unknown word)" if unk in ids else "")
                + ": pick a rare word that is exactly one known token"
            )
        return ids[0]

    def token_row(self, trigger):
        return self._tokens.table.weight[self.trigger_token_id(trigger)].detach().clone()

    @torch.no_grad()
    def set_token_row(self, trigger, value):
        self._tokens.table.weight[self.trigger_token_id(trigger)] = value.to(self._tokens.table.weight)

    def encode_text(self, prompts, tokens=None):
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids.to(self.device)
        self._tokens.overrides = {self.trigger_token_id(k): v for k, v in (tokens or {}).items()}
        try:
            return self.text_encoder(ids).last_hidden_state
        finally:
            self._tokens.overrides = {}

    def encode_images(self, images):
        px = images.to(self.device, self.dtype).permute(0, 3, 1, 2) * 2 - 1
        if self.vae is None:
            return px
        with torch.no_grad():
            lat = self.vae.encode(px).latent_dist.mean
        return lat * self.vae.config.scaling_factor

    def decode(self, x0):
        with torch.no_grad():
            px = x0 if self.vae is None else self.vae.decode(x0 / self.vae.config.scaling_factor).sample
        return ((px.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)

    @property
    def alphas_cumprod(self):
        return self._abar

    def predict_eps(self, x_t, t, context):
        out = self.unet(x_t.to(self.dtype), t.to(self.device), encoder_hidden_states=context.to(self.dtype)).sample
        if self.prediction_type == "v_prediction":
            abar = self._abar[t].view(-1, 1, 1, 1).to(out.dtype)
            out = abar.sqrt() * out + (1 - abar).sqrt() * x_t
        return out

    def enable_gradient_checkpointing(self):
        self.unet.enable_gradient_checkpointing()

    def set_compute_dtype(self, dtype):
        """This backend owns its modules: it casts them (in place: hooks and trained tokens stay attached)."""
        if dtype != self.dtype:
            for m in (self.unet, self.text_encoder, self.vae):
                if m is not None:
                    _to(m, self.device, dtype)
            self.dtype = dtype


def _to(module, device, dtype):
    """Frozen, eval-mode, on device; cast only when needed (diffusers warns on a no-op dtype cast)."""
    p = next(module.parameters())
    module = module.to(device) if p.dtype == dtype else module.to(device, dtype)
    return module.requires_grad_(False).eval()
