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
import subprocess
import sys
import time
from pathlib import Path

import torch


def _backend(quick: bool):
    from ..core.backends.diffusers_backend import DiffusersBackend

    try:
        from .toyworld import load_components

        return DiffusersBackend(**load_components()), "toy-world model"
    except Exception:  # the toy world is optional here: fall back to a model built in code
        from ..core.tiny_model import TinyModelSpec, build_tiny_components

        spec = TinyModelSpec(sample_size=8, block_out_channels=(32, 64), cross_attention_dim=32) if quick else \
            TinyModelSpec(sample_size=16, block_out_channels=(64, 128), cross_attention_dim=64)
        return DiffusersBackend(**build_tiny_components(spec)), f"tiny random model {spec.block_out_channels}@{spec.sample_size}"


def _step_times(backend, x0, rows, cfg, memory=None, dense_weights=False):
    """Per-step wall times of train_concept (callback timestamps)."""
    from ..core.train import train_concept

    stamps = [time.perf_counter()]
    if dense_weights:  # Custom-Diffusion style: train W itself -> full [out,in] weight gradients
        from ..core.backends.base import Backend

        orig = backend.set_row_delta
        backend.set_row_delta = lambda *a: Backend.set_row_delta(backend, *a)
    try:
        res = train_concept(backend, x0, "a sks", "sks", rows, memory, cfg,
                            callback=lambda s, t, v: stamps.append(time.perf_counter()))
    finally:
        if dense_weights:
            backend.set_row_delta = orig
    return [b - a for a, b in zip(stamps, stamps[1:])], res


def bench_train(backend, x0, repeats, steps):
    """(a) sparse rows (a CNS-sized selection: 5.8 % of K/V rows, SD1.5's 0.13 % budget) vs dense K/V."""
    from ..core.row_delta import all_rows
    from ..core.train import TrainConfig

    g = torch.Generator().manual_seed(0)
    dense = all_rows(backend)
    sparse = {n: torch.sort(r[torch.randperm(len(r), generator=g)[: max(1, round(0.058 * len(r)))]]).values
              for n, r in dense.items()}
    cfg = TrainConfig(steps=steps, lam_prev=0, lam_base=0, lam_ewc=0, lam_dsc=0, train_token=True)
    _step_times(backend, x0, sparse, TrainConfig(steps=2))  # warm-up
    ts, td, rs, rd = [], [], None, None
    for _ in range(repeats):
        t, rs = _step_times(backend, x0, sparse, cfg)
        ts += t
        t, rd = _step_times(backend, x0, dense, cfg, dense_weights=True)
        td += t
    return {"sparse_step_s": statistics.median(ts), "dense_step_s": statistics.median(td),
            "time_ratio": statistics.median(ts) / statistics.median(td),
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
    """(c) EWC-DC + DSC (default dc_every) vs the plain step, with one earlier concept in memory."""
    from ..core.continual import learn_concept
    from ..core.memory import ContinualMemory
    from ..core.neurons import SelectConfig
    from ..core.train import TrainConfig

    images = backend.decode(x0)
    mem = ContinualMemory.for_model(backend, "a photo")
    learn_concept(backend, mem, images, "first", "zwx", "a zwx", SelectConfig(n_calibration=2, n_draws=1, budget_pct=1),
                  TrainConfig(steps=2, fisher_draws=1), ["a red circle", "a blue square", "a cat"])
    rows = {n: r[: max(1, len(r) // 10)] for n, r in mem.concepts[0].rows.items()}
    rows = {l.name: torch.arange(0, l.weight.shape[0], 17) for l in backend.kv_layers()}
    plain = TrainConfig(steps=steps, lam_ewc=0, lam_dsc=0)
    reg = TrainConfig(steps=steps)  # defaults: lam_ewc, lam_dsc > 0, dc_every 5
    tp, tr = [], []
    _step_times(backend, x0, rows, TrainConfig(steps=2), mem)
    for _ in range(repeats):
        t, _ = _step_times(backend, x0, rows, plain, mem)
        tp.append(sum(t) / len(t))
        t, _ = _step_times(backend, x0, rows, reg, mem)
        tr.append(sum(t) / len(t))
    return {"plain_step_s": statistics.median(tp), "regularised_step_s": statistics.median(tr),
            "time_ratio": statistics.median(tr) / statistics.median(tp), "dc_every": reg.dc_every}


def bench_merge_vs_checkpointsave(quick: bool) -> dict:
    """(d) runs with ComfyUI's own python (subprocess per side: peak RSS is per process)."""
    root = Path(os.environ.get("COMFYUI_PATH", "/opt/ComfyUI"))
    py = root / ".venv" / "bin" / "python"
    script = Path(__file__).with_name("comfy_merge_bench.py")
    if not (root / "main.py").is_file() or not py.is_file():
        return {"skipped": f"no ComfyUI checkout with a .venv at {root}"}
    if not script.is_file():
        return {"skipped": "bench/comfy_merge_bench.py not present"}
    r = subprocess.run([str(py), str(script), *(["--quick"] if quick else [])], capture_output=True, text=True)
    if r.returncode != 0:
        return {"skipped": f"comfy merge bench failed: {r.stderr.strip().splitlines()[-1:] }"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (for tests)")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    backend, model = _backend(a.quick)
    repeats, steps, n_img = (1, 4, 2) if a.quick else (3, 10, 4)
    x0 = backend.encode_images(torch.rand(n_img, *backend.decode(torch.zeros(1, *_x0_shape(backend))).shape[1:],
                                          generator=torch.Generator().manual_seed(0)))
    out = {"model": model, "unet_params": backend.unet_param_count(), "torch": torch.__version__,
           "threads": torch.get_num_threads()}
    print(f"model: {model}", file=sys.stderr)
    out["a_sparse_vs_dense"] = r = bench_train(backend, x0, repeats, steps)
    print(f"(a) sparse/dense step time {r['time_ratio']:.3f}x (target <= 0.9), optimizer state "
          f"{100 * r['optimizer_state_ratio']:.2f} % (target <= 1 %)", file=sys.stderr)
    out["b_dc_probe"] = r = bench_dc(backend, x0[: max(1, n_img // 2)], repeats, 4 if a.quick else 16)
    print(f"(b) DC probe batched {r['speedup']:.2f}x faster than naive (target >= 3), max rel diff "
          f"{r['max_rel_diff']:.2e} (target <= 1e-5)", file=sys.stderr)
    out["c_regularised_vs_plain"] = r = bench_regularised(backend, x0, repeats, steps)
    print(f"(c) EWC-DC + DSC step / plain step {r['time_ratio']:.3f}x (target <= 1.3)", file=sys.stderr)
    out["d_merge_vs_checkpointsave"] = r = bench_merge_vs_checkpointsave(a.quick)
    print(f"(d) merge vs CheckpointSave: {r}", file=sys.stderr)
    print(json.dumps(out))
    return 0


def _x0_shape(backend):
    from ..core.sampling import _x0_shape as shape

    return shape(backend)


if __name__ == "__main__":
    sys.exit(main())
