"""`make bench`: speed and memory ratios measured side by side in one process, same model and inputs.

(a) sparse-row step vs dense K/V step (Custom-Diffusion style: every K/V weight trainable, full weight
    gradients); (b) batched DC probe vs a naive one-prompt-per-call loop; (c) DC-regularised step vs the plain
    step; (d) our Merge into Checkpoint vs ComfyUI's CheckpointSave, when a ComfyUI checkout is present.
Warm-up first, then repeats; medians. Last line: one JSON object."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from . import comfy_host


def _backend(quick: bool):
    from ..core.backends.diffusers_backend import DiffusersBackend

    try:
        if quick:
            raise RuntimeError("--quick: a smaller model built in code")
        from .toyworld import load_components

        return DiffusersBackend(**load_components()), "toy-world model (bench/toyworld/model)"
    except Exception:  # the toy world is optional here: fall back to a model built in code
        from ..core.tiny_model import TinyModelSpec, build_tiny_components

        spec = TinyModelSpec(sample_size=8, block_out_channels=(32, 64), cross_attention_dim=32) if quick else \
            TinyModelSpec(sample_size=16, block_out_channels=(64, 128), cross_attention_dim=64)
        return DiffusersBackend(**build_tiny_components(spec)), f"tiny random model {spec.block_out_channels}@{spec.sample_size}"


def _step_times(backend, x0, rows, cfg, memory=None, dense_weights=False, prior_prompts=None):
    """Per-step wall times of train_concept (callback timestamps)."""
    from ..core.train import train_concept

    stamps = [time.perf_counter()]
    if dense_weights:  # Custom-Diffusion style: train W itself -> full [out,in] weight gradients
        from ..core.backends.base import Backend

        orig = backend.set_row_delta
        backend.set_row_delta = lambda *a: Backend.set_row_delta(backend, *a)
    try:
        res = train_concept(backend, x0, "a sks", "sks", rows, memory, cfg, prior_prompts=prior_prompts,
                            callback=lambda s, t, v: stamps.append(time.perf_counter()))
    finally:
        if dense_weights:
            backend.set_row_delta = orig
    return [b - a for a, b in zip(stamps, stamps[1:])], res


def cns_sized_rows(backend, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows drawn at random over all K/V rows, as many as CNS's default budget allows (SelectConfig.budget_pct
    of UNet parameters: 0.13 %, i.e. 1,450 of SD1.5's 24,960 K/V rows = 5.8 %)."""
    from ..core.neurons import SelectConfig
    layers = backend.kv_layers()
    n = max(1, round(SelectConfig().budget_pct / 100 * backend.unet_param_count() / layers[0].weight.shape[1]))
    sizes = [l.weight.shape[0] for l in layers]
    pick = torch.randperm(sum(sizes), generator=torch.Generator().manual_seed(seed))[:n]
    out, start = {}, 0
    for l, m in zip(layers, sizes):
        r = pick[(pick >= start) & (pick < start + m)] - start
        if len(r):
            out[l.name] = torch.sort(r).values
        start += m
    return out


def bench_train(backend, x0, repeats, steps):
    """(a) sparse rows (a CNS-sized selection) vs dense K/V (RowDeltas over all_rows through the weight-function
    path: W + D on every K/V weight, full [out, in] weight gradients, AdamW on all of them = Custom Diffusion's
    trainable set). Also a floor: one row per layer, i.e. what the step costs with (almost) nothing trained."""
    from ..core.row_delta import all_rows
    from ..core.train import TrainConfig

    dense = all_rows(backend)
    sparse = cns_sized_rows(backend)
    floor = {n: r[:1] for n, r in dense.items()}
    # rank 0 on both sides: what is compared is a sparse row set against every K/V row, number for number
    cfg = TrainConfig(steps=steps, lam_prev=0, lam_base=0, lam_ewc=0, lam_dsc=0, train_token=True, rank=0)
    _step_times(backend, x0, sparse, TrainConfig(steps=2, rank=0))  # warm-up
    _step_times(backend, x0, dense, TrainConfig(steps=2, rank=0), dense_weights=True)
    ts, td, tf, rs, rd = [], [], [], None, None
    for _ in range(repeats):  # interleaved, so load from other processes hits both sides alike
        t, rs = _step_times(backend, x0, sparse, cfg)
        ts += t
        t, rd = _step_times(backend, x0, dense, cfg, dense_weights=True)
        td += t
        t, _ = _step_times(backend, x0, floor, cfg)
        tf += t
    ms, md, mf = statistics.median(ts), statistics.median(td), statistics.median(tf)
    return {"sparse_step_s": ms, "dense_step_s": md, "floor_step_s": mf, "time_ratio": ms / md,
            "floor_ratio": mf / md, "dense_baseline": "RowDeltas over all_rows, weight-function path (W + D)",
            "sparse_rows": sum(len(r) for r in sparse.values()), "dense_rows": sum(len(r) for r in dense.values()),
            "optimizer_state_ratio": rs.optimizer_state_bytes / rd.optimizer_state_bytes,
            "sparse_optimizer_bytes": rs.optimizer_state_bytes, "dense_optimizer_bytes": rd.optimizer_state_bytes}


