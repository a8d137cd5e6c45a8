"""Host tests run with ComfyUI's own python against a checkout at COMFYUI_PATH (default /opt/ComfyUI);
without one every test here is skipped with that reason."""
import os
import sys
from pathlib import Path

import pytest

COMFYUI = Path(os.environ.get("COMFYUI_PATH", "/opt/ComfyUI"))
HAVE_COMFY = (COMFYUI / "main.py").is_file() and (COMFYUI / "comfy").is_dir()


def pytest_collection_modifyitems(config, items):
    if HAVE_COMFY:
        return
    skip = pytest.mark.skip(reason=f"no ComfyUI checkout at {COMFYUI} (set COMFYUI_PATH)")
    for item in items:
        if "tests/host" in str(item.fspath):
            item.add_marker(skip)


if HAVE_COMFY:
    sys.path.insert(0, str(COMFYUI))
    sys.argv = sys.argv[:1] + ["--cpu"] if "comfy" not in sys.modules else sys.argv
    import comfy.cli_args  # noqa: E402

    comfy.cli_args.args.cpu = True


@pytest.fixture(scope="session")
def slim_ckpt(tmp_path_factory):
    from continual_concepts.bench.comfy_sd15_checkpoint import build_checkpoint

    return build_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "slim_sd15.safetensors"))


@pytest.fixture(scope="session")
def loaded(slim_ckpt):
    import comfy.sd

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(slim_ckpt)
    return model, clip, vae
