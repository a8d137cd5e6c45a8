"""Headless client: queue an API-format workflow on a running ComfyUI, follow it, report, exit non-zero on failure.

    python -m continual_concepts queue WORKFLOW.api.json --server http://127.0.0.1:8188
Progress comes from ComfyUI's websocket (websocket-client); without it the client polls /history."""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path


def _http(server: str, path: str, data: dict | None = None, timeout: float = 30):
    req = urllib.request.Request(server.rstrip("/") + path, data=json.dumps(data).encode() if data is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def queue_prompt(server: str, workflow: dict, client_id: str) -> str:
    try:
        return _http(server, "/prompt", {"prompt": workflow, "client_id": client_id})["prompt_id"]
    except urllib.error.HTTPError as e:
        body = json.loads(e.read() or b"{}")
        errs = "; ".join(f"node {k} ({v.get('class_type')}): " + ", ".join(x.get("details") or x.get("message", "") for x in v.get("errors", []))
                         for k, v in (body.get("node_errors") or {}).items())
        raise RuntimeError(f"rejected: {body.get('error', {}).get('message', e)}{' — ' + errs if errs else ''}") from None


def connect(server: str, client_id: str):
    """The progress websocket, opened before queueing so no message is missed; None when it cannot be had."""
    try:
        import websocket

        return websocket.create_connection(server.replace("http", "ws", 1).rstrip("/") + f"/ws?clientId={client_id}",
                                           timeout=10)
    except Exception:
        return None


def follow(server: str, prompt_id: str, ws, timeout: float, log, node_seconds: dict | None = None) -> dict:
    """Wait for the prompt to finish (websocket progress when ws is open, else polling); returns its /history entry.
    node_seconds, when given, receives each executed node's wall time (from the websocket's 'executing' messages;
    cached nodes do not run and are absent). Closes ws."""
    deadline = time.time() + timeout
    current, started = None, 0.0

    def switch(node):
        nonlocal current, started
        now = time.perf_counter()
        if current is not None and node_seconds is not None:
            node_seconds[current] = node_seconds.get(current, 0.0) + now - started
        current, started = node, now

    try:
        while time.time() < deadline:
            msg = None
            if ws is not None:
                try:
                    msg = ws.recv()
                except Exception:  # timeout or closed: poll the history instead
                    msg = None
            else:
                time.sleep(0.5)
            if isinstance(msg, str):
                m = json.loads(msg)
                d = m.get("data", {})
                if d.get("prompt_id") not in (None, prompt_id):
                    continue
                if m["type"] == "progress":
                    log(f"  node {d.get('node')}: {d.get('value')}/{d.get('max')}")
                elif m["type"] == "executing" and d.get("node"):
                    switch(d["node"])
                    log(f"running node {d['node']}")
                elif m["type"] in ("execution_error", "execution_interrupted", "execution_success") or (
                        m["type"] == "executing" and d.get("node") is None):
                    switch(None)
                    break
                continue
            if msg is not None:  # binary previews: keep reading
                continue
            hist = _http(server, f"/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("status_str") in ("success", "error"):
                return hist[prompt_id]
        for _ in range(50):  # the history entry lands just after the last message
            hist = _http(server, f"/history/{prompt_id}")
            if prompt_id in hist:
                return hist[prompt_id]
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
    finally:
        if ws is not None:
            ws.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m continual_concepts queue", description=__doc__)
    ap.add_argument("workflow")
    ap.add_argument("--server", default="http://127.0.0.1:8188")
    ap.add_argument("--timeout", type=float, default=3600)
    a = ap.parse_args(argv)
    path = Path(a.workflow)
    try:
        wf = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"error: workflow {path}: {e}", file=sys.stderr)
        return 2
    if not isinstance(wf, dict) or not all(isinstance(v, dict) and "class_type" in v for v in wf.values()):
        print(f"error: workflow {path} is not in API format (export it with 'Export (API)')", file=sys.stderr)
        return 2
    cid = uuid.uuid4().hex

    def log(s):
        print(s, file=sys.stderr)

    ws = connect(a.server, cid)
    try:
        pid = queue_prompt(a.server, wf, cid)
        log(f"queued {path.name} as {pid}")
        secs: dict[str, float] = {}
        hist = follow(a.server, pid, ws, a.timeout, log, secs)
    except (OSError, RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    status = hist.get("status", {})
    if status.get("status_str") != "success":
        errs = [m[1] for m in status.get("messages", []) if m[0] == "execution_error"]
        for e in errs:
            print(f"error: node {e.get('node_id')} ({e.get('node_type')}): {e.get('exception_message', '').strip()}", file=sys.stderr)
        return 1
    timing = {k: {"class_type": wf[k]["class_type"], "seconds": round(v, 3)} for k, v in secs.items() if k in wf}
    for k, t in timing.items():
        log(f"node {k} ({t['class_type']}): {t['seconds']:.2f} s")
    print(json.dumps({"prompt_id": pid, "outputs": hist.get("outputs", {}), "node_seconds": timing}))
    return 0