def naive_dc(backend, x0, prompts, n_t, seed):
    """The reference: one prompt per UNet call, the text re-encoded every time."""
    from ..core.dc_scores import even_timesteps, shared_noise

    ts, noise = even_timesteps(backend.num_timesteps, n_t), shared_noise(x0, n_t, seed)
    out = torch.zeros(len(x0), len(prompts), n_t)
    with torch.no_grad():
        for i in range(len(x0)):
            for k, p in enumerate(prompts):
                for j, t in enumerate(ts):
                    e = backend.noise_and_predict_eps(x0[i : i + 1], t.view(1), noise[i, j : j + 1], backend.encode_text([p]))
                    out[i, k, j] = (e.float() - noise[i, j : j + 1].float()).pow(2).mean()
    return out


def bench_dc(backend, x0, repeats, n_t=16):
    """(b) 5 candidates × n_t timesteps per image, batched + shared noise vs the naive loop."""
    from ..core.dc_scores import dc_scores

    prompts = ["a photo", "a sks", "a zwx", "a red circle", "a blue square"]
    dc_scores(backend, x0[:1], backend.encode_text(prompts), n_timesteps=2)  # warm-up
    tb, tn = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            r = dc_scores(backend, x0, backend.encode_text(prompts), n_timesteps=n_t, seed=1)
        tb.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = naive_dc(backend, x0, prompts, n_t, 1)
        tn.append(time.perf_counter() - t0)
    rel = ((r.raw - ref).abs() / ref.abs().clamp_min(1e-12)).max().item()
    return {"batched_s": statistics.median(tb), "naive_s": statistics.median(tn),
            "speedup": statistics.median(tn) / statistics.median(tb), "max_rel_diff": rel,
            "seconds_per_image": statistics.median(tb) / len(x0), "candidates": len(prompts), "timesteps": n_t}


def bench_regularised(backend, x0, repeats, steps):
    """(c) EWC-DC + DSC (default dc_every) vs the plain step, and the default step (DSC + the prior term) vs the
    plain step, with one earlier concept in memory."""
    from ..core.continual import learn_concept
    from ..core.memory import ContinualMemory
    from ..core.neurons import SelectConfig, default_calibration_prompts
    from ..core.train import TrainConfig

    images = backend.decode(x0)
    mem = ContinualMemory.for_model(backend, "a photo")
    learn_concept(backend, mem, images, "first", "zwx", "a zwx", SelectConfig(n_calibration=2, n_draws=1, budget_pct=1),
                  TrainConfig(steps=2, fisher_draws=1), ["a red circle", "a blue square", "a cat"])
    rows = cns_sized_rows(backend, seed=1)
    plain = TrainConfig(steps=steps, lam_ewc=0, lam_dsc=0, lam_prior=0)
    reg = TrainConfig(steps=steps, lam_ewc=1.0, lam_prior=0)  # EWC-DC on (off by default) + DSC at the default dc_every
    default = TrainConfig(steps=steps)  # DSC + the prior term on the shipped generic prompts
    prior = default_calibration_prompts()
    tp, tr, td = [], [], []
    _step_times(backend, x0, rows, TrainConfig(steps=2), mem, prior_prompts=prior)
    for _ in range(repeats):  # mean per step (DSC runs every dc_every steps), median over repeats
        for cfg, times, pp in ((plain, tp, None), (reg, tr, None), (default, td, prior)):
            t, _ = _step_times(backend, x0, rows, cfg, mem, prior_prompts=pp)
            times.append(sum(t) / len(t))
    return {"plain_step_s": statistics.median(tp), "regularised_step_s": statistics.median(tr),
            "time_ratio": statistics.median(tr) / statistics.median(tp), "dc_every": reg.dc_every,
            "default_step_s": statistics.median(td), "default_time_ratio": statistics.median(td) / statistics.median(tp)}


