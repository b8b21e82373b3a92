"""PP-PicoDet-S (COCO) on ONNX Runtime or Paddle Inference: preprocess, run, and hand the outputs to a decoder.

Two kinds of model folder (``PicoDetDetector.from_model_dir``): the shared ONNX exports (a model file plus
``coco.names``; fixed BGR preprocessing), and PaddleDetection inference exports (``model.json`` +
``model.pdiparams`` + ``infer_cfg.yml``, whose ``Preprocess`` list and ``label_list`` drive preprocessing
and class names).

Two output layouts, told apart by the outputs' shapes when the model loads (``models/detector_outputs.py``),
each with its own decoder: raw GFL heads (``models/raw_head_decoder.py``) and NMS in the graph
(``models/graph_nms_decoder.py``). NMS-in-graph models also take ``im_shape`` [N, 2] (h, w after the resize)
and ``scale_factor`` [N, 2] ([scale_y, scale_x]), fed here when the model has them.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.detector_outputs import DecodeOptions, GraphNmsLayout, read_output_layout
from models.errors import ModelError
from models.graph_nms_decoder import GraphNmsDecoder
from models.preprocess_det import INFER_CFG_FILE, InferConfig, load_infer_cfg, preprocess_batch, preprocess_with_cfg
from models.raw_head_decoder import RawHeadDecoder
from models.runtime import RuntimeOptions, TensorInfo, open_model
from models.types import Detections

# Model file of a PaddleDetection export folder when none is named (Paddle 3's program format).
PADDLE_MODEL_FILE = "model.json"
ONNX_LABELS_FILE = "coco.names"
# PaddleDetection's extra inputs (fed when the model has them); any other input besides the image is an error.
IM_SHAPE_INPUT = "im_shape"
SCALE_FACTOR_INPUT = "scale_factor"
AUX_INPUTS = (IM_SHAPE_INPUT, SCALE_FACTOR_INPUT)


def load_class_names(path: Path) -> list[str]:
    """One class name per line (blank lines ignored); a missing or empty file is a ModelError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"class names file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read class names file {path}: {exc}") from exc
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ModelError(f"class names file is empty: {path}")
    return names


def build_decoder(
    outputs: Sequence[TensorInfo],
    *,
    model_path: Path,
    input_size: int,
    class_names: Sequence[str],
    names_source: Path | None,
    options: DecodeOptions,
    infer_cfg: InferConfig | None = None,
) -> RawHeadDecoder | GraphNmsDecoder:
    """The decoder the model's outputs call for, checked against the class names and ``infer_cfg.yml``.

    ``names_source``: the class names file, when the names came from one (an error then names it).
    """
    layout = read_output_layout(outputs, model_path=model_path)
    if isinstance(layout, GraphNmsLayout):
        return GraphNmsDecoder(layout, class_names=class_names, options=options, model_path=model_path)
    if layout.num_classes != len(class_names):
        source = f"class names file {names_source}" if names_source else "class_names"
        raise ModelError(f"{source} has {len(class_names)} names but model {model_path} predicts {layout.num_classes} classes")
    decoder = RawHeadDecoder(layout, input_size=input_size, options=options, model_path=model_path)
    if infer_cfg is not None and infer_cfg.fpn_stride is not None and decoder.level_strides != sorted(infer_cfg.fpn_stride):
        raise ModelError(
            f"{infer_cfg.path}: fpn_stride {list(infer_cfg.fpn_stride)} but model {model_path} has levels of stride {decoder.level_strides}"
        )
    return decoder


