"""Headless client: queue an API-format workflow on a running ComfyUI, follow it, report; the exit code means it.

    python -m continual_concepts queue WORKFLOW.api.json --server http://127.0.0.1:8188 [--timeout SECONDS]

Exit 0 only when the prompt succeeded and every output node of the workflow ran (or came from ComfyUI's cache);
1 when the server refused part of the graph (`node_errors`, even in a 200 answer), a node failed, the prompt was
interrupted, an output node did not run, or --timeout passed; 2 for a bad workflow file. A slow or stalled
server is waited for: every HTTP request is retried with backoff (the prompt id is chosen here, so a retried
POST never queues twice). Progress comes from ComfyUI's websocket (websocket-client); without it, polling."""
from __future__ import annotations

import argparse
import json
import socket
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

RETRYABLE = (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError)


class PromptFailed(RuntimeError):
    """The server refused part of the graph or a node failed: the message names the node(s)."""


def node_label(workflow: dict, node_id) -> str:
    return f"node {node_id} ({(workflow.get(str(node_id)) or {}).get('class_type', '?')})"


def answer_errors(answer: dict, workflow: dict) -> list[str]:
    """One line per refused node of a POST /prompt answer (ComfyUI lists them in 'node_errors', also in a 200
    answer when other outputs of the graph are valid and run anyway), plus the prompt-level error."""
    lines = []
    for nid, err in (answer.get("node_errors") or {}).items():
        msgs = [": ".join(x for x in (e.get("message"), e.get("details")) if x) for e in err.get("errors", [])]
        lines.append(f"{node_label(workflow, nid)}: {'; '.join(msgs) or 'refused'}")
    top = answer.get("error")
    if top and not lines:
        lines.append(top.get("message", str(top)) + (f": {top['details']}" if top.get("details") else "")
                     if isinstance(top, dict) else str(top))
    return lines


def history_errors(entry: dict, workflow: dict) -> list[str]:
    """Failed or interrupted nodes of a finished /history entry (empty when it succeeded)."""
    status = entry.get("status", {})
    lines = []
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            lines.append(f"{node_label(workflow, data.get('node_id'))}: {data.get('exception_type', 'error')}: "
                         f"{str(data.get('exception_message', '')).strip()}")
        elif kind == "execution_interrupted":
            lines.append(f"{node_label(workflow, data.get('node_id'))}: interrupted (Cancel)")
    if status.get("status_str") != "success" and not lines:
        lines.append(f"prompt ended with status '{status.get('status_str')}'")
    return lines


def outputs_not_run(entry: dict, output_nodes: set[str], seen: set[str]) -> list[str]:
    """Output nodes that neither ran (UI output in the history, or seen executing) nor came from the cache."""
    cached = {str(n) for kind, data in entry.get("status", {}).get("messages", []) if kind == "execution_cached"
              for n in data.get("nodes", [])}
    ran = set(map(str, entry.get("outputs", {}))) | cached | set(map(str, seen))
    return sorted(output_nodes - ran, key=str)


