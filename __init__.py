"""Continual Concepts: ComfyUI entry point. Imports nothing heavy: the nodes load only when ComfyUI asks."""

WEB_DIRECTORY = None


async def comfy_entrypoint():
    """ComfyUI V3 entry: build the extension lazily so importing this package never needs ComfyUI."""
    from .nodes.extension import ContinualConceptsExtension

    return ContinualConceptsExtension()
