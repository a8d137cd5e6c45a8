"""The ComfyUI side of the GPU benchmark runs end to end at slim size on CPU: our nodes next to TrainLoraNode."""
import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize("arch,model_type", [("sd15", "SD15"), ("sdxl", "SDXL")])
def test_train_bench_compares_with_trainloranode_small_cpu(arch, model_type):
    r = subprocess.run([sys.executable, "-m", "continual_concepts.bench.comfy_train_bench", "--arch", arch, "--small",
                        "--cpu", "--steps", "2", "--n0", "1"], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["model_type"] == model_type and out["selected_rows"] > 0 and out["size"] == f"slim-{arch}-64px"
    for k in ("select_s", "ours_it_s", "ours_rows_only_it_s", "trainloranode_it_s", "ours_vs_trainloranode"):
        assert out[k] > 0, k
