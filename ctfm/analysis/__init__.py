"""Zero-shot analyses of embeddings: retrieval, semantic search, saliency, PCA maps, probes, stability.

Pictures are drawn by :mod:`ctfm.plotting`, the one module that imports matplotlib.
"""
