"""One continual training step: learn a concept in its selected cross-attention rows (+ its trigger token).

Every row quantity is in units of its layer's weight RMS (u = delta / rms, see RowDeltas), and every penalty is
a *mean* over the selected row elements, so it sits on the scale of the (mean) diffusion loss and the same
lambda means the same thing on the toy model, SD1.5 and SDXL:
L = L_diff
  + lam_prev * mean( [row seen by an earlier concept] * u^2 )        stay near the value before this concept
  + lam_base * mean( (u + (W_before - W_pretrained) / rms)^2 )       stay near the pretrained value (every row)
  + lam_ewc  * mean( F * u^2 )                                       F: DC Fisher, normalised to mean 1
  + lam_dsc  * DSC(x_t) every dc_every steps                         teacher = the model before this concept
  + lam_prior * mean( (eps(x_t, c_generic) - eps_teacher(x_t, c_generic))^2 )   prior preservation, same teacher
u is exactly the trainable delta, and the teacher is the same network with the delta switched off, so no second
model copy is ever made. Every regulariser is exactly off at lambda = 0. Learning rates are relative too: Adam
moves each element by about lr per step, i.e. by lr x rms in the weight's units.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from .backends.base import Backend
from .checkpointing import check_checkpointing, decide
from .dc_scores import DEFAULT_TEMPERATURE, dc_logits
from .denoise import denoise_error, draw_t_eps
from .memory import ContinualMemory, element_mean
from .precision import check_precision, compute_dtype, grad_scaler
from .row_delta import RowDeltas, weight_rms


class NonFiniteLossError(FloatingPointError):
    """Training diverged; the model is left as it was."""


@dataclass
class TrainConfig:
    steps: int = 300  # measured on the toy (bench/RESULTS.md: 600 tied and forgot more); with a relative lr and Adam
    # the rows move by about lr per step whatever the batch, so the step count, not the batch, sets how far they go
    lr: float = 0.0007  # relative: a fraction of each trained layer's weight RMS per Adam step (bench/RESULTS.md);
    # 0.0007 with rank 16, 0.002 measured for full rows (rank 0)
    token_lr: float = 0.1  # relative to the trigger embedding's RMS
    batch_size: int = 8  # samples per step; 4 learned 0.064 less held-out on the toy in 4 of 4 paired runs
    # (bench/RESULTS.md, "Batch 8"); micro_batch and gradient checkpointing (auto) fit it in memory
    micro_batch: int = 0  # samples per forward/backward, their gradients summed into the step: the same step in
    # less memory; 0 = auto (as many as the free memory holds, measured; core/checkpointing.py)
    train_token: bool = True
    lam_prev: float = 1.0
    lam_base: float = 0.1
    lam_ewc: float = 0.0  # EWC-DC: off by default, no measurable effect on the toy (bench/RESULTS.md); 1.0 when on
    lam_dsc: float = 0.5  # 0.5 against 1.0: +0.015 held-out over 7 paired runs (bench/RESULTS.md)
    lam_prior: float = 1.0  # prior preservation: eps-MSE against the model before this concept on generic prompts
    # (the rows learn without the model's other prompts drifting; bench/RESULTS.md, "Prior preservation")
    prior_batch: int = 2  # prior prompts per step, each at the x_t of one training image
    dc_every: int = 1  # DSC every step: its eps-MSE on c0 keeps the unconditional branch CFG extrapolates from
    dsc_batch: int = 1  # DSC distils on this many x_t of the batch (cost grows with it × candidates)
    dc_max_candidates: int = 5  # c0 + up to 4 sampled earlier concepts per DSC step (Jha et al.: k = 5)
    dc_temperature: float = DEFAULT_TEMPERATURE  # on per-element errors (dc_scores)
    fisher_draws: int = 2
    fisher_gamma: float = 0.9
    max_grad_norm: float | None = 1.0
    seed: int = 0
    precision: str = "auto"  # the frozen model's arithmetic (core.precision): auto / bf16 / fp32 / fp16 (+ GradScaler)
    gradient_checkpointing: str = "auto"  # on / off / auto: measured from one forward and the free memory
    # True: train on the images and their mirror images. Off as kohya's --flip_aug and diffusers' --random_flip are:
    # it erases a subject's sides (text, logos), and on the toy it learned no more (bench/RESULTS.md, "Flip")
    flip: bool = False
    rank: int = 16  # r > 0: each layer's change of its selected rows is rank r; 0: every number of the rows trains
    token_first: float = 0.25  # this fraction of the steps trains the trigger token alone, then rows and token
    # (pivotal tuning: the concept finds its word before the rows move; bench/RESULTS.md, "Token first")

    def validate(self):
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1 (got {self.steps})")
        if self.lr <= 0 or self.token_lr <= 0:
            raise ValueError(f"lr and token_lr must be positive (got {self.lr}, {self.token_lr})")
        if self.dsc_batch < 1 or self.dc_max_candidates < 2:
            raise ValueError("dsc_batch must be >= 1 and dc_max_candidates >= 2")
        if self.dc_every < 1:
            raise ValueError(f"dc_every must be at least 1 (got {self.dc_every})")
        if not 0 <= self.token_first < 1:
            raise ValueError(f"token_first must be in [0, 1) (got {self.token_first})")
        if self.rank < 0:
            raise ValueError(f"rank must be >= 0 (got {self.rank})")
        if self.dc_temperature <= 0:
            raise ValueError(f"dc_temperature must be positive (got {self.dc_temperature})")
        if self.micro_batch < 0:
            raise ValueError(f"micro_batch must be >= 0, 0 = auto (got {self.micro_batch})")
        if self.prior_batch < 1:
            raise ValueError(f"prior_batch must be at least 1 (got {self.prior_batch})")
        for k in ("lam_prev", "lam_base", "lam_ewc", "lam_dsc", "lam_prior"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0 (got {getattr(self, k)})")
        check_precision(self.precision)
        check_checkpointing(self.gradient_checkpointing)


@dataclass
class TrainResult:
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer -> (rows, delta)
    token: torch.Tensor | None
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    config: dict = field(default_factory=dict)
    optimizer_state_bytes: int = 0
    checkpointing: dict = field(default_factory=dict)  # what gradient checkpointing did, and for auto why


@dataclass
class RowAnchors:
    """What the row penalties compare against, per element of the flat delta u (see RowDeltas), in delta units."""

    in_prev: torch.Tensor  # bool like u: the element's row was changed by an earlier concept
    offset: torch.Tensor  # like u: (W_before - W_pretrained) / rms, non-zero only on rows of earlier concepts
    fisher: torch.Tensor | None  # like u: DC Fisher normalised to mean 1 over every recorded row (None: no Fisher yet)


def row_anchors(backend, deltas: RowDeltas, memory: ContinualMemory | None) -> RowAnchors:
    weights = {l.name: l.weight for l in backend.projection_layers()}
    prev = memory.prev_rows() if memory else {}
    in_prev, offset, fisher = {}, {}, {}
    f_mean = None
    if memory and memory.fisher:
        f_mean = element_mean(memory.fisher.values()).clamp_min(1e-30)
    for n in deltas.names:
        rows = deltas.rows[n].cpu()
        cur = weights[n].detach()[rows.to(weights[n].device)].float().cpu()
        in_prev[n] = torch.isin(rows, prev.get(n, torch.empty(0, dtype=torch.long)))[:, None].expand_as(cur)
        pre = memory.pretrained_rows(n, rows, cur) if memory else cur
        offset[n] = (cur - pre) / deltas.scale[n]
        if f_mean is not None:
            fisher[n] = memory.fisher[n][rows].float() / f_mean if n in memory.fisher else torch.zeros_like(cur)
    dev = next(deltas.parameters(), torch.zeros(0)).device  # (not flat_delta: that would multiply every up @ down)
    return RowAnchors(deltas.flat(in_prev).to(dev), deltas.flat(offset).to(dev),
                      deltas.flat(fisher).to(dev) if fisher else None)


def row_penalties(u: torch.Tensor, anchors: RowAnchors, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The CNS and EWC-DC terms for the delta u (delta units, any shape the anchors share), each a mean over u's
    elements."""
    terms = {}
    if cfg.lam_prev > 0 and bool(anchors.in_prev.any()):
        terms["prev"] = cfg.lam_prev * (anchors.in_prev * u.pow(2)).mean()
    if cfg.lam_base > 0:
        terms["base"] = cfg.lam_base * (u + anchors.offset).pow(2).mean()
    if cfg.lam_ewc > 0 and anchors.fisher is not None:
        terms["ewc"] = cfg.lam_ewc * (anchors.fisher * u.pow(2)).mean()
    return terms


