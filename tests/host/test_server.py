"""Headless ComfyUI on 127.0.0.1 with only this pack: queue every API workflow through our queue client."""
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from conftest import PACK, comfy_server, queue

SMALL = {  # keep CPU time small: the graphs are the shipped ones, only sizes and step counts shrink
    "ContinualConcepts_LoadConceptImages": {"size": 64},
    "ContinualConcepts_SelectConceptNeurons": {"calibration_prompts": 2, "budget_pct": 0.5},
    "ContinualConcepts_ContinualTrainStep": {"steps": 2},
    "ContinualConcepts_DCScoreProbe": {"timesteps": 2},
    "ContinualConcepts_ConceptGallery": {"samples": 1, "size": 64, "steps": 2},
    "KSampler": {"steps": 2},
    "EmptyLatentImage": {"width": 64, "height": 64},
}


def small(wf):
    wf = json.loads(json.dumps(wf))
    for node in wf.values():
        node["inputs"].update(SMALL.get(node["class_type"], {}))
    return wf


@pytest.fixture(scope="module")
def server(slim_ckpt, tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy")
    (base / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(slim_ckpt, base / "models" / "checkpoints" / "slim_sd15.safetensors")
    with comfy_server(base) as (url, proc):
        yield url, base, proc


def test_every_node_type_is_registered(server):
    url, _, _ = server
    info = json.load(urllib.request.urlopen(url + "/object_info"))
    for wf in (PACK / "workflows").glob("*.json"):
        data = json.loads(wf.read_text())
        types = {n["type"] for n in data["nodes"]} if "nodes" in data else {n["class_type"] for n in data.values()}
        assert types <= set(info), f"{wf.name}: missing {types - set(info)}"
    ours = {k: v for k, v in info.items() if k.startswith("ContinualConcepts_")}
    assert len(ours) >= 7
    for k, spec in ours.items():  # what the frontend shows: a description and a tooltip on every input
        assert spec["description"] and spec["category"] == "continual_concepts", k
        for group in ("required", "optional"):
            for name, (_, *opts) in spec["input"].get(group, {}).items():
                assert opts and opts[0].get("tooltip"), f"{k}.{name} has no tooltip"


PROJECTIONS = tuple(f"attn2.{p}.weight" for p in ("to_q", "to_k", "to_v", "to_out.0"))


@pytest.mark.parametrize("name", ["probe_only", "one_concept", "three_concepts_chained"])
def test_api_workflow_runs(server, name, slim_ckpt, tmp_path):
    from safetensors.torch import load_file

    url, base, _ = server
    wf = small(json.loads((PACK / "workflows" / f"{name}.api.json").read_text()))
    outputs = queue(url, wf, tmp_path, name)
    probes = [o["text"][0] for k, o in outputs.items() if wf[k]["class_type"] == "ContinualConcepts_DCScoreProbe"]
    assert probes and all(abs(sum(p) - 1) < 1e-4 for js in probes for p in json.loads(js)["probs"])
    merges = [o["text"][0] for k, o in outputs.items() if wf[k]["class_type"] == "ContinualConcepts_MergeIntoCheckpoint"]
    galleries = [json.loads(o["text"][0]) for k, o in outputs.items()
                 if wf[k]["class_type"] == "ContinualConcepts_ConceptGallery"]
    if name == "three_concepts_chained":  # a gallery after each concept: 1, 2, then 3 concepts and the generic column
        assert sorted(len(g["concepts"]) for g in galleries) == [1, 2, 3]
        assert all(g["candidates"][0] == "generic" and len(g["candidates"]) == len(g["concepts"]) + 1 for g in galleries)
    if name == "probe_only":
        return
    ck = Path(merges[0])
    assert ck.is_file() and str(ck).startswith(str(base / "output" / "checkpoints"))
    merged, ref = load_file(ck), load_file(slim_ckpt)
    changed_rows = 0
    for k, v in ref.items():
        if k not in merged and k.endswith("text_projection.weight"):  # ComfyUI's SD1.5 save leaves it out
            continue
        if k.endswith(PROJECTIONS):  # the rows the default selects from (Q, K, V, output)
            changed_rows += int((merged[k] != v).any(1).sum())
        elif k.startswith(("model.diffusion_model.", "cond_stage_model.")) and not k.endswith("token_embedding.weight"):
            assert torch.equal(merged[k], v), f"{k} changed outside the cross-attention rows and trigger tokens"
    written = [Path(f) for k, o in outputs.items() if wf[k]["class_type"] == "ContinualConcepts_MergeIntoCheckpoint"
               for f in o["text"]]
    assert all(f.is_file() for f in written)
    assert {f.parent.relative_to(base).parts[:2] for f in written} == {
        ("output", "checkpoints"), ("output", "concept_memory"), ("models", "loras"), ("models", "embeddings")}
    mem = next(f for f in written if "concept_memory" in f.parts)
    from continual_concepts.core.memory import ContinualMemory

    concepts = ContinualMemory.load(mem).concepts
    selected = sum(c.n_rows for c in concepts)
    emb_key = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    token_rows = (merged[emb_key] != ref[emb_key]).any(1).nonzero().flatten().tolist()
    print(f"{name}: {len(concepts)} concept(s), {changed_rows} cross-attention rows changed of {selected} selected, "
          f"trigger-token rows changed {token_rows}")
    assert 0 < changed_rows <= selected
    assert len(token_rows) == len({c.trigger for c in concepts}), "each trigger's learned token is in the checkpoint"
    import comfy.sd

    m, c, v, _ = comfy.sd.load_checkpoint_guess_config(str(ck))
    assert type(m.model.model_config).__name__ == "SD15" and c is not None and v is not None


def test_concept_library_workflow_shows_then_removes_a_concept(server, tmp_path):
    """concept_library: two concepts learned, gallery + info, Remove Concept, gallery + info again, memory saved."""
    from continual_concepts.core.memory import ContinualMemory

    url, _, _ = server
    wf = small(json.loads((PACK / "workflows" / "concept_library.api.json").read_text()))
    out = queue(url, wf, tmp_path, "concept_library")
    before, after = (json.loads(out[k]["text"][0]) for k in ("42", "52"))
    assert [c["name"] for c in before["concepts"]] == ["red-ring", "blue-box"]
    assert [c["name"] for c in after["concepts"]] == ["blue-box"]
    report = json.loads(out["51"]["text"][0])
    assert report["removed"] == "red-ring" and report["rows"] > 0
    assert "red-ring" in out["41"]["text"][0] and "red-ring" not in out["54"]["text"][0] and "blue-box" in out["54"]["text"][0]
    assert "DC self-check" in out["54"]["text"][0] and out["54"]["text"][0].splitlines()[-1].rstrip().endswith("%")
    assert [c.name for c in ContinualMemory.load(out["55"]["text"][0]).concepts] == ["blue-box"]


def test_training_branch_leaves_plain_branch_unchanged(server, tmp_path):
    """One graph feeds the base model to training and to a plain sampler: the plain image equals a plain-only run."""
    url, base, _ = server
    wf = small(json.loads((PACK / "workflows" / "one_concept.api.json").read_text()))
    plain = {"81": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of a cat"}},
             "82": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["81", 0], "negative": ["81", 0],
                    "latent_image": ["93", 0], "seed": 5, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
                    "scheduler": "normal", "denoise": 1.0}},
             "83": {"class_type": "VAEDecode", "inputs": {"samples": ["82", 0], "vae": ["1", 2]}},
             "84": {"class_type": "SaveImage", "inputs": {"images": ["83", 0], "filename_prefix": "plain"}}}
    alone = {"1": wf["1"], "93": wf["93"], **plain}
    a = queue(url, alone, tmp_path, "plain_alone")["84"]["images"][0]
    b = queue(url, {**wf, **plain, "82": {**plain["82"], "inputs": {**plain["82"]["inputs"], "seed": 5}}},
              tmp_path, "plain_with_training")["84"]["images"][0]
    from PIL import Image
    import numpy as np

    ia = np.asarray(Image.open(base / "output" / a["subfolder"] / a["filename"]))
    ib = np.asarray(Image.open(base / "output" / b["subfolder"] / b["filename"]))
    assert np.array_equal(ia, ib)


