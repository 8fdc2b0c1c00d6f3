"""Zero-shot analyses of embeddings: retrieval, semantic search, saliency, PCA maps, probes, stability.

The names below are the entry points the ``ctfm`` commands call, and the classes a user builds or reads; each loads
its module on first use, so ``import ctfm.analysis`` stays light. Pictures are drawn by :mod:`ctfm.plotting`, the
one module that imports matplotlib.
"""

from __future__ import annotations

from typing import Any

from ctfm.lazy import lazy_attribute, lazy_dir

_LAZY = {
    "BenchmarkSettings": "ctfm.analysis.encoder_benchmark",
    "compare_encoders": "ctfm.analysis.encoder_benchmark",
    "LesionCrop": "ctfm.transforms.lesion_crop",
    "lesion_crop": "ctfm.analysis.lesions",
    "extract_lesion_features": "ctfm.analysis.lesion_features",
    "read_lesions": "ctfm.analysis.lesion_features",
    "search_table": "ctfm.analysis.neighbours",
    "read_features": "ctfm.analysis.probe",
    "run_probe": "ctfm.analysis.probe",
    "Prototypes": "ctfm.analysis.prototypes",
    "compute_prototypes": "ctfm.analysis.prototypes",
    "PostProcessing": "ctfm.analysis.pseudo_labels",
    "pseudo_label": "ctfm.analysis.pseudo_labels",
    "QueryVector": "ctfm.analysis.query_vectors",
    "read_query": "ctfm.analysis.query_vectors",
    "save_query_vector": "ctfm.analysis.query_vectors",
    "run_retrieval_eval": "ctfm.analysis.retrieval_eval",
    "run_scan_retrieval_eval": "ctfm.analysis.retrieval_eval",
    "point_query": "ctfm.analysis.semantic_search",
    "run_semantic_search": "ctfm.analysis.semantic_search",
    "TargetCache": "ctfm.analysis.tiles",
    "sample_to_folder": "ctfm.analysis.diffusion",
    "saliency_picture": "ctfm.analysis.pictures",
    "pca_picture": "ctfm.analysis.pictures",
    "tsne_picture": "ctfm.analysis.pictures",
    "stability_picture": "ctfm.analysis.pictures",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name)


def __dir__() -> list[str]:
    return lazy_dir(__name__, _LAZY)
