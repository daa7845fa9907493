"""Tied word embeddings: which delta a base's output head takes when the head is, or was, the embedding matrix.

A model with `tie_word_embeddings` stores no `lm_head.weight`; its output head *is* `embed_tokens`. A vector
extracted from such donors therefore has no `lm_head.weight` entry, and its `embed_tokens` delta moved the
donors' head as well. The rules, the same for `apply`, `check`, the vLLM loader and LoRA export:

| donors (vector)            | base    | what happens                                                             |
|----------------------------|---------|--------------------------------------------------------------------------|
| tied (no `lm_head` entry)  | tied    | the embedding delta is added once; the head follows, being the same matrix |
| tied (no `lm_head` entry)  | untied  | the embedding delta is added to `embed_tokens` and to `lm_head`, as in the donors |
| untied, head unchanged     | tied    | the embedding delta is added; the tied head follows it (it cannot stay put) |
| untied, head changed       | tied    | refused: the base has no separate head to take the head's own delta       |
| untied                     | untied  | each tensor takes its own delta                                          |
"""

from __future__ import annotations

from .vector import Vector

HEAD = "lm_head.weight"
EMBEDDING = "model.embed_tokens.weight"


def delta_source(vector: Vector, name: str) -> str | None:
    """The vector tensor whose delta the base tensor `name` receives, or None when it receives none.

    Every tensor takes its own delta, except an output head (`lm_head.weight`) that the base stores but the
    vector's donors did not: their head was their embedding, so it takes the embedding's delta.

    Example:
        >>> delta_source(Vector.open("tied-vec"), "lm_head.weight")
        'model.embed_tokens.weight'
    """
    entry = vector.entries.get(name)
    if entry is not None:
        return name if entry.encoding != "zero" else None
    if name == HEAD:
        embedding = vector.entries.get(EMBEDDING)
        if embedding is not None and embedding.encoding != "zero":
            return EMBEDDING
    return None


def missing_tensor_problem(name: str, base_tensors: dict) -> str:
    """The compatibility problem for a changed vector tensor the base does not store."""
    if name == HEAD and EMBEDDING in base_tensors:
        return (
            f"tensor {HEAD}: the vector changes the output head on its own, but the base ties it to {EMBEDDING} "
            "(tie_word_embeddings), so one matrix cannot take both deltas; apply it to an untied copy of the base "
            "(load it, set config.tie_word_embeddings = False, give lm_head its own copy of the weights, save)"
        )
    return f"tensor {name}: in the vector, missing from the base"