def teacher_and_student(backend, deltas, x0, t, eps, contexts):
    """(per-sample error, eps prediction) of the model before this concept (the delta switched off, no copy) and of
    the model being trained, at the same x_t: what DSC and the prior term compare."""
    with torch.no_grad(), deltas.disabled():
        teacher = denoise_error(backend, x0, t, eps, contexts, return_pred=True)
    return teacher, denoise_error(backend, x0, t, eps, contexts, return_pred=True)


def dsc_loss(backend, deltas, x0, contexts, gen, cfg: TrainConfig, j: int, backward=None):
    """KL(P_teacher || P_student) over the DC candidates + eps MSE on candidate j, one shared x_t.
    With `backward` (a function that back-propagates a loss), one candidate's passes at a time: the student's
    errors are first computed without gradients for the KL's weights dKL/d(error), then each candidate's error is
    computed again with them and back-propagated as weight x error (+ its eps MSE). The gradient is the whole
    term's, a step holds one candidate's activations instead of all of them, and the value is returned detached
    (a non-finite value is returned before anything is back-propagated)."""
    B, K = x0.shape[0], contexts.shape[0]
    t, eps = draw_t_eps(backend, x0, gen)
    xr, er, tr = x0.repeat_interleave(K, 0), eps.repeat_interleave(K, 0), t.repeat_interleave(K, 0)
    cr = contexts.repeat(B, 1, 1)

    def kl_of(err_s, err_t):
        lt = dc_logits(err_t.view(B, K), cfg.dc_temperature)
        ls = dc_logits(err_s.view(B, K), cfg.dc_temperature)
        return F.kl_div(ls.log_softmax(1), lt.log_softmax(1), log_target=True, reduction="batchmean")

    if backward is None:
        (err_t, e_t), (err_s, e_s) = teacher_and_student(backend, deltas, xr, tr, er, cr)
        return kl_of(err_s, err_t) + (e_s.view(B, K, -1)[:, j] - e_t.view(B, K, -1)[:, j]).pow(2).mean()
    with torch.no_grad():
        (err_t, e_t), (err_s, e_s) = teacher_and_student(backend, deltas, xr, tr, er, cr)
    e_tj = e_t.view(B, K, -1)[:, j]
    err = err_s.detach().requires_grad_()
    with torch.enable_grad():
        kl = kl_of(err, err_t)
        (weight,) = torch.autograd.grad(kl, err)
    value = kl.detach() + (e_s.view(B, K, -1)[:, j] - e_tj).pow(2).mean()
    if not torch.isfinite(value):
        return value
    for k in range(K):
        sel = torch.arange(B, device=xr.device) * K + k
        err_k, pred_k = denoise_error(backend, xr[sel], tr[sel], er[sel], cr[sel], return_pred=True)
        loss = (weight[sel] * err_k).sum()
        backward(loss + (pred_k.flatten(1) - e_tj).pow(2).mean() if k == j else loss)
    return value


