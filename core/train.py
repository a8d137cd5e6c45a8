"""One continual training step: learn a concept in its selected K/V rows (+ its trigger token).

L = L_diff + lam_prev * sum_{rows seen before} ||W_r - W_r(before)||^2
           + lam_base * sum_{new rows} ||W_r - W_r(pretrained)||^2
           + lam_ewc  * sum F_r (W_r - W_r(before))^2          (F normalised to mean 1 [assumption])
           + lam_dsc  * DSC(x_t) every dc_every steps         (teacher = the model before this concept)
W_r - W_r(before) is exactly the trainable delta, and the teacher is the same network with the delta
switched off, so no second model copy is ever made. Every regulariser is exactly off at lambda = 0.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from .backends.base import Backend
from .dc_scores import dc_logits
from .memory import ContinualMemory
from .row_delta import RowDeltas, kv_in_dim


class NonFiniteLossError(FloatingPointError):
    """Training diverged; the model is left as it was."""


@dataclass
class TrainConfig:
    steps: int = 200
    lr: float = 2e-3
    token_lr: float = 5e-3
    batch_size: int = 4
    train_token: bool = True
    lam_prev: float = 1.0
    lam_base: float = 0.1
    lam_ewc: float = 1.0
    lam_dsc: float = 1.0
    dc_every: int = 5
    dsc_batch: int = 1  # DSC distils on this many x_t of the batch (cost grows with it × candidates)
    dc_max_candidates: int = 5  # c0 + up to 4 sampled earlier concepts per DSC step (Jha et al.: k = 5)
    dc_temperature: float = 1.0
    dc_scale: float | None = None  # None: number of latent elements (sum of squares, Li et al.)
    fisher_draws: int = 2
    fisher_gamma: float = 0.9
    max_grad_norm: float | None = 1.0
    seed: int = 0
    autocast: str = "none"  # "bf16" / "fp16" on CUDA
    gradient_checkpointing: bool = False

    def validate(self):
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1 (got {self.steps})")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive (got {self.lr})")
        if self.dsc_batch < 1 or self.dc_max_candidates < 2:
            raise ValueError("dsc_batch must be >= 1 and dc_max_candidates >= 2")
        if self.dc_every < 1:
            raise ValueError(f"dc_every must be at least 1 (got {self.dc_every})")
        for k in ("lam_prev", "lam_base", "lam_ewc", "lam_dsc"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0 (got {getattr(self, k)})")
        if self.autocast not in ("none", "bf16", "fp16"):
            raise ValueError(f"autocast must be none, bf16 or fp16 (got {self.autocast!r})")


@dataclass
class TrainResult:
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer -> (rows, delta)
    token: torch.Tensor | None
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    config: dict = field(default_factory=dict)
    optimizer_state_bytes: int = 0


def _reg_tensors(backend, deltas: RowDeltas, memory: ContinualMemory | None):
    """Per compact row: seen by an earlier concept? offset W_before - W_pretrained; Fisher rows (normalised)."""
    weights = {l.name: l.weight for l in backend.kv_layers()}
    prev = memory.prev_rows() if memory else {}
    in_prev, offset, fisher = [], [], []
    f_mean = None
    if memory and memory.fisher:
        f_mean = torch.cat([f.float().flatten() for f in memory.fisher.values()]).mean().clamp_min(1e-30)
    for n in deltas.names:
        rows = deltas.rows[n].cpu()
        in_prev.append(torch.isin(rows, prev.get(n, torch.empty(0, dtype=torch.long))))
        cur = weights[n].detach()[rows.to(weights[n].device)].float().cpu()
        pre = memory.pretrained_rows(n, rows, cur) if memory else cur
        offset.append(cur - pre)
        if f_mean is not None and n in memory.fisher:
            fisher.append(memory.fisher[n][rows].float() / f_mean)
        elif f_mean is not None:
            fisher.append(torch.zeros_like(cur))
    dev = deltas.delta.device
    return (torch.cat(in_prev).to(dev), torch.cat(offset).to(dev),
            torch.cat(fisher).to(dev) if fisher else None)


def dsc_loss(backend, deltas: RowDeltas, x0, contexts, gen, cfg: TrainConfig, j: int):
    """KL(P_teacher || P_student) over the DC candidates + eps MSE on candidate j, one shared x_t."""
    B, K = x0.shape[0], contexts.shape[0]
    t = torch.randint(0, backend.num_timesteps, (B,), generator=gen).to(backend.device)
    eps = torch.randn(x0.shape, generator=gen).to(x0)
    xr = x0.repeat_interleave(K, 0)
    er = eps.repeat_interleave(K, 0)
    tr = t.repeat_interleave(K, 0)
    cr = contexts.repeat(B, 1, 1)
    with torch.no_grad(), deltas.disabled():
        e_t = backend.noise_and_predict_eps(xr, tr, er, cr).float()
    e_s = backend.noise_and_predict_eps(xr, tr, er, cr).float()
    n_el = x0[0].numel()
    err_t = (e_t - er.float()).pow(2).flatten(1).mean(1).view(B, K)
    err_s = (e_s - er.float()).pow(2).flatten(1).mean(1).view(B, K)
    lt = dc_logits(err_t, n_el, cfg.dc_temperature, cfg.dc_scale)
    ls = dc_logits(err_s, n_el, cfg.dc_temperature, cfg.dc_scale)
    kl = F.kl_div(ls.log_softmax(1), lt.log_softmax(1), log_target=True, reduction="batchmean")
    mse = (e_s.view(B, K, -1)[:, j] - e_t.view(B, K, -1)[:, j]).pow(2).mean()
    return kl + mse


def train_concept(
    backend: Backend,
    x0: torch.Tensor,
    prompt: str,
    trigger: str | None,
    rows: dict[str, torch.Tensor] | None,
    memory: ContinualMemory | None = None,
    cfg: TrainConfig | None = None,
    callback=None,
    adapter=None,
) -> TrainResult:
    """Train; return the deltas. The backend's weights are never written (bake the result to merge).

    callback(step, total, terms) runs after every step; raising from it cancels with nothing applied.
    adapter: another trainable weight change with RowDeltas' surface (applied(backend), disabled(),
    parameters(), optional penalty() -> {name: loss}) — how baselines such as C-LoRA share this loop;
    the row regularisers (prev/base/ewc) apply to RowDeltas only."""
    cfg = cfg or TrainConfig()
    cfg.validate()
    if len(x0) == 0:
        raise ValueError("images: no concept images to train on")
    if adapter is None and sum(len(r) for r in rows.values()) == 0:
        raise ValueError("neurons: the selection is empty; raise the budget or rho_base")
    gen = torch.Generator().manual_seed(cfg.seed)
    dev = backend.device
    deltas = adapter if adapter is not None else RowDeltas(rows, kv_in_dim(backend), dev)
    rowwise = isinstance(deltas, RowDeltas)
    params = [{"params": list(deltas.parameters()), "lr": cfg.lr}]
    token = None
    if trigger and cfg.train_token:
        token = torch.nn.Parameter(backend.token_row(trigger).float().to(dev))
        params.append({"params": [token], "lr": cfg.token_lr})
    opt = torch.optim.AdamW(params, weight_decay=0.0)
    in_prev, offset, fisher = _reg_tensors(backend, deltas, memory) if rowwise else (None, None, None)
    use_dsc = cfg.lam_dsc > 0 and memory is not None
    if use_dsc:
        with torch.no_grad():
            cand_ctx = backend.encode_text(memory.candidates(), memory.tokens()).detach()
        n_prev = len(memory.concepts)
    if cfg.gradient_checkpointing:
        backend.enable_gradient_checkpointing()
    amp = (torch.autocast(dev.type, dtype=torch.bfloat16 if cfg.autocast == "bf16" else torch.float16)
           if cfg.autocast != "none" else nullcontext())
    fixed_ctx = None if token is not None else backend.encode_text([prompt]).detach()
    history, t0 = [], time.perf_counter()
    with deltas.applied(backend):
        for step in range(cfg.steps):
            idx = torch.randint(0, len(x0), (min(cfg.batch_size, len(x0)),), generator=gen)
            xb = x0[idx].to(dev)
            t = torch.randint(0, backend.num_timesteps, (len(xb),), generator=gen).to(dev)
            eps = torch.randn(xb.shape, generator=gen).to(xb)
            with amp:
                ctx = (backend.encode_text([prompt], {trigger: token}) if token is not None else fixed_ctx)
                pred = backend.noise_and_predict_eps(xb, t, eps, ctx.expand(len(xb), -1, -1))
                terms = {"diff": (pred.float() - eps.float()).pow(2).mean()}
                if rowwise:
                    d = deltas.delta
                    if cfg.lam_prev > 0:
                        terms["prev"] = cfg.lam_prev * d[in_prev].pow(2).sum()
                    if cfg.lam_base > 0:
                        terms["base"] = cfg.lam_base * (d[~in_prev] + offset[~in_prev]).pow(2).sum()
                    if cfg.lam_ewc > 0 and fisher is not None:
                        terms["ewc"] = cfg.lam_ewc * (fisher * d.pow(2)).sum()
                else:
                    terms.update(deltas.penalty() if hasattr(deltas, "penalty") else {})
                if use_dsc and step % cfg.dc_every == 0:
                    # c0 plus a random subset of earlier concepts; eps-MSE on the first sampled earlier one
                    earlier = (1 + torch.randperm(n_prev, generator=gen))[: cfg.dc_max_candidates - 1].tolist()
                    ctx_k = cand_ctx[[0] + earlier]
                    j = 1 if earlier else 0
                    terms["dsc"] = cfg.lam_dsc * dsc_loss(backend, deltas, xb[: cfg.dsc_batch], ctx_k, gen, cfg, j)
                loss = sum(terms.values())
            vals = {k: float(v.detach()) for k, v in terms.items()}
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss became non-finite at step {step + 1}: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in vals.items())
                    + "; nothing was applied (try a lower lr)"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for g in params for p in g["params"]], cfg.max_grad_norm)
            opt.step()
            vals["total"] = float(loss.detach())
            history.append(vals)
            if callback:
                callback(step + 1, cfg.steps, vals)
    state_bytes = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    return TrainResult(
        deltas=deltas.as_dict() if rowwise else {},
        token=token.detach().float().cpu() if token is not None else None,
        history=history,
        seconds=time.perf_counter() - t0,
        config=asdict(cfg),
        optimizer_state_bytes=state_bytes,
    )