def test_client_exits_1_naming_a_node_with_a_missing_input(server, tmp_path):
    """The server answers 200 with node_errors and runs the valid branch; the client must not call that success."""
    url, _, _ = server
    wf = small(json.loads((PACK / "workflows" / "probe_only.api.json").read_text()))
    broken = {k: v for k, v in wf["3"]["inputs"].items() if k != "images"}
    wf["99"] = {"class_type": "ContinualConcepts_DCScoreProbe", "inputs": broken}
    p = tmp_path / "broken.json"
    p.write_text(json.dumps(wf))
    out = subprocess.run([sys.executable, "-m", "continual_concepts", "queue", str(p), "--server", url],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 1 and out.stdout == "", out.stderr[-2000:]
    assert "error: node 99 (ContinualConcepts_DCScoreProbe): Required input is missing" in out.stderr


def test_client_waits_through_a_server_stalled_for_40_s(server, tmp_path):
    """SIGSTOP the server right after the prompt is queued, SIGCONT 40 s later: the client retries its timed-out
    requests and exits 0 with the prompt's outputs."""
    import os
    import signal

    url, _, proc = server
    wf = small(json.loads((PACK / "workflows" / "probe_only.api.json").read_text()))
    wf["3"]["inputs"].update(seed=int(time.time()) % 100000, timesteps=100)  # not cached; runs a while
    p = tmp_path / "stall.json"
    p.write_text(json.dumps(wf))
    t0 = time.time()
    client = subprocess.Popen([sys.executable, "-m", "continual_concepts", "queue", str(p), "--server", url,
                               "--http-timeout", "15"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = []
    for line in client.stderr:
        err.append(line)
        if line.startswith("queued "):
            break
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        time.sleep(40)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, rest = client.communicate(timeout=600)
    err.append(rest)
    assert client.returncode == 0, "".join(err)[-3000:]
    assert time.time() - t0 >= 40 and "retrying" in "".join(err)
    res = json.loads(out.strip().splitlines()[-1])
    assert "3" in res["outputs"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class DevTools:
    """Just enough of the Chrome DevTools Protocol: evaluate JavaScript in the page and return its value."""

    def __init__(self, ws_url):
        import websocket

        self.ws, self.n = websocket.create_connection(ws_url, timeout=120, suppress_origin=True), 0

    def eval(self, js):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": "Runtime.evaluate",
                                 "params": {"expression": js, "awaitPromise": True, "returnByValue": True}}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                res = msg["result"]
                assert "exceptionDetails" not in res, res["exceptionDetails"]
                return res["result"].get("value")


@pytest.fixture(scope="module")
def frontend(server, tmp_path_factory):
    """The real ComfyUI frontend served by the test server, open in headless Chromium."""
    if not CHROMIUM:
        pytest.skip("no chromium on PATH (Debian package 'chromium'): UI-workflow check skipped")
    url, _, _ = server
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             f"--remote-debugging-port={port}", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
                             url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        page = None
        for _ in range(60):
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2))
                page = next((t for t in targets if t["type"] == "page"), None)
                if page:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert page, "chromium did not open the page"
        tools = DevTools(page["webSocketDebuggerUrl"])
        for _ in range(120):  # the app is ready once it has a graph and has registered the backend's node types
            if tools.eval("!!(window.app && window.app.graph && window.LiteGraph && "
                          "window.LiteGraph.registered_node_types['ContinualConcepts_MergeIntoCheckpoint'])"):
                break
            time.sleep(1)
        else:
            pytest.fail("the ComfyUI frontend did not register this pack's nodes within 120 s")
        yield tools
    finally:
        proc.terminate()
        proc.wait(30)


def load_in_frontend(frontend, wf, name):
    return frontend.eval(f"""(async () => {{
        await window.app.loadGraphData({json.dumps(wf)}, true, false, "{name}",
                                       {{showMissingNodesDialog: false, showMissingModelsDialog: false}});
        const g = window.app.graph, nodes = g.nodes ?? g._nodes, reg = window.LiteGraph.registered_node_types;
        return {{types: nodes.map(n => n.type), links: Object.keys(g.links instanceof Map ? Object.fromEntries(g.links) : g.links).length,
                 missing: nodes.filter(n => !(n.type in reg) || n.has_errors).map(n => n.type),
                 widgets: Object.fromEntries(nodes.map(n => [n.id, (n.widgets ?? []).map(w => w.value)]))}};
    }})()""")


@pytest.mark.parametrize("name", ["probe_only", "one_concept", "three_concepts_chained", "concept_library"])
def test_ui_workflow_opens_in_frontend_with_no_missing_nodes(frontend, name):
    """Drag-and-drop equivalent: the frontend's own loadGraphData on the shipped UI file; every node gets its real
    type (a missing type would be a placeholder with has_errors), every link survives, every widget keeps its value."""
    wf = json.loads((PACK / "workflows" / f"{name}.json").read_text())
    got = load_in_frontend(frontend, wf, name)
    assert got["missing"] == [], f"{name}: missing node types in the frontend: {got['missing']}"
    assert sorted(got["types"]) == sorted(n["type"] for n in wf["nodes"])
    assert got["links"] == len(wf["links"])
    for n in wf["nodes"]:  # every widget value lands in the widget it was meant for (no shifted values)
        assert got["widgets"][str(n["id"])] == n["widgets_values"], (name, n["type"])


def test_frontend_check_sees_a_missing_node_type(frontend):
    """The check above can fail: a node type the server does not know is reported as missing."""
    wf = json.loads((PACK / "workflows" / "probe_only.json").read_text())
    wf["nodes"][0]["type"] = "NoSuchNodeType"
    assert load_in_frontend(frontend, wf, "broken")["missing"] == ["NoSuchNodeType"]