def prior_loss(backend, deltas, x0, contexts, gen):
    """Prior preservation without class images: the eps the model predicts for generic prompts, at x_t of the
    concept's images, held to what the model before this concept predicts there (DreamBooth's prior term, with the
    frozen model's prediction in place of images sampled from it)."""
    t, eps = draw_t_eps(backend, x0, gen)
    (_, e_t), (_, e_s) = teacher_and_student(backend, deltas, x0, t, eps, contexts)
    return (e_s - e_t).pow(2).mean()


def _per_image_prompts(prompt, n: int) -> list[str]:
    prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
    if len(prompts) != n:
        raise ValueError(f"prompt: {len(prompts)} captions for {n} images (give one prompt, or one per image)")
    return prompts


def train_concept(
    backend: Backend,
    x0: torch.Tensor,
    prompt: str | list[str],
    trigger: str | None,
    rows: dict[str, torch.Tensor] | None,
    memory: ContinualMemory | None = None,
    cfg: TrainConfig | None = None,
    callback=None,
    adapter=None,
    prior_prompts: list[str] | None = None,
) -> TrainResult:
    """Train; return the deltas. The backend's weights are never written (bake the result to merge).

    prompt: one prompt for every image, or one caption per image (e.g. naming each image's background, so the
    trigger learns the subject and not its surroundings).
    callback(step, total, terms) runs after every step; raising from it cancels with nothing applied.
    adapter: another trainable weight change with RowDeltas' surface (applied(backend), disabled(),
    parameters(), optional penalty() -> {name: loss}, optional lr_scale) — how baselines such as C-LoRA share this
    loop; the row regularisers (prev/base/ewc) apply to RowDeltas only."""
    cfg = cfg or TrainConfig()
    cfg.validate()
    if len(x0) == 0:
        raise ValueError("images: no concept images to train on")
    if adapter is None and sum(len(r) for r in rows.values()) == 0:
        raise ValueError("neurons: the selection is empty; raise the budget or rho_base")
    prompts = _per_image_prompts(prompt, len(x0))
    uniq = sorted(set(prompts))
    which = torch.tensor([uniq.index(p) for p in prompts])
    gen = torch.Generator().manual_seed(cfg.seed)
    dev = backend.device
    backend.set_compute_dtype(compute_dtype(cfg.precision, dev))
    scaler = grad_scaler(backend.dtype, dev)
    deltas = adapter if adapter is not None else RowDeltas.on(
        backend, rows, dev, rank=cfg.rank, seed=cfg.seed + (len(memory.concepts) if memory else 0))
    rowwise = isinstance(deltas, RowDeltas)
    params = [{"params": list(deltas.parameters()), "lr": cfg.lr * getattr(deltas, "lr_scale", 1.0)}]
    token = None
    if trigger and cfg.train_token:
        row = backend.token_row(trigger).float()
        token = torch.nn.Parameter(row.to(dev))
        params.append({"params": [token], "lr": cfg.token_lr * weight_rms(row)})
    opt = torch.optim.AdamW(params, weight_decay=0.0)
    row_lr = opt.param_groups[0]["lr"]
    # the token alone first (row adapters only: the ceiling and the LoRA baselines keep their published recipes);
    # Adam still sees the rows' gradients meanwhile, so they start with their moments estimated
    rows_from = round(cfg.token_first * cfg.steps) if rowwise and token is not None else 0
    anchors = row_anchors(backend, deltas, memory) if rowwise else None
    use_dsc = cfg.lam_dsc > 0 and memory is not None
    if use_dsc:
        with torch.no_grad():
            cand_ctx = backend.encode_text(memory.candidates(), memory.tokens()).detach()
        n_prev = len(memory.concepts)
    use_prior = cfg.lam_prior > 0 and bool(prior_prompts)
    if use_prior:
        with torch.no_grad():
            prior_ctx = backend.encode_text(list(prior_prompts)).detach()
    fixed_ctx = None if token is not None else backend.encode_text(uniq).detach()
    history, t0 = [], time.perf_counter()
    with deltas.applied(backend):
        def one_sample():  # a training forward of one sample, off the training random stream
            g = torch.Generator().manual_seed(cfg.seed + 1)
            t1, eps1 = draw_t_eps(backend, x0[:1].to(dev), g)
            ctx1 = backend.encode_text(uniq[:1], {trigger: token}) if token is not None else fixed_ctx[:1]
            return denoise_error(backend, x0[:1].to(dev), t1, eps1, ctx1).sum()

        batch = min(cfg.batch_size, len(x0))
        dsc_passes = cfg.dsc_batch * min(cfg.dc_max_candidates, n_prev + 1) if use_dsc else 0
        prior_passes = cfg.prior_batch if use_prior else 0
        ckpt = decide(cfg.gradient_checkpointing, one_sample, batch, max(dsc_passes, prior_passes),
                      backend.free_memory(), backend.networks(), cfg.micro_batch, backend.enable_gradient_checkpointing,
                      max(cfg.dsc_batch if use_dsc else 0, prior_passes))
        step, vals = 0, {}

        def record(**values):  # a step's loss values, summed per term; a non-finite one stops with nothing applied
            now = {k: float(v) for k, v in values.items()}
            if not all(map(math.isfinite, now.values())):
                raise NonFiniteLossError(
                    f"loss became non-finite at step {step + 1}: "
                    + ", ".join(f"{k}={x:.4g}" for k, x in {**vals, **now}.items())
                    + "; nothing was applied (try a lower lr)"
                )
            for k, v in now.items():
                vals[k] = vals.get(k, 0.0) + v

        def backward(**terms):  # each call's graph is freed before the next one is built
            record(**{k: v.detach() for k, v in terms.items()})
            scaler.scale(sum(terms.values())).backward()

        for step in range(cfg.steps):
            opt.param_groups[0]["lr"] = 0.0 if step < rows_from else row_lr
            opt.zero_grad(set_to_none=True)
            vals = {}
            idx = torch.randint(0, len(x0), (batch,), generator=gen)
            xb = x0[idx].to(dev)
            t, eps = draw_t_eps(backend, xb, gen)
            for c in range(0, batch, ckpt["micro_batch"]):  # the batch's mean, one micro-batch at a time
                m = slice(c, c + ckpt["micro_batch"])
                ctx = backend.encode_text(uniq, {trigger: token}) if token is not None else fixed_ctx
                err = denoise_error(backend, xb[m], t[m], eps[m], ctx[which[idx[m]].to(ctx.device)])
                backward(diff=err.sum() / batch)
            pen = row_penalties(deltas.flat_delta(), anchors, cfg) if rowwise else (
                deltas.penalty() if hasattr(deltas, "penalty") else {})
            if pen:  # one graph: the terms share the delta's
                backward(**pen)
            if use_dsc and step % cfg.dc_every == 0:
                # c0 plus a random subset of earlier concepts; eps-MSE on the first sampled earlier one
                earlier = (1 + torch.randperm(n_prev, generator=gen))[: cfg.dc_max_candidates - 1].tolist()
                j = 1 if earlier else 0
                args = (backend, deltas, xb[: cfg.dsc_batch], cand_ctx[[0] + earlier], gen, cfg, j)
                if ckpt["dsc_split"]:
                    record(dsc=cfg.lam_dsc * dsc_loss(
                        *args, backward=lambda l: scaler.scale(cfg.lam_dsc * l).backward()))
                else:
                    backward(dsc=cfg.lam_dsc * dsc_loss(*args))
            if use_prior:
                pi = torch.randint(0, len(prior_ctx), (cfg.prior_batch,), generator=gen)
                xi = torch.randint(0, len(x0), (cfg.prior_batch,), generator=gen)
                backward(prior=cfg.lam_prior * prior_loss(backend, deltas, x0[xi].to(dev), prior_ctx[pi], gen))
            scaler.unscale_(opt)
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for g in params for p in g["params"]], cfg.max_grad_norm)
            scaler.step(opt)
            scaler.update()
            vals["total"] = sum(vals.values())
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
        checkpointing=ckpt,
    )