class PicoDetDetector:
    """Detect objects in BGR images with a PicoDet export; boxes come back in original-image pixels.

    ``infer_cfg`` (a PaddleDetection export's ``infer_cfg.yml``) replaces the ONNX exports' fixed preprocessing.
    """

    def __init__(
        self,
        *,
        model_path: Path,
        class_names: Sequence[str] | Path,
        score_threshold: float,
        max_detections: int,
        nms_iou: float = 0.6,
        mainbody: bool = True,
        runtime: RuntimeOptions = RuntimeOptions(),
        infer_cfg: InferConfig | None = None,
    ) -> None:
        options = DecodeOptions(
            score_threshold=float(score_threshold), max_detections=int(max_detections), nms_iou=float(nms_iou), mainbody=bool(mainbody)
        )
        names_source: Path | None = None
        if isinstance(class_names, (str, os.PathLike)):
            # A file path is accepted so a count mismatch can name the file at fault.
            names_source = Path(class_names)
            class_names = load_class_names(names_source)

        self.model_path = Path(model_path)
        self.class_names: list[str] = list(class_names)
        self.infer_cfg = infer_cfg
        self._model = open_model(self.model_path, runtime)

        inputs = self._model.inputs
        images = [i for i in inputs if i.name not in AUX_INPUTS]
        if len(images) != 1:
            raise ModelError(
                f"{self.model_path}: expected one image input (and optionally {', '.join(AUX_INPUTS)}), got {[i.name for i in inputs]}"
            )
        self._input_name = images[0].name
        self._aux_inputs = tuple(i.name for i in inputs if i.name in AUX_INPUTS)
        shape = images[0].shape
        if len(shape) != 4 or not isinstance(shape[2], int) or shape[2] != shape[3]:
            raise ModelError(f"{self.model_path}: expected input [B, 3, S, S] with a fixed S, got {shape}")
        self.input_size: int = int(shape[2])
        # Batch fixed at 1 → one run per image; a dynamic batch dimension → the whole list in one run.
        self._batched = shape[0] != 1
        self.decoder = build_decoder(
            self._model.outputs,
            model_path=self.model_path,
            input_size=self.input_size,
            class_names=self.class_names,
            names_source=names_source,
            options=options,
            infer_cfg=infer_cfg,
        )

    @property
    def output_format(self) -> str:
        """``raw_heads`` or ``nms_in_graph``: which decoder the model's outputs chose."""
        return self.decoder.output_format

    @classmethod
    def from_model_dir(
        cls,
        model_dir: Path,
        *,
        model_file: str | None = None,
        labels_file: str | None = None,
        score_threshold: float,
        max_detections: int,
        nms_iou: float = 0.6,
        mainbody: bool = True,
        runtime: RuntimeOptions = RuntimeOptions(),
    ) -> "PicoDetDetector":
        """A detector for either kind of folder.

        With ``infer_cfg.yml`` (PaddleDetection export): its Preprocess list preprocesses, class names come from
        ``labels_file`` when given, else from its ``label_list``; ``model_file`` defaults to ``model.json``.
        Without: the shared ONNX export's fixed preprocessing; ``model_file`` is required and ``labels_file``
        defaults to ``coco.names``.
        """
        model_dir = Path(model_dir)
        cfg_path = model_dir / INFER_CFG_FILE
        common = dict(score_threshold=score_threshold, max_detections=max_detections, nms_iou=nms_iou, mainbody=mainbody, runtime=runtime)
        if cfg_path.is_file():
            cfg = load_infer_cfg(cfg_path)
            if labels_file is not None:
                names: Sequence[str] | Path = model_dir / labels_file
            elif cfg.label_list is not None:
                names = list(cfg.label_list)
            else:
                raise ModelError(f"{cfg_path} has no label_list and no labels file was named")
            return cls(model_path=model_dir / (model_file or PADDLE_MODEL_FILE), class_names=names, infer_cfg=cfg, **common)
        if model_file is None:
            raise ModelError(f"model folder {model_dir} has no {INFER_CFG_FILE}: name its model file")
        return cls(model_path=model_dir / model_file, class_names=model_dir / (labels_file or ONNX_LABELS_FILE), **common)

    def detect(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        """One ``Detections`` per BGR uint8 image, boxes in that image's pixels, best score first."""
        if len(images_bgr) == 0:
            return []
        if self.infer_cfg is not None:
            tensor, scales = preprocess_with_cfg(images_bgr, self.infer_cfg, size=self.input_size)
        else:
            tensor, scales = preprocess_batch(images_bgr, size=self.input_size)
        feeds = {self._input_name: tensor}
        if self._aux_inputs:
            # PaddleDetection's im_info: scale_factor [sy, sx] (resized px per original px); im_shape the resized
            # (h, w) — the rounded sizes the resize produced, which is what scale × original size gives back.
            scale_factor = np.ascontiguousarray(scales[:, ::-1], dtype=np.float32)
            original_hw = np.array([image.shape[:2] for image in images_bgr], dtype=np.float32)
            aux = {IM_SHAPE_INPUT: np.round(original_hw * scale_factor).astype(np.float32), SCALE_FACTOR_INPUT: scale_factor}
            feeds.update({name: aux[name] for name in self._aux_inputs})
        images_hw = [image.shape[:2] for image in images_bgr]
        if self._batched:
            return self.decoder.decode(self._model.run(feeds), scales_xy=scales, images_hw=images_hw)
        results: list[Detections] = []
        for i in range(len(images_bgr)):
            outputs = self._model.run({name: value[i : i + 1] for name, value in feeds.items()})
            results.extend(self.decoder.decode(outputs, scales_xy=scales[i : i + 1], images_hw=images_hw[i : i + 1]))
        return results
