"""Rewrites of an ONNX graph before ONNX Runtime loads it: the same function, computed faster.

Exported models often carry patterns that ONNX Runtime's own optimizer does not touch. Each rewrite here is a
pure function ``ModelProto -> number of places changed`` that edits the model in place, changes no output by more
than float rounding (the tests compare outputs on real photos), and leaves a graph it does not recognise alone.

- ``drop_initializer_inputs``: paddle2onnx (the PicoDet files among them) lists every weight as a graph input
  too, which tells ONNX Runtime the weights may be overridden at run time and so stops it from constant-folding
  them and fusing convolutions with what follows.
- ``fuse_hard_swish``: PaddlePaddle exports hard-swish as four element-wise ops, ``x * clip(x + 3, 0, 6) / 6``
  (87 times in PicoDet-S); each reads and writes the whole feature map. ``x * HardSigmoid(x)`` with
  alpha 1/6 and beta 1/2 is the same function in two ops (the ONNX ``HardSwish`` op would be one, but needs
  opset 14 and these files are opset 11). On this 2-core CPU the PicoDet-S 320 detector went from 16.2 to 11.9 ms
  a frame (docs/benchmarks.md).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper


def drop_initializer_inputs(model: onnx.ModelProto) -> int:
    """Remove weights from the graph's inputs; the number removed."""
    weights = {init.name for init in model.graph.initializer}
    inputs = [inp for inp in model.graph.input if inp.name not in weights]
    dropped = len(model.graph.input) - len(inputs)
    if dropped:
        del model.graph.input[:]
        model.graph.input.extend(inputs)
    return dropped


def fuse_hard_swish(model: onnx.ModelProto) -> int:
    """Replace ``Mul(x, Div(Clip(Add(x, 3), 0, 6), 6))`` (or with Mul and Div swapped) by
    ``Mul(x, HardSigmoid(x, 1/6, 1/2))``; the number of places replaced."""
    graph = model.graph
    constants = _constants(graph)
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    graph_outputs = {output.name for output in graph.output}

    def only_consumer(name: str, op_type: str) -> onnx.NodeProto | None:
        # An intermediate that something else reads (or the graph returns) must stay: no rewrite then.
        users = consumers.get(name, [])
        if name in graph_outputs or len(users) != 1 or users[0].op_type != op_type:
            return None
        return users[0]

    def is_scalar(name: str, value: float) -> bool:
        array = constants.get(name)
        return array is not None and array.size == 1 and float(array.reshape(-1)[0]) == value

    replaced: dict[int, list[onnx.NodeProto]] = {}  # id(last node of a match) -> its replacement
    removed: set[int] = set()
    for add in graph.node:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        x, three = (add.input[0], add.input[1]) if is_scalar(add.input[1], 3.0) else (add.input[1], add.input[0])
        if not is_scalar(three, 3.0):
            continue
        clip = only_consumer(add.output[0], "Clip")
        if clip is None or not _clips_to(clip, constants, 0.0, 6.0):
            continue
        after_clip = consumers.get(clip.output[0], [])
        if len(after_clip) != 1 or clip.output[0] in graph_outputs:
            continue
        first = after_clip[0]
        if first.op_type == "Div" and first.input[0] == clip.output[0] and is_scalar(first.input[1], 6.0):
            last = only_consumer(first.output[0], "Mul")
            if last is None or x not in last.input or set(last.input) != {x, first.output[0]}:
                continue
        elif first.op_type == "Mul" and set(first.input) == {x, clip.output[0]}:
            last = only_consumer(first.output[0], "Div")
            if last is None or last.input[0] != first.output[0] or not is_scalar(last.input[1], 6.0):
                continue
        else:
            continue
        gate = f"{last.output[0]}__hard_sigmoid"
        replaced[id(last)] = [
            helper.make_node("HardSigmoid", [x], [gate], name=f"{add.name or gate}__hard_sigmoid", alpha=1.0 / 6.0, beta=0.5),
            helper.make_node("Mul", [x, gate], [last.output[0]], name=f"{add.name or gate}__hard_swish"),
        ]
        removed.update({id(add), id(clip), id(first)})
    if not replaced:
        return 0
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if id(node) in replaced:
            nodes.extend(replaced[id(node)])
        elif id(node) not in removed:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(replaced)


def optimized(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every rewrite, in order; the same model object, edited."""
    drop_initializer_inputs(model)
    fuse_hard_swish(model)
    return model


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _clips_to(clip: onnx.NodeProto, constants: dict[str, np.ndarray], low: float, high: float) -> bool:
    """A Clip to [low, high]: bounds as inputs (opset 11+) or as attributes (before)."""
    if len(clip.input) == 3 and clip.input[1] and clip.input[2]:
        bounds = [constants.get(clip.input[1]), constants.get(clip.input[2])]
        return all(b is not None and b.size == 1 for b in bounds) and \
            (float(bounds[0].reshape(-1)[0]), float(bounds[1].reshape(-1)[0])) == (low, high)
    attributes = {a.name: helper.get_attribute_value(a) for a in clip.attribute}
    return len(clip.input) == 1 and (attributes.get("min"), attributes.get("max")) == (low, high)
