"""t-SNE map of scan embeddings (scikit-learn), for a picture coloured by a label column."""

from __future__ import annotations

import numpy as np
from sklearn.manifold import TSNE


def tsne_map(embeddings: np.ndarray, *, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE coordinates of ``(rows, dim)`` embeddings under cosine distance; perplexity capped below rows."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if len(embeddings) < 3:
        raise ValueError(f"t-SNE needs at least 3 embeddings, got {len(embeddings)}")
    perplexity = min(perplexity, (len(embeddings) - 1) / 3)
    return TSNE(2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed).fit_transform(embeddings)
