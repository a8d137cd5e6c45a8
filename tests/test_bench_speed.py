"""The speed bench and the GPU script run end to end at toy size and report every figure."""
import json

from continual_concepts.bench import gpu_sd15, speed


def test_speed_bench_quick_reports_all_ratios(capsys):
    assert speed.main(["--quick"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    a, b, c = r["a_sparse_vs_dense"], r["b_dc_probe"], r["c_regularised_vs_plain"]
    assert a["sparse_rows"] < a["dense_rows"] and 0 < a["optimizer_state_ratio"] < 0.2
    assert a["time_ratio"] > 0 and c["time_ratio"] > 0 and c["default_time_ratio"] > 0
    assert b["max_rel_diff"] < 1e-5  # batched DC equals the naive loop
    assert "d_merge_vs_checkpointsave" in r


def test_gpu_script_runs_small_on_cpu(capsys):
    assert gpu_sd15.main(["--device", "cpu", "--arch", "sdxl", "--no-comfyui"]) == 2  # SDXL is measured in ComfyUI
    assert "ComfyUI only" in capsys.readouterr().err
    assert gpu_sd15.main(["--device", "cpu", "--small", "--steps", "3", "--no-comfyui"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for k in ("train_it_s", "probe_s_per_image", "select_s", "select_plus_500_steps_s", "selected_rows"):
        assert r[k] > 0, k


def test_gpu_script_full_config_is_sd15_shaped():
    cfg = gpu_sd15.SD15_UNET
    assert cfg["block_out_channels"] == (320, 640, 1280, 1280) and cfg["cross_attention_dim"] == 768


def test_gpu_script_builds_real_sd15_shapes_on_meta():
    """860 M UNet parameters and 24,960 K/V rows, as DESIGN §2 counts for SD1.5 (meta device: no memory)."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**gpu_sd15.SD15_UNET)
    rows = sum(m.to_k.weight.shape[0] + m.to_v.weight.shape[0] for n, m in unet.named_modules()
               if n.endswith("attn2"))
    assert rows == 24960
    assert 855e6 < sum(p.numel() for p in unet.parameters()) < 865e6
