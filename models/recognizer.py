"""Embed object crops with an ONNX recognizer: preprocess, run in chunks, L2-normalise.

Unlike PP-ShiTu, which embeds one crop at a time, crops are batched (up to ``max_batch`` per run):
the converted EfficientNet-Lite0 has a dynamic batch dimension.

A model folder whose ``source.json`` has a ``colour`` object (``efficientnet_lite0_mlc``) makes embeddings of
the network's output fused with the crop's colour layout (models/colour_features.py): that is part of the
model, as its weights are, so it is read from the folder (``colour_spec``) and is part of its identity.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.colour_features import ColourSpec, colour_histograms, fuse
from models.errors import ModelError
from models.preprocess_rec import build_rec_preprocess, preprocess_batch
from models.runtime import RuntimeOptions, open_model

EMBEDDING_OUTPUT = "embedding"


class Recognizer:
    def __init__(
        self,
        model_path: Path,
        transform_ops: Sequence[Mapping[str, Any]],
        *,
        runtime: RuntimeOptions = RuntimeOptions(),
        max_batch: int = 32,
        identity: str | None = None,
        colour: ColourSpec | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model_path = Path(model_path)
        self.max_batch = max_batch
        # What made the embeddings, as galleries record it (``recognizer_identity``); None: unknown.
        self.identity = identity
        self.colour = colour
        self._pipeline = build_rec_preprocess(list(transform_ops))
        self._model = open_model(self.model_path, runtime)
        inputs = self._model.inputs
        if len(inputs) != 1:
            raise ModelError(f"{self.model_path}: a recognizer takes one input, this model has {len(inputs)}")
        self._input_name = inputs[0].name
        outputs = self._model.outputs
        # The converted model also outputs classifier logits; the embedding is what galleries store.
        chosen = next((o for o in outputs if o.name == EMBEDDING_OUTPUT), outputs[0])
        self._output_name = chosen.name
        shape = chosen.shape
        if len(shape) != 2 or not isinstance(shape[1], int) or shape[1] <= 0:
            raise ModelError(f"{self.model_path}: output {chosen.name} has shape {shape}; expected (N, D) with a fixed D")
        self.embedding_size: int = shape[1] + (colour.length if colour is not None else 0)
        batch_dim = inputs[0].shape[0] if inputs[0].shape else None
        # A model exported with a fixed batch (Paddle exports often fix it at 1) runs in chunks of that size.
        self._fixed_batch = batch_dim if isinstance(batch_dim, int) else None

    def embed(self, crops_rgb: Sequence[np.ndarray]) -> np.ndarray:
        """(n, D) float32, each row L2-normalised; n = 0 gives (0, D)."""
        if len(crops_rgb) == 0:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        chunk = self._fixed_batch or self.max_batch
        parts = []
        for start in range(0, len(crops_rgb), chunk):
            batch = preprocess_batch(crops_rgb[start : start + chunk], self._pipeline)
            n = len(batch)
            if self._fixed_batch is not None and n < self._fixed_batch:
                # A graph with a fixed batch size needs a full batch: pad with zeros, drop their rows.
                pad = np.zeros((self._fixed_batch - n, *batch.shape[1:]), dtype=np.float32)
                batch = np.concatenate([batch, pad])
            (features,) = self._model.run({self._input_name: batch}, [self._output_name])
            parts.append(np.asarray(features, dtype=np.float32)[:n].reshape(n, -1))
        features = np.concatenate(parts)
        network_size = self.embedding_size - (self.colour.length if self.colour is not None else 0)
        if features.shape[1] != network_size:
            raise ModelError(f"{self.model_path}: produced {features.shape[1]}-d features, declared {network_size}")
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        # An all-zero feature (e.g. a blank crop through ReLU) stays zero rather than becoming NaN.
        features = (features / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
        if self.colour is None:
            return features
        return fuse(features, colour_histograms(crops_rgb, self.colour), self.colour.weight)


def _source_json(model_dir: Path) -> dict[str, Any] | None:
    try:
        source = json.loads((Path(model_dir) / "source.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return source if isinstance(source, dict) else None


def colour_spec(model_dir: Path) -> ColourSpec | None:
    """The colour descriptor a model folder's embeddings include (``source.json``'s ``colour``), or None.
    A malformed one is a ModelError naming the folder: never silently an embedding without it."""
    source = _source_json(model_dir)
    if source is None or "colour" not in source:
        return None
    try:
        return ColourSpec.from_json(source["colour"])
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{Path(model_dir) / 'source.json'}: {exc}") from None


def recognizer_identity(model_dir: Path) -> str:
    """A recognizer's identity for galleries: the model folder's name, plus the embedding its source.json
    records (models/export/efficientnet_lite.py writes one; a Lite0 folder converted before it did is the
    ``avg`` embedding). It names the model, not a file: the fp32 and int8 files of one folder make
    comparable embeddings and share it."""
    model_dir = Path(model_dir)
    source = _source_json(model_dir)
    if source is None:
        return model_dir.name
    embedding = source.get("embedding")
    if embedding is None and source.get("converter") == "models.export.efficientnet_lite":
        from models.export.efficientnet_lite import embedding_id

        embedding = embedding_id("avg")
    if not isinstance(embedding, str):
        return model_dir.name
    colour = colour_spec(model_dir)
    return f"{model_dir.name}: {embedding}" + (f" + {colour.describe()}" if colour is not None else "")
