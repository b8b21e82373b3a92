"""Detection results, in the manner of Roboflow supervision's ``Detections``.

Boxes are ``xyxy`` in original-image pixels (not the network's letterboxed input), so a caller can crop
the frame it passed in without knowing how the detector resized it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """``n`` detections: ``xyxy`` float32 (n, 4), ``confidence`` float32 (n,), ``class_id`` int32 (n,)."""

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray

    def __post_init__(self) -> None:
        # Coerce dtypes once here so every consumer can rely on them (faiss, JSON, cv2 all care).
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32)
        self.confidence = np.asarray(self.confidence, dtype=np.float32)
        class_id = np.asarray(self.class_id)
        if class_id.size and not np.issubdtype(class_id.dtype, np.integer):
            raise ValueError(f"Detections.class_id must hold integers, got dtype {class_id.dtype}")
        self.class_id = class_id.astype(np.int32, copy=False)

        if self.xyxy.ndim != 2 or self.xyxy.shape[1] != 4:
            raise ValueError(f"Detections.xyxy must have shape (n, 4), got {self.xyxy.shape}")
        n = self.xyxy.shape[0]
        if self.confidence.shape != (n,):
            raise ValueError(f"Detections.confidence must have shape ({n},) to match xyxy, got {self.confidence.shape}")
        if self.class_id.shape != (n,):
            raise ValueError(f"Detections.class_id must have shape ({n},) to match xyxy, got {self.class_id.shape}")

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            xyxy=np.zeros((0, 4), dtype=np.float32),
            confidence=np.zeros((0,), dtype=np.float32),
            class_id=np.zeros((0,), dtype=np.int32),
        )

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def __getitem__(self, index: int | slice | np.ndarray | list[int] | list[bool]) -> Detections:
        """Select by boolean mask, index array, slice or single int; always returns ``Detections``."""
        if isinstance(index, (int, np.integer)):
            # Keep the result a (1, 4) Detections rather than a bare row, as supervision does.
            index = [int(index)]
        if not isinstance(index, slice):
            index = np.asarray(index)
            if index.dtype == bool and index.shape != (len(self),):
                raise IndexError(f"boolean mask must have shape ({len(self)},), got {index.shape}")
            if index.size == 0:
                index = index.astype(np.intp)
        return Detections(xyxy=self.xyxy[index], confidence=self.confidence[index], class_id=self.class_id[index])
