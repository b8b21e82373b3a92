"""models/graph_rewrite.py: hard-swish fused into two ops, weights dropped from the inputs — same outputs.

Small graphs, one per shape the rewrite must (or must not) touch, run through ONNX Runtime before and after;
then the real PicoDet-S detector on real photos.
"""
from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.graph_rewrite import drop_initializer_inputs, fuse_hard_swish, optimized
from models.preprocess_det import preprocess_image

X = np.linspace(-8.0, 8.0, 2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # across both knees, -3 and 3


def _const(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def _graph(variant: str) -> onnx.ModelProto:
    """x -> hard-swish-like chain -> y, in the variant named; opset 11 unless the variant says 10."""
    add_c, clip_lo, clip_hi, div_c = 3.0, 0.0, 6.0, 6.0
    if variant == "adds 2":
        add_c = 2.0
    if variant == "clips to 5":
        clip_hi = 5.0
    inits = [_const("three", add_c), _const("zero", clip_lo), _const("six", clip_hi), _const("sixd", div_c)]
    nodes = [helper.make_node("Add", ["x", "three"] if variant != "3 + x" else ["three", "x"], ["a"])]
    if variant == "opset 10 clip":
        nodes.append(helper.make_node("Clip", ["a"], ["c"], min=clip_lo, max=clip_hi))
    else:
        nodes.append(helper.make_node("Clip", ["a", "zero", "six"], ["c"]))
    if variant == "mul then div":
        nodes += [helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Div", ["m", "sixd"], ["y"])]
    elif variant == "mul by another tensor":
        nodes += [helper.make_node("Div", ["c", "sixd"], ["d"]), helper.make_node("Mul", ["x2", "d"], ["y"])]
    else:
        nodes += [helper.make_node("Div", ["c", "sixd"], ["d"]), helper.make_node("Mul", ["x", "d"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(X.shape))]
    if variant == "clip read elsewhere":
        nodes.append(helper.make_node("Relu", ["c"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, list(X.shape)))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(X.shape))]
    if variant == "mul by another tensor":
        inputs.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, list(X.shape)))
    if variant == "weights as inputs":
        inputs += [helper.make_tensor_value_info(i.name, TensorProto.FLOAT, []) for i in inits]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    opset = 10 if variant == "opset 10 clip" else 11
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


def _run(model: onnx.ModelProto) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"x": X}
    if any(i.name == "x2" for i in session.get_inputs()):
        feeds["x2"] = X[::-1].copy()
    return session.run(None, feeds)


@pytest.mark.parametrize(
    ("variant", "fused"),
    [
        ("div then mul", 1),            # x * (clip(x + 3, 0, 6) / 6): PaddlePaddle's export
        ("mul then div", 1),            # (x * clip(x + 3, 0, 6)) / 6: the other order
        ("3 + x", 1),                   # the constant first
        ("opset 10 clip", 1),            # Clip's bounds as attributes (opset 10 and before)
        ("weights as inputs", 1),       # paddle2onnx's inputs list; the chain itself is the same
        ("adds 2", 0),                  # not hard-swish: x + 2
        ("clips to 5", 0),              # not hard-swish: clip to [0, 5]
        ("clip read elsewhere", 0),     # the clipped tensor is needed by another node and is a graph output
        ("mul by another tensor", 0),   # the gate multiplies something other than its own input
    ],
)
def test_fuse_hard_swish_only_where_it_is_hard_swish(variant: str, fused: int) -> None:
    model = _graph(variant)
    before = _run(model)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    drop_initializer_inputs(rewritten)
    assert fuse_hard_swish(rewritten) == fused
    onnx.checker.check_model(rewritten)
    ops = [node.op_type for node in rewritten.graph.node]
    assert ("HardSigmoid" in ops) == bool(fused)
    if fused:
        assert "Clip" not in ops and "Div" not in ops and "Add" not in ops
    after = _run(rewritten)
    for old, new in zip(before, after):
        np.testing.assert_allclose(new, old, rtol=1e-6, atol=1e-6)
    if fused:  # the numbers themselves: hard-swish at a few points
        expected = X * np.clip(X + 3, 0, 6) / 6
        np.testing.assert_allclose(after[0], expected, rtol=1e-6, atol=1e-6)


def test_drop_initializer_inputs_keeps_the_real_inputs() -> None:
    model = _graph("weights as inputs")
    assert [i.name for i in model.graph.input] == ["x", "three", "zero", "six", "sixd"]
    assert drop_initializer_inputs(model) == 4
    assert [i.name for i in model.graph.input] == ["x"]
    assert drop_initializer_inputs(model) == 0


def test_picodet_rewritten_gives_the_same_outputs_on_real_photos(model_dir, photos) -> None:
    path = model_dir / "picodet_s_coco" / "picodet_s_320_coco.onnx"
    original = onnx.load(str(path))
    rewritten = onnx.load(str(path))
    optimized(rewritten)
    before = [node.op_type for node in original.graph.node]
    ops = [node.op_type for node in rewritten.graph.node]
    # Every hard-swish of PicoDet-S (87; its 13 squeeze-excite gates were HardSigmoid already), no Clip left.
    assert (before.count("Clip"), ops.count("HardSigmoid") - before.count("HardSigmoid"), ops.count("Clip")) == (87, 87, 0)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = [ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
                for m in (original, rewritten)]
    for name, rgb in photos.items():
        blob, _ = preprocess_image(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), size=320)
        outputs = [s.run(None, {"image": blob[None]}) for s in sessions]
        for old, new in zip(*outputs):
            np.testing.assert_allclose(new, old, rtol=1e-4, atol=1e-4, err_msg=name)
