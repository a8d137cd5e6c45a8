"""Every filename prefix lands inside its node's own folder; empty or '.' takes the node's default name."""
import pytest

from conftest import run_node as run
from conftest import run_node_ui

pytest.importorskip("comfy_api")


@pytest.mark.parametrize("prefix,rel", [("", "memory_00001"), (".", "memory_00001"), ("runs/x", "runs/x_00001"),
                                        ("runs\\x", "runs/x_00001"), ("runs/", "runs/memory_00001")])
def test_save_memory_stays_in_concept_memory(trained, comfy_dirs, prefix, rel):
    from continual_concepts.nodes.memory_nodes import SaveConceptMemory

    path = run(SaveConceptMemory, memory=trained["mem"], filename_prefix=prefix)[0]
    assert path == str(comfy_dirs / "output" / "concept_memory" / f"{rel}.safetensors")


@pytest.mark.parametrize("prefix", ["..", "../x", "/tmp/x", "C:\\x", "D:x", "a/../../x"])
def test_escaping_prefixes_are_refused_and_nothing_is_written(trained, comfy_dirs, prefix):
    from continual_concepts.nodes.memory_nodes import SaveConceptMemory
    from continual_concepts.nodes.merge_node import MergeIntoCheckpoint

    with pytest.raises(ValueError, match="filename_prefix"):
        run(SaveConceptMemory, memory=trained["mem"], filename_prefix=prefix)
    with pytest.raises(ValueError, match="filename_prefix"):
        run(MergeIntoCheckpoint, model=trained["m2"], clip=trained["c2"], vae=trained["vae"], memory=trained["mem"],
            filename_prefix=prefix)
    assert [p for p in comfy_dirs.rglob("*") if p.is_file()] == []


def test_merge_with_an_empty_prefix_uses_its_default_name_in_each_folder(trained, comfy_dirs):
    from continual_concepts.nodes.merge_node import MergeIntoCheckpoint

    res = run_node_ui(MergeIntoCheckpoint, model=trained["m2"], clip=trained["c2"], vae=trained["vae"],
                                      memory=trained["mem"], filename_prefix="")
    assert res.ui["text"] == [str(comfy_dirs / p) for p in (
        "output/checkpoints/merged_00001.safetensors", "output/concept_memory/merged_00001.safetensors",
        "models/loras/merged_00001.a.safetensors", "models/embeddings/merged_00001.sks.safetensors")]
