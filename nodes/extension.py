"""Registers the pack's nodes with ComfyUI (V3 extension; loaded lazily from the pack's comfy_entrypoint)."""
from comfy_api.latest import ComfyExtension, io

from .apply_node import ApplyConceptMemory
from .gallery_node import ConceptGallery
from .info_node import ConceptMemoryInfo
from .memory_nodes import LoadConceptImages, LoadConceptMemory, SaveConceptMemory
from .merge_node import MergeIntoCheckpoint
from .probe_node import DCScoreProbe
from .remove_node import RemoveConcept
from .select_node import SelectConceptNeurons
from .train_node import ContinualTrainStep

NODES = [LoadConceptImages, SelectConceptNeurons, ContinualTrainStep, DCScoreProbe, MergeIntoCheckpoint,
         LoadConceptMemory, SaveConceptMemory, ApplyConceptMemory, RemoveConcept, ConceptMemoryInfo, ConceptGallery]


class ContinualConceptsExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES
