"""Regenerate the drag-and-drop (UI format) workflows from the API-format ones.

    python workflows/api_to_ui.py http://127.0.0.1:8188     # a ComfyUI running with this pack
Widget order and output types come from the server's /object_info, so widgets_values match the frontend."""
from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def convert(api: dict, info: dict) -> dict:
    ids = {k: i + 1 for i, k in enumerate(api)}
    nodes, links = [], []
    out_links: dict[tuple[int, int], list[int]] = {}
    order = {k: i for i, k in enumerate(api)}
    for k, node in api.items():
        spec = info[node["class_type"]]
        req, opt = spec["input"].get("required", {}), spec["input"].get("optional", {})
        names = spec.get("input_order", {}).get("required", list(req)) + spec.get("input_order", {}).get("optional", list(opt))
        inputs, widgets = [], []
        for name in names:
            t, opts = (req.get(name) or opt.get(name))[0], ((req.get(name) or opt.get(name)) + [{}])[1]
            is_widget = isinstance(t, list) or t in WIDGET_TYPES
            v = node["inputs"].get(name)
            if is_widget and not isinstance(v, list):
                widgets.append(v if v is not None else opts.get("default"))
                # the frontend gives seeds (and any input marked so) a second "control after generate" widget
                if opts.get("control_after_generate", t == "INT" and name in ("seed", "noise_seed")):
                    widgets.append("fixed")
            elif not is_widget:
                link = None
                if isinstance(v, list):
                    link = len(links) + 1
                    src = (ids[v[0]], v[1])
                    links.append([link, src[0], src[1], ids[k], len(inputs), t])
                    out_links.setdefault(src, []).append(link)
                inputs.append({"name": name, "type": t, "link": link})
        nodes.append({"id": ids[k], "type": node["class_type"], "pos": [40 + 320 * (order[k] % 6), 60 + 260 * (order[k] // 6)],
                      "size": [300, 200], "flags": {}, "order": order[k], "mode": 0, "inputs": inputs,
                      "outputs": [{"name": n, "type": t, "links": [], "slot_index": i}
                                  for i, (t, n) in enumerate(zip(spec["output"], spec.get("output_name", spec["output"])))],
                      "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets})
    for n in nodes:
        for o in n["outputs"]:
            o["links"] = out_links.get((n["id"], o["slot_index"]), [])
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {}, "version": 0.4}


def main(server: str) -> int:
    info = json.load(urllib.request.urlopen(server.rstrip("/") + "/object_info"))
    for p in sorted(Path(__file__).parent.glob("*.api.json")):
        out = p.with_name(p.name.replace(".api.json", ".json"))
        out.write_text(json.dumps(convert(json.loads(p.read_text()), info), indent=1))
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188"))