class Client:
    def __init__(self, server: str, http_timeout: float = 30.0, deadline: float | None = None, log=None):
        self.server, self.http_timeout, self.deadline = server.rstrip("/"), http_timeout, deadline
        self.log = log or (lambda s: None)

    def left(self) -> float | None:
        if self.deadline is None:
            return None
        left = self.deadline - time.time()
        if left <= 0:
            raise TimeoutError("--timeout reached before the prompt finished")
        return left

    def once(self, path: str, data: dict | None = None, patient: bool = False):
        """One request; a patient one waits for its answer as long as the deadline allows (None: for ever)."""
        left = self.left()
        timeout = left if patient else self.http_timeout if left is None else min(self.http_timeout, left)
        req = urllib.request.Request(self.server + path, data=json.dumps(data).encode() if data is not None else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def call(self, path: str, data: dict | None = None):
        """A request retried with backoff (1, 2, 4 … 30 s) through timeouts, refused connections and 5xx answers,
        until the deadline. A POST is patient instead of timing out: resending a prompt the server got but has
        not answered yet (a stalled server) would queue it twice."""
        wait = 1.0
        while True:
            try:
                return self.once(path, data, patient=data is not None)
            except urllib.error.HTTPError as e:
                if e.code < 500:
                    raise
                why = f"HTTP {e.code}"
            except RETRYABLE as e:
                why = str(getattr(e, "reason", e)) or type(e).__name__
            self.log(f"server slow or unreachable on {path} ({why}); retrying in {wait:.0f} s")
            left = self.left()
            time.sleep(wait if left is None else min(wait, left))
            wait = min(30.0, wait * 2)

    def queue(self, workflow: dict, client_id: str, prompt_id: str) -> None:
        try:
            answer = self.call("/prompt", {"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id})
        except urllib.error.HTTPError as e:
            try:
                answer = json.loads(e.read() or b"{}")
            except json.JSONDecodeError:
                answer = {"error": f"HTTP {e.code}"}
            raise PromptFailed("\n".join(answer_errors(answer, workflow)) or f"HTTP {e.code}") from None
        errs = answer_errors(answer or {}, workflow)
        if errs:
            raise PromptFailed("\n".join(errs) + "\n(the server runs the rest of the graph; this prompt is not a success)")

    def output_nodes(self, workflow: dict) -> set[str]:
        info = {}
        for cls in {n["class_type"] for n in workflow.values()}:
            info[cls] = (self.call(f"/object_info/{urllib.request.quote(cls)}") or {}).get(cls, {})
        return {k for k, n in workflow.items() if info[n["class_type"]].get("output_node")}

    def history(self, prompt_id: str) -> dict | None:
        return (self.call(f"/history/{prompt_id}") or {}).get(prompt_id)


def connect(server: str, client_id: str):
    """The progress websocket, opened before queueing so no message is missed; None when it cannot be had."""
    try:
        import websocket

        return websocket.create_connection(server.replace("http", "ws", 1).rstrip("/") + f"/ws?clientId={client_id}",
                                           timeout=10)
    except Exception:
        return None


def follow(client: Client, prompt_id: str, ws, log, node_seconds: dict, seen: set) -> dict:
    """Wait for the prompt's /history entry (websocket progress while it lasts, then polling). node_seconds gets
    each executed node's wall time from the 'executing' messages, seen every node seen executing. Closes ws."""
    current, started = None, 0.0

    def switch(node):
        nonlocal current, started
        now = time.perf_counter()
        if current is not None:
            node_seconds[current] = node_seconds.get(current, 0.0) + now - started
        current, started = node, now
        if node is not None:
            seen.add(str(node))

    try:
        done = False
        while True:
            client.left()
            msg = None
            if ws is not None and not done:
                try:
                    msg = ws.recv()
                except Exception as e:  # a timeout: poll once; a closed socket: poll from now on
                    if not isinstance(e, (TimeoutError, socket.timeout)) and "Timeout" not in type(e).__name__:
                        ws = None
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
                        m["type"] == "executing" and d.get("node") is None and d.get("prompt_id") == prompt_id):
                    switch(None)
                    done = True
                continue
            if msg is not None:  # binary previews: keep reading
                continue
            entry = client.history(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                switch(None)
                return entry
    finally:
        if ws is not None:
            ws.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m continual_concepts queue", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workflow")
    ap.add_argument("--server", default="http://127.0.0.1:8188")
    ap.add_argument("--timeout", type=float, default=None, help="seconds for the whole prompt (default: no limit)")
    ap.add_argument("--http-timeout", type=float, default=30.0, help="seconds per HTTP request before a retry")
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

    def log(s):
        print(s, file=sys.stderr)

    client = Client(a.server, a.http_timeout, time.time() + a.timeout if a.timeout else None, log)
    cid, pid = uuid.uuid4().hex, str(uuid.uuid4())
    secs: dict[str, float] = {}
    seen: set[str] = set()
    ws = connect(a.server, cid)
    try:
        outputs = client.output_nodes(wf)
        client.queue(wf, cid, pid)
        log(f"queued {path.name} as {pid}")
        entry = follow(client, pid, ws, log, secs, seen)
        errs = history_errors(entry, wf) or [f"{node_label(wf, n)}: output node did not run"
                                             for n in outputs_not_run(entry, outputs, seen)]
        if errs:
            raise PromptFailed("\n".join(errs))
    except (OSError, PromptFailed, TimeoutError, urllib.error.HTTPError) as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 1
    timing = {k: {"class_type": wf[k]["class_type"], "seconds": round(v, 3)} for k, v in secs.items() if k in wf}
    for k, t in timing.items():
        log(f"node {k} ({t['class_type']}): {t['seconds']:.2f} s")
    print(json.dumps({"prompt_id": pid, "outputs": entry.get("outputs", {}), "node_seconds": timing}))
    return 0
