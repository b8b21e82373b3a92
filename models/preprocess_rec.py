"""Recognizer preprocessing as PP-ShiTu's ``RecPreProcess.transform_ops`` spells it.

A config is a list of one-key dicts, ``[{"ResizeImage": {"size": 224}}, {"NormalizeImage": {...}},
{"ToCHWImage": None}]``. Each op is validated once, when the pipeline is built, so a typo in a config
fails at start-up with a ValueError naming the op and what it accepts, not on the first frame.
Images enter as RGB uint8 HxWx3 and leave as float32 CHW.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

Op = Callable[[np.ndarray], np.ndarray]

_INTERPOLATIONS: dict[str, int] = {
    "NEAREST": cv2.INTER_NEAREST,
    "LINEAR": cv2.INTER_LINEAR,
    "BILINEAR": cv2.INTER_LINEAR,
    "CUBIC": cv2.INTER_CUBIC,
    "BICUBIC": cv2.INTER_CUBIC,
    "AREA": cv2.INTER_AREA,
    "LANCZOS": cv2.INTER_LANCZOS4,
    "LANCZOS4": cv2.INTER_LANCZOS4,
}
_NUMBER = r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*"
_SCALE_RE = re.compile(rf"^({_NUMBER})(?:/({_NUMBER}))?$")


def parse_scale(value: Any, *, op: str = "NormalizeImage") -> float:
    """A number, or a string ``"a"`` / ``"a/b"`` as PaddleClas configs write it (``"1.0/255.0"``); no eval."""
    if isinstance(value, bool):
        raise ValueError(f"{op}: scale must be a number or a string like '1.0/255.0', got {value!r}")
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):
        match = _SCALE_RE.match(value)
        if match is None:
            raise ValueError(f"{op}: scale {value!r} is not a number or 'a/b' (for example '1.0/255.0')")
        numerator = float(match.group(1))
        denominator = float(match.group(2)) if match.group(2) is not None else 1.0
        if denominator == 0:
            raise ValueError(f"{op}: scale {value!r} divides by zero")
        result = numerator / denominator
    else:
        raise ValueError(f"{op}: scale must be a number or a string like '1.0/255.0', got {type(value).__name__}")
    if not np.isfinite(result) or result <= 0:
        raise ValueError(f"{op}: scale must be a positive finite number, got {value!r}")
    return result


def _size_pair(value: Any, *, op: str, arg: str) -> tuple[int, int]:
    """``int`` → (s, s); ``[w, h]`` → (w, h); both positive."""
    if isinstance(value, bool):
        raise ValueError(f"{op}: {arg} must be a positive int or [w, h], got {value!r}")
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{op}: {arg} must be a positive int or [w, h], got {value!r}")
    if min(pair) <= 0:
        raise ValueError(f"{op}: {arg} must be positive, got {value!r}")
    return pair


def _check_args(op: str, args: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise ValueError(f"{op}: unknown argument(s) {unknown}; allowed: {sorted(allowed)}")


def _require_default(op: str, args: Mapping[str, Any], arg: str, value: Any) -> None:
    if arg in args and args[arg] is not None and args[arg] != value:
        raise ValueError(f"{op}: {arg} is only supported as {value!r}, got {args[arg]!r}")


@dataclass(frozen=True)
class ResizeImage:
    """Resize to exactly ``size`` (w, h), or scale so the short side is ``resize_short`` (keeps ratio)."""

    size: tuple[int, int] | None
    resize_short: int | None
    interpolation: int

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> ResizeImage:
        op = "ResizeImage"
        _check_args(op, args, {"size", "resize_short", "interpolation", "backend", "return_numpy"})
        _require_default(op, args, "return_numpy", True)
        size = args.get("size")
        short = args.get("resize_short")
        if (size is None) == (short is None):
            raise ValueError(f"{op}: give exactly one of size (int or [w, h]) or resize_short (int)")
        if args.get("backend", "cv2") != "cv2":
            raise ValueError(f"{op}: backend must be 'cv2', got {args.get('backend')!r}")
        interp_name = args.get("interpolation") or "LINEAR"  # PaddleClas: None means cv2's bilinear
        if not isinstance(interp_name, str) or interp_name.upper() not in _INTERPOLATIONS:
            raise ValueError(f"{op}: interpolation {interp_name!r} not one of {sorted(_INTERPOLATIONS)}")
        if short is not None and (isinstance(short, bool) or not isinstance(short, int) or short <= 0):
            raise ValueError(f"{op}: resize_short must be a positive int, got {short!r}")
        return cls(
            size=_size_pair(size, op=op, arg="size") if size is not None else None,
            resize_short=short,
            interpolation=_INTERPOLATIONS[interp_name.upper()],
        )

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if self.size is not None:
            w, h = self.size
        else:
            ih, iw = img.shape[:2]
            ratio = self.resize_short / min(ih, iw)
            w, h = max(1, round(iw * ratio)), max(1, round(ih * ratio))
        return cv2.resize(img, (w, h), interpolation=self.interpolation)


@dataclass(frozen=True)
class CropImage:
    """Centre crop to ``size`` (w, h); the image must be at least that large."""

    size: tuple[int, int]

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> CropImage:
        _check_args("CropImage", args, {"size"})
        if "size" not in args:
            raise ValueError("CropImage: size (int or [w, h]) is required")
        return cls(size=_size_pair(args["size"], op="CropImage", arg="size"))

    def __call__(self, img: np.ndarray) -> np.ndarray:
        w, h = self.size
        ih, iw = img.shape[:2]
        if iw < w or ih < h:
            raise ValueError(f"CropImage: image {iw}x{ih} is smaller than the crop {w}x{h}; resize first")
        x0, y0 = (iw - w) // 2, (ih - h) // 2
        return img[y0 : y0 + h, x0 : x0 + w]


@dataclass(frozen=True)
class NormalizeImage:
    """``(img * scale - mean) / std`` per channel, in float32."""

    scale: float
    mean: np.ndarray
    std: np.ndarray
    order: str

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> NormalizeImage:
        op = "NormalizeImage"
        _check_args(op, args, {"scale", "mean", "std", "order", "channel_num", "output_fp16"})
        # PaddleClas options accepted only at the values that mean "plain 3-channel float32".
        _require_default(op, args, "channel_num", 3)
        _require_default(op, args, "output_fp16", False)
        scale = parse_scale(args.get("scale", "1.0/255.0"), op=op)
        mean = cls._triple(args.get("mean", [0.485, 0.456, 0.406]), op=op, arg="mean")
        std = cls._triple(args.get("std", [0.229, 0.224, 0.225]), op=op, arg="std")
        if np.any(std == 0):
            raise ValueError(f"{op}: std must not contain 0")
        order = args.get("order", "hwc") or "hwc"
        if order not in ("hwc", "chw"):
            raise ValueError(f"{op}: order must be 'hwc' or 'chw', got {order!r}")
        shape = (1, 1, 3) if order == "hwc" else (3, 1, 1)
        return cls(scale=scale, mean=mean.reshape(shape), std=std.reshape(shape), order=order)

    @staticmethod
    def _triple(value: Any, *, op: str, arg: str) -> np.ndarray:
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise ValueError(f"{op}: {arg} must be a list of 3 numbers, got {value!r}")
        return np.asarray(value, dtype=np.float32)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        # float32 throughout: float64 arithmetic would only be cast back before inference.
        return (img.astype(np.float32) * np.float32(self.scale) - self.mean) / self.std


@dataclass(frozen=True)
class ToCHWImage:
    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> ToCHWImage:
        _check_args("ToCHWImage", args, set())
        return cls()

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return img.transpose(2, 0, 1)


OPS: dict[str, Any] = {
    "ResizeImage": ResizeImage,
    "CropImage": CropImage,
    "NormalizeImage": NormalizeImage,
    "ToCHWImage": ToCHWImage,
}


@dataclass(frozen=True)
class RecPreprocess:
    ops: tuple[Op, ...]
    # The usual ops — ResizeImage to a fixed size (bilinear), NormalizeImage (hwc), ToCHWImage — as one OpenCV
    # call for a whole batch (``preprocess_batch``); None for any other list.
    blob: Any = None

    def __call__(self, image_rgb: np.ndarray) -> np.ndarray:
        if not isinstance(image_rgb, np.ndarray) or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
            shape = getattr(image_rgb, "shape", None)
            raise ValueError(f"recognizer preprocessing expects an RGB HxWx3 image, got shape {shape}")
        if image_rgb.shape[0] == 0 or image_rgb.shape[1] == 0:
            raise ValueError(f"recognizer preprocessing got an empty image {image_rgb.shape}")
        # Crops arrive as views of a frame; a negatively strided view (a flip) would trip cv2.
        out = image_rgb if image_rgb.flags.c_contiguous else np.ascontiguousarray(image_rgb)
        for op in self.ops:
            out = op(out)
        return np.ascontiguousarray(out, dtype=np.float32)


def build_rec_preprocess(transform_ops: Sequence[Mapping[str, Any]]) -> RecPreprocess:
    """Compile ``RecPreProcess.transform_ops`` into a callable RGB uint8 HxWx3 → float32 CHW."""
    if not isinstance(transform_ops, (list, tuple)) or not transform_ops:
        raise ValueError(f"transform_ops must be a non-empty list of one-key dicts; allowed ops: {sorted(OPS)}")
    ops: list[Op] = []
    for i, entry in enumerate(transform_ops):
        if not isinstance(entry, Mapping) or len(entry) != 1:
            raise ValueError(f"transform_ops[{i}] must be a one-key dict like {{'ResizeImage': {{...}}}}, got {entry!r}")
        ((name, args),) = entry.items()
        if name not in OPS:
            raise ValueError(f"transform_ops[{i}]: unknown op {name!r}; allowed: {sorted(OPS)}")
        if args is None:
            args = {}
        if not isinstance(args, Mapping):
            raise ValueError(f"{name}: arguments must be a mapping or null, got {args!r}")
        ops.append(OPS[name].from_args(args))
    return RecPreprocess(tuple(ops), blob=_blob_params(ops))


def _blob_params(ops: Sequence[Op]) -> Any:
    """cv2.dnn's batch preprocessing for [ResizeImage(size, bilinear), NormalizeImage(hwc), ToCHWImage], else None.

    ``blobFromImagesWithParams`` resizes each image, subtracts a per-channel mean, multiplies by a per-channel
    factor and writes NCHW float32 in one C++ pass over the batch: ``(x * scale - mean) / std`` is
    ``(x - mean / scale) * (scale / std)``. Measured on vtest.avi's crops: a fifth of the per-op numpy path's time,
    which was ~5 % of `vidrec video` (docs/benchmarks.md, issue 13)."""
    if len(ops) != 3:
        return None
    resize, normalize, chw = ops
    if not (isinstance(resize, ResizeImage) and resize.size is not None and resize.interpolation == cv2.INTER_LINEAR
            and isinstance(normalize, NormalizeImage) and normalize.order == "hwc" and isinstance(chw, ToCHWImage)):
        return None
    mean = normalize.mean.reshape(3).astype(np.float64)
    std = normalize.std.reshape(3).astype(np.float64)
    return cv2.dnn.Image2BlobParams(
        scalefactor=tuple(float(v) for v in normalize.scale / std),
        size=resize.size,
        mean=tuple(float(v) for v in mean / normalize.scale),
        swapRB=False,
        ddepth=cv2.CV_32F,
    )


def preprocess_batch(images_rgb: Sequence[np.ndarray], pipeline: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Run ``pipeline`` on each image and stack to (N, C, H, W) float32; every output must match in shape."""
    blob = getattr(pipeline, "blob", None)
    if blob is not None and images_rgb:
        for image in images_rgb:  # the checks RecPreprocess makes per image, before one call for all
            if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"recognizer preprocessing expects RGB uint8 HxWx3 images, got "
                                 f"{getattr(image, 'shape', None)} {getattr(image, 'dtype', '')}")
            if image.shape[0] == 0 or image.shape[1] == 0:
                raise ValueError(f"recognizer preprocessing got an empty image {image.shape}")
        return cv2.dnn.blobFromImagesWithParams(list(images_rgb), blob)
    outputs = [pipeline(img) for img in images_rgb]
    if not outputs:
        raise ValueError("preprocess_batch: no images")
    shapes = {o.shape for o in outputs}
    if len(shapes) != 1:
        raise ValueError(f"preprocess_batch: the pipeline gave different shapes {sorted(shapes)}; resize to a fixed size")
    if outputs[0].ndim != 3:
        raise ValueError(f"preprocess_batch: expected CHW outputs, got shape {outputs[0].shape}; end the ops with ToCHWImage")
    return np.stack(outputs).astype(np.float32, copy=False)
