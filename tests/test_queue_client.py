"""The queue client's exit code means something: a fake ComfyUI on 127.0.0.1 answers as the real one does."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from continual_concepts.core.queue_client import answer_errors, history_errors, main, outputs_not_run

WF = {"1": {"class_type": "Loader", "inputs": {}}, "2": {"class_type": "Saver", "inputs": {"x": ["1", 0]}},
      "3": {"class_type": "Saver", "inputs": {}}}


def entry(status="success", outputs=("2", "3"), messages=()):
    return {"status": {"status_str": status, "completed": status == "success", "messages": list(messages)},
            "outputs": {k: {"text": ["ok"]} for k in outputs}}


class Fake:
    """Behaviour knobs: the /prompt answer, the history entry, and seconds to stall the first /history calls."""

    def __init__(self, answer=None, hist=None, stall=0.0, stalls=1):
        self.answer, self.hist, self.stall, self.stalls, self.posts, self.pid = answer, hist, stall, stalls, 0, None

    def __enter__(self):
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.startswith("/object_info/"):
                    cls = self.path.rsplit("/", 1)[1]
                    return self.reply(200, {cls: {"output_node": cls == "Saver"}})
                if self.path.startswith("/history/"):
                    if fake.stalls > 0 and fake.stall:
                        fake.stalls -= 1
                        time.sleep(fake.stall)
                    return self.reply(200, {fake.pid: fake.hist} if fake.hist else {})
                self.reply(404, {})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.pid, fake.posts = body["prompt_id"], fake.posts + 1
                code, ans = fake.answer or (200, {"prompt_id": fake.pid, "number": 1, "node_errors": {}})
                self.reply(code, ans)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        return self

    def __exit__(self, *a):
        self.httpd.shutdown()
        self.httpd.server_close()


def run(fake, tmp_path, *extra):
    p = tmp_path / "wf.json"
    p.write_text(json.dumps(WF))
    return main([str(p), "--server", fake.url, "--http-timeout", "0.5", *extra])


def test_success_only_when_every_output_node_ran(tmp_path, capsys):
    with Fake(hist=entry()) as f:
        assert run(f, tmp_path) == 0
    assert json.loads(capsys.readouterr().out)["prompt_id"] == f.pid
    with Fake(hist=entry(outputs=("2",))) as f:
        assert run(f, tmp_path) == 1
    assert "node 3 (Saver): output node did not run" in capsys.readouterr().err
    cached = entry(outputs=("2",), messages=[("execution_cached", {"nodes": ["3"]})])
    with Fake(hist=cached) as f:
        assert run(f, tmp_path) == 0


def test_node_errors_in_a_200_answer_exit_1_naming_the_node(tmp_path, capsys):
    bad = {"3": {"class_type": "Saver", "errors": [{"message": "Required input is missing", "details": "images"}]}}
    with Fake(answer=(200, {"prompt_id": "x", "number": 1, "node_errors": bad}), hist=entry()) as f:
        assert run(f, tmp_path) == 1
    err = capsys.readouterr().err
    assert "node 3 (Saver): Required input is missing: images" in err


def test_refused_prompt_and_failed_node_exit_1(tmp_path, capsys):
    with Fake(answer=(400, {"error": {"message": "Prompt outputs failed validation"}, "node_errors": {}})) as f:
        assert run(f, tmp_path) == 1
    assert "Prompt outputs failed validation" in capsys.readouterr().err
    failed = entry("error", outputs=(), messages=[("execution_error", {"node_id": "2", "node_type": "Saver",
                   "exception_type": "ValueError", "exception_message": "images: empty"})])
    with Fake(hist=failed) as f:
        assert run(f, tmp_path) == 1
    assert "node 2 (Saver): ValueError: images: empty" in capsys.readouterr().err


def test_a_stalled_server_is_waited_for_and_posted_once(tmp_path, capsys):
    with Fake(hist=entry(), stall=2.0, stalls=2) as f:
        assert run(f, tmp_path) == 0
        assert f.posts == 1
    assert "retrying" in capsys.readouterr().err


def test_whole_prompt_timeout_exits_1(tmp_path, capsys):
    with Fake(hist=None) as f:
        t0 = time.time()
        assert run(f, tmp_path, "--timeout", "2") == 1
        assert time.time() - t0 < 10
    assert "--timeout" in capsys.readouterr().err


@pytest.mark.parametrize("answer,lines", [({"node_errors": {}}, []), ({"error": "boom", "node_errors": {}}, ["boom"])])
def test_answer_errors_pure(answer, lines):
    assert answer_errors(answer, WF) == lines


def test_history_and_outputs_pure():
    assert history_errors(entry(), WF) == []
    assert history_errors(entry("error", messages=[("execution_interrupted", {"node_id": "2"})]), WF) == \
        ["node 2 (Saver): interrupted (Cancel)"]
    assert outputs_not_run(entry(outputs=()), {"2", "3"}, {"3"}) == ["2"]
