"""Image embeddings: ``Embedder(EmbeddingSpec(model, layers, pool, normalize))``.

The default is a model's own embedding (the input of its classifier); named layers are read
with FX feature extraction, pooled (avg / max / GeM), L2-normalized and concatenated. Every
engine backend runs them (``eager``, ``bf16``, ``onnx``, ``int8``...).
"""

from vitrina.embed.core import (
    Embedder,
    EmbeddingSpec,
    EmbedResult,
    embed_paths,
    list_layers,
    load_source,
)
from vitrina.embed.layers import POOLS, LayerEmbedding, layer_shapes, pool_features

__all__ = [
    "POOLS",
    "EmbedResult",
    "Embedder",
    "EmbeddingSpec",
    "LayerEmbedding",
    "embed_paths",
    "layer_shapes",
    "list_layers",
    "load_source",
    "pool_features",
]
