"""Host tests run with ComfyUI's own python against a checkout at COMFYUI_PATH (default /opt/ComfyUI);
without one every test here is skipped with that reason."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

COMFYUI = Path(os.environ.get("COMFYUI_PATH", "/opt/ComfyUI"))
HAVE_COMFY = (COMFYUI / "main.py").is_file() and (COMFYUI / "comfy").is_dir()


FULL = os.environ.get("CONTINUAL_FULL") == "1"  # set by `make test-host-full`
PACK = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(config, items):
    skip_full = pytest.mark.skip(reason="full-size models (~20 GB RAM): run `make test-host-full`")
    skip = pytest.mark.skip(reason=f"no ComfyUI checkout at {COMFYUI} (set COMFYUI_PATH)")
    for item in items:
        if "tests/host" not in str(item.fspath):
            continue
        if not HAVE_COMFY:
            item.add_marker(skip)
        elif "full" in item.keywords and not FULL:
            item.add_marker(skip_full)


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


KV = ("attn2.to_k.weight", "attn2.to_v.weight")


@pytest.fixture(scope="session")
def lora_kv():
    """K/V weights of `model` with a LoRA file applied the way the stock LoraLoader applies it (all keys must map)."""
    def apply(model, lora: dict) -> dict:
        import comfy.model_management as mm
        import comfy.sd
        import torch

        with torch.inference_mode():
            patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
        assert len(patched.patches) == len(lora) // 3, "LoraLoader did not map every LoRA key"
        mm.load_models_gpu([patched], force_full_load=True, force_patch_weights=True)
        out = {k: v.float().clone() for k, v in patched.model.state_dict().items() if k.endswith(KV)}
        mm.unload_all_models()
        return out

    return apply


@pytest.fixture(scope="session")
def teach():
    """Select Concept Neurons + Continual Train Step (3 steps, every regulariser on) on one model, as a graph
    would run them (under inference_mode); returns everything the tests look at."""
    def run(model, clip, vae, budget_pct: float, layers: str = "kv") -> dict:
        import torch

        from continual_concepts.nodes.select_node import SelectConceptNeurons
        from continual_concepts.nodes.train_node import ContinualTrainStep

        before = {k: v.clone() for k, v in model.model.state_dict().items() if k.endswith(KV)}
        images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            neurons, nmap, report = SelectConceptNeurons.execute(
                model=model, clip=clip, vae=vae, images=images, prompt="a photo of sks", trigger="sks",
                budget_pct=budget_pct, calibration_prompts=2, general_scoring="taylor", seed=0, layers=layers).args
            m2, c2, mem, loss = ContinualTrainStep.execute(
                model=model, clip=clip, vae=vae, images=images, neurons=neurons, prompt="a photo of sks",
                trigger="sks", name="a", steps=3, lr=1e-2, lam_prev=1.0, lam_base=0.1, lam_ewc=1.0, lam_dsc=1.0,
                dc_every=2, seed=0).args
        return dict(model=model, clip=clip, vae=vae, images=images, neurons=neurons, nmap=nmap, report=report,
                    m2=m2, c2=c2, mem=mem, loss=loss, before=before)

    return run


@pytest.fixture(scope="session")
def trained(loaded, teach):
    """One concept ('a', trigger 'sks') learned on the slim checkpoint, shared by the in-process tests."""
    return teach(*loaded, budget_pct=0.5)


@pytest.fixture
def comfy_dirs(tmp_path, monkeypatch):
    """ComfyUI's output folder and its loras / embeddings folders moved into tmp_path for one test."""
    import folder_paths

    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    for kind in ("loras", "embeddings"):
        monkeypatch.setitem(folder_paths.folder_names_and_paths, kind,
                            ([str(tmp_path / "models" / kind)], folder_paths.folder_names_and_paths[kind][1]))
    return tmp_path


def run_node(node, **kw):
    """A node's execute() under inference_mode, as ComfyUI runs it; its output values."""
    return run_node_ui(node, **kw).args


def run_node_ui(node, **kw):
    """The same, returning the whole NodeOutput (values and what the UI is sent)."""
    import torch

    with torch.inference_mode():
        return node.execute(**kw)


@contextmanager
def comfy_server(base: Path):
    """ComfyUI's own main.py, headless on CPU on 127.0.0.1 with only this pack (symlinked into base/custom_nodes),
    base as its base directory; yields (url, process) once it answers, prints the executed/error lines at exit."""
    (base / "custom_nodes").mkdir(exist_ok=True)
    if not (base / "custom_nodes" / "continual_concepts").exists():  # a second server on the same base
        (base / "custom_nodes" / "continual_concepts").symlink_to(PACK)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(base / "server.log", "a")  # a second server on the same base adds to the first one's log
    proc = subprocess.Popen([sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--base-directory", str(base), "--disable-all-custom-nodes", "--whitelist-custom-nodes",
                             "continual_concepts", "--disable-api-nodes"], cwd=COMFYUI, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/system_stats", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError((base / "server.log").read_text()[-3000:])
                time.sleep(1)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        print("\n--- server log summary ---\n" + "\n".join(
            l for l in (base / "server.log").read_text().splitlines() if "Prompt executed" in l or "Error" in l))


def queue(url, wf, tmp_path, name, timeout=900):
    """Queue an API workflow with our queue client; its outputs (per node id). Prints the time per node."""
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(wf))
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "continual_concepts", "queue", str(p), "--server", url, "--timeout",
                          str(timeout)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{name}: {time.time() - t0:.1f} s; per node: " + ", ".join(
        f"{t['class_type']} {t['seconds']:.1f} s" for t in res["node_seconds"].values()))
    assert res["node_seconds"], "the queue client timed no node"
    return res["outputs"]