def bench_merge_vs_checkpointsave(quick: bool, workdir: str | None = None) -> dict:
    """(d) with ComfyUI's own python: one prep process (slim SD1.5 checkpoint + a one-concept memory), then one
    process per side and round (peak RSS is per process), sides alternating; medians over rounds."""
    import tempfile

    if why := comfy_host.missing():
        return {"skipped": why}
    rounds, repeats = (1, 1) if quick else (2, 3)

    def call(*args):
        return comfy_host.run_json("continual_concepts.bench.comfy_merge_bench", *args)

    with tempfile.TemporaryDirectory(dir=workdir) as d:
        try:
            info = call("prep", "--dir", d)
            runs = {"ours": [], "comfy": []}
            for _ in range(rounds):
                for side in ("ours", "comfy"):
                    runs[side].append(call(side, "--dir", d, "--repeats", str(repeats)))
        except RuntimeError as e:
            return {"skipped": f"comfy merge bench failed: {e}"}
    med = lambda side, k: statistics.median(r[k] for r in runs[side])  # noqa: E731
    out = {"model": f"slim SD1.5-shaped checkpoint ({info['unet_params'] / 1e6:.1f} M UNet params, full CLIP-L "
                    f"and VAE, {info['checkpoint_mb']:.0f} MiB fp16), one concept of {info['rows']} rows"}
    for k in ("save_s", "peak_rss_mb", "save_phase_extra_rss_mb", "written_mb"):
        out[f"ours_{k}"], out[f"comfy_{k}"] = med("ours", k), med("comfy", k)
    out["time_ratio"] = out["ours_save_s"] / out["comfy_save_s"]
    out["peak_rss_ratio"] = out["ours_peak_rss_mb"] / out["comfy_peak_rss_mb"]
    out["save_phase_rss_ratio"] = out["ours_save_phase_extra_rss_mb"] / out["comfy_save_phase_extra_rss_mb"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (for tests)")
    ap.add_argument("--skip-merge", action="store_true", help="leave out (d) (it needs ComfyUI's python)")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    backend, model = _backend(a.quick)
    repeats, steps, n_img = (1, 3, 2) if a.quick else (3, 10, 4)
    x0 = backend.encode_images(torch.rand(n_img, *backend.decode(torch.zeros(1, *_x0_shape(backend))).shape[1:],
                                          generator=torch.Generator().manual_seed(0)))
    out = {"model": model, "unet_params": backend.unet_param_count(),
           "kv_rows": sum(l.weight.shape[0] for l in backend.kv_layers()), "x0_shape": list(x0.shape),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": repeats, "steps": steps,
           "load_avg_start": os.getloadavg()[0]}
    say = lambda *m: print(*m, flush=True)  # noqa: E731
    say(f"model: {model}, x0 {tuple(x0.shape)}, {out['kv_rows']} K/V rows, load average {out['load_avg_start']:.2f}")
    out["a_sparse_vs_dense"] = r = bench_train(backend, x0, repeats, steps)
    say(f"(a) sparse ({r['sparse_rows']} rows) / dense K/V ({r['dense_rows']} rows) step time {r['time_ratio']:.3f}x "
        f"({1e3 * r['sparse_step_s']:.1f} vs {1e3 * r['dense_step_s']:.1f} ms; floor {1e3 * r['floor_step_s']:.1f} ms) "
        f"(target <= 0.9); optimizer state {100 * r['optimizer_state_ratio']:.2f} % (target <= 1 %)")
    out["b_dc_probe"] = r = bench_dc(backend, x0[: max(1, n_img // 2)], repeats, 4 if a.quick else 16)
    say(f"(b) DC probe batched {r['speedup']:.2f}x faster than naive ({r['batched_s']:.3f} vs {r['naive_s']:.3f} s) "
        f"(target >= 3), max rel diff {r['max_rel_diff']:.2e} (target <= 1e-5)")
    out["c_regularised_vs_plain"] = r = bench_regularised(backend, x0, repeats, steps)
    say(f"(c) EWC-DC + DSC step / plain step {r['time_ratio']:.3f}x ({1e3 * r['regularised_step_s']:.1f} vs "
        f"{1e3 * r['plain_step_s']:.1f} ms, dc_every {r['dc_every']}) (target <= 1.3); the default step (DSC + prior "
        f"term) / plain {r['default_time_ratio']:.3f}x ({1e3 * r['default_step_s']:.1f} ms)")
    out["d_merge_vs_checkpointsave"] = r = (
        {"skipped": "--skip-merge"} if a.skip_merge else bench_merge_vs_checkpointsave(a.quick))
    if "skipped" in r:
        say(f"(d) merge vs CheckpointSave: skipped: {r['skipped']}")
    else:
        say(f"(d) Merge into Checkpoint / CheckpointSave: time {r['time_ratio']:.3f}x ({r['ours_save_s']:.2f} vs "
            f"{r['comfy_save_s']:.2f} s), process peak RSS {r['peak_rss_ratio']:.3f}x ({r['ours_peak_rss_mb']:.0f} vs "
            f"{r['comfy_peak_rss_mb']:.0f} MiB), save-phase RSS {r['save_phase_rss_ratio']:.3f}x (target <= 1.2)")
    out["load_avg_end"] = os.getloadavg()[0]
    out["wall_s"] = time.perf_counter() - t_start
    say(json.dumps(out))
    return 0


def _x0_shape(backend):
    from ..core.sampling import _x0_shape as shape

    return shape(backend)


if __name__ == "__main__":
    sys.exit(main())
