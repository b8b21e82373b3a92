"""The detector's decoder, chosen from the model's output shapes at load time, and both decoders with numbers.

No model file is needed: the choice sees only ``TensorInfo`` (name and shape), and the decoders only arrays.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from models.detector import build_decoder
from models.detector_outputs import NMS_IN_GRAPH, RAW_HEADS, DecodeOptions, GraphNmsLayout, RawHeadLayout
from models.errors import ModelError
from models.graph_nms_decoder import GraphNmsDecoder
from models.raw_head_decoder import RawHeadDecoder
from models.runtime import TensorInfo

MODEL = Path("models/odd_model.onnx")
OPTIONS = DecodeOptions(score_threshold=0.5, max_detections=10, nms_iou=0.6, mainbody=True)
# PicoDet-S at 320: levels of 40², 20², 10² and 5² anchors (strides 8, 16, 32, 64).
LEVELS_320 = (1600, 400, 100, 25)


def _scores(anchors: int, classes: int = 80, batch: int | None = 1) -> TensorInfo:
    return TensorInfo(name=f"scores_{anchors}_{classes}", shape=(batch, anchors, classes))


def _boxes(anchors: int, batch: int | None = 1) -> TensorInfo:
    return TensorInfo(name=f"boxes_{anchors}", shape=(batch, anchors, 32))


def _build(outputs: list[TensorInfo], num_classes: int = 80) -> RawHeadDecoder | GraphNmsDecoder:
    return build_decoder(
        outputs, model_path=MODEL, input_size=320, class_names=["c"] * num_classes, names_source=None, options=OPTIONS
    )


SHARED_EXPORT = [*(_scores(n) for n in LEVELS_320), *(_boxes(n) for n in LEVELS_320)]


@pytest.mark.parametrize(
    "outputs, decoder_type, layout",
    [
        # the shared ONNX export: four score maps, then four box maps, finest level first
        (SHARED_EXPORT, RawHeadDecoder, RawHeadLayout((0, 1, 2, 3), (4, 5, 6, 7), LEVELS_320, 80)),
        # interleaved and coarsest first: paired by anchor count, ordered finest first, whatever the output order
        (
            [_boxes(25), _scores(25), _boxes(100), _scores(100), _boxes(400), _scores(400), _boxes(1600), _scores(1600)],
            RawHeadDecoder,
            RawHeadLayout((7, 5, 3, 1), (6, 4, 2, 0), LEVELS_320, 80),
        ),
        # a dynamic batch dimension does not change the layout
        (
            [*(_scores(n, batch=None) for n in LEVELS_320), *(_boxes(n, batch=None) for n in LEVELS_320)],
            RawHeadDecoder,
            RawHeadLayout((0, 1, 2, 3), (4, 5, 6, 7), LEVELS_320, 80),
        ),
        # PaddleDetection's NMS export: boxes [M, 6] and counts [N]
        ([TensorInfo("bbox", (None, 6)), TensorInfo("bbox_num", (None,))], GraphNmsDecoder, GraphNmsLayout(0, 1)),
        # counts first, and the box rows' width unknown until a run: still NMS in the graph
        ([TensorInfo("num", (None,)), TensorInfo("rows", (None, None))], GraphNmsDecoder, GraphNmsLayout(1, 0)),
    ],
)
def test_the_outputs_choose_the_decoder(outputs: list[TensorInfo], decoder_type: type, layout) -> None:
    decoder = _build(outputs)
    assert type(decoder) is decoder_type
    assert decoder.layout == layout
    assert decoder.output_format == (RAW_HEADS if decoder_type is RawHeadDecoder else NMS_IN_GRAPH)


@pytest.mark.parametrize(
    "outputs, reason",
    [
        # 5 columns, not 6: not NMS rows, and not a raw head either
        ([TensorInfo("det_boxes", (None, 5)), TensorInfo("det_num", (None,))], r"output det_boxes has shape \[None, 5\], expected \[B, N, C\]"),
        # a rank-4 heatmap (another architecture)
        ([TensorInfo("heatmap", (1, 10, 10, 80))], r"output heatmap has shape \[1, 10, 10, 80\]"),
        # two rank-1 outputs: which are the counts?
        (
            [TensorInfo("bbox", (None, 6)), TensorInfo("bbox_num", (None,)), TensorInfo("bbox_extra", (None,))],
            r"output bbox has shape",
        ),
        # score maps without their box maps
        ([_scores(n) for n in LEVELS_320], r"score maps for anchor counts \[25, 100, 400, 1600\] do not pair with 32-wide box maps for \[\]"),
        # a box map without a score map at one level
        ([*SHARED_EXPORT[1:]], r"score maps for anchor counts \[25, 100, 400\] do not pair"),
        # two score maps of the same level
        ([_scores(1600), _scores(1600, classes=80), _boxes(1600)], r"two outputs with 1600 anchors and last dim 80"),
        # levels that disagree on the number of classes
        ([_scores(1600, 80), _boxes(1600), _scores(400, 79), _boxes(400)], r"score maps disagree on the class count: \[79, 80\]"),
    ],
)
def test_an_unusable_layout_is_one_line_naming_the_file_and_its_outputs(outputs: list[TensorInfo], reason: str) -> None:
    with pytest.raises(ModelError) as info:
        _build(outputs)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{MODEL}: outputs ") and " are neither raw PicoDet heads " in message
    for out in outputs:
        assert re.search(rf"\b{out.name} \[", message), f"{out.name} not listed in: {message}"
    assert re.search(reason, message), message


@pytest.mark.parametrize(
    "outputs, num_classes, match",
    [
        # raw heads fix the class count: it must match the names
        (SHARED_EXPORT, 79, r"^class_names has 79 names but model models/odd_model\.onnx predicts 80 classes$"),
        # an anchor count no square grid of a 320 input gives
        ([_scores(1601), _boxes(1601)], 80, r"^models/odd_model\.onnx: no stride gives 1601 anchors on a 320x320 input$"),
    ],
)
def test_raw_heads_that_do_not_fit_the_names_or_the_input_are_model_errors(outputs, num_classes: int, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        _build(outputs, num_classes=num_classes)


def test_nms_in_graph_takes_any_number_of_class_names() -> None:
    # The class count is not in the outputs' shapes: ids are checked on each run (below).
    assert isinstance(_build([TensorInfo("bbox", (None, 6)), TensorInfo("bbox_num", (None,))], num_classes=1), GraphNmsDecoder)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"score_threshold": 1.5, "max_detections": 10}, r"score_threshold must be in \[0, 1\], got 1.5"),  # above 1
        ({"score_threshold": 0.5, "max_detections": 0}, r"max_detections must be at least 1, got 0"),  # no box allowed
        ({"score_threshold": 0.5, "max_detections": 10, "nms_iou": 0.0}, r"nms_iou must be in \(0, 1\], got 0.0"),  # suppresses all
    ],
)
def test_decode_options_are_checked(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DecodeOptions(**kwargs)


# --- raw heads with numbers ----------------------------------------------------------------------------------

# A 32-pixel input: a 4×4 level of stride 8 (16 anchors) and a 2×2 level of stride 16 (4 anchors), 2 classes.
TINY = RawHeadLayout(score_indices=(0, 1), dist_indices=(2, 3), anchors_per_level=(16, 4), num_classes=2)


def _peaked(bin_per_side: list[int]) -> np.ndarray:
    """Box logits (32,) whose softmax puts all of each side's weight on the given bin."""
    logits = np.zeros((4, 8), np.float32)
    logits[np.arange(4), bin_per_side] = 50.0
    return logits.ravel()


def _tiny_outputs(batch: int) -> list[np.ndarray]:
    scores0, scores1 = np.full((batch, 16, 2), 0.1, np.float32), np.full((batch, 4, 2), 0.1, np.float32)
    dists0, dists1 = np.zeros((batch, 16, 32), np.float32), np.zeros((batch, 4, 32), np.float32)
    # Image 0: anchor 5 of the fine level (row 1, col 1: centre (12, 12)), class 1, 2 bins × stride 8 each way.
    scores0[0, 5, 1] = 0.9
    dists0[0, 5] = _peaked([2, 2, 2, 2])
    # Image 0: anchor 3 of the coarse level (centre (24, 24)), class 0, left 1 bin, top 0, right 3, bottom 1 (× 16).
    scores1[0, 3, 0] = 0.7
    dists1[0, 3] = _peaked([1, 0, 3, 1])
    return [scores0, scores1, dists0, dists1]


@pytest.mark.parametrize(
    "scale_xy, image_hw, want_xyxy",
    [
        # original 64×64 at half scale: input px × 2, the first box clipped at the top-left corner
        ((0.5, 0.5), (64, 64), [[0, 0, 56, 56], [16, 48, 64, 64]]),
        # original 32×32 (no scaling): the second box's right edge (72) clipped to the width
        ((1.0, 1.0), (32, 32), [[0, 0, 28, 28], [8, 24, 32, 32]]),
    ],
)
def test_raw_heads_decode_to_original_pixels(scale_xy, image_hw, want_xyxy) -> None:
    decoder = RawHeadDecoder(TINY, input_size=32, options=OPTIONS, model_path=MODEL)
    got = decoder.decode(_tiny_outputs(batch=1), scales_xy=np.array([scale_xy], np.float32), images_hw=[image_hw])
    assert len(got) == 1
    np.testing.assert_allclose(got[0].xyxy, want_xyxy, atol=1e-3)
    assert got[0].confidence.tolist() == pytest.approx([0.9, 0.7])
    assert got[0].class_id.tolist() == [1, 0]


def test_raw_heads_one_result_per_image_and_nothing_under_the_threshold() -> None:
    decoder = RawHeadDecoder(TINY, input_size=32, options=OPTIONS, model_path=MODEL)
    got = decoder.decode(_tiny_outputs(batch=2), scales_xy=np.ones((2, 2), np.float32), images_hw=[(32, 32), (32, 32)])
    assert [len(d) for d in got] == [2, 0]  # image 1 scores 0.1 everywhere
    with pytest.raises(ModelError, match=r"odd_model\.onnx: score maps for 2 images from a batch of 3"):
        decoder.decode(_tiny_outputs(batch=2), scales_xy=np.ones((3, 2), np.float32), images_hw=[(32, 32)] * 3)


def test_raw_heads_level_strides() -> None:
    assert RawHeadDecoder(TINY, input_size=32, options=OPTIONS, model_path=MODEL).level_strides == [8, 16]


# --- NMS in the graph with numbers ----------------------------------------------------------------------------

ROWS = np.array(
    [
        [0, 0.9, 10, 10, 50, 50],  # image 0: the best box
        [1, 0.8, 12, 12, 52, 52],  # image 0: nearly the same box, another class
        [2, 0.6, -5, 20, 30, 90],  # image 0: reaches past the left and bottom edges of an 80×60 image
        [0, 0.4, 0, 0, 10, 10],  # image 1: under the 0.5 threshold
    ],
    np.float32,
)


@pytest.mark.parametrize(
    "mainbody, want_classes, want_scores",
    [
        # class-agnostic: the class-1 box overlapping the best one goes
        (True, [0, 2], [0.9, 0.6]),
        # per class (the graph's own NMS): all kept, best first
        (False, [0, 1, 2], [0.9, 0.8, 0.6]),
    ],
)
def test_graph_rows_split_by_counts_thresholded_and_clipped(mainbody: bool, want_classes, want_scores) -> None:
    options = DecodeOptions(score_threshold=0.5, max_detections=10, mainbody=mainbody)
    decoder = GraphNmsDecoder(GraphNmsLayout(0, 1), class_names=["a", "b", "c"], options=options, model_path=MODEL)
    got = decoder.decode([ROWS, np.array([3, 1], np.int32)], scales_xy=np.ones((2, 2)), images_hw=[(60, 80), (60, 80)])
    assert [len(d) for d in got] == [len(want_classes), 0]
    assert got[0].class_id.tolist() == want_classes
    assert got[0].confidence.tolist() == pytest.approx(want_scores)
    np.testing.assert_array_equal(got[0].xyxy[-1], [0, 20, 30, 60])
    assert ROWS[2, 2] == -5, "the model's own output must not be clipped in place"


def test_graph_cap_and_placeholder_rows() -> None:
    options = DecodeOptions(score_threshold=0.5, max_detections=1, mainbody=False)
    decoder = GraphNmsDecoder(GraphNmsLayout(0, 1), class_names=["a", "b", "c"], options=options, model_path=MODEL)
    capped = decoder.decode([ROWS, np.array([3, 1], np.int32)], scales_xy=np.ones((2, 2)), images_hw=[(60, 80), (60, 80)])
    assert [d.class_id.tolist() for d in capped] == [[0], []]
    # Nothing kept in the whole batch: PaddleDetection's placeholder row (class -1) is no box.
    placeholder = np.array([[-1, 0, 0, 0, 0, 0]], np.float32)
    empty = decoder.decode([placeholder, np.array([0, 0], np.int32)], scales_xy=np.ones((2, 2)), images_hw=[(60, 80)] * 2)
    assert [len(d) for d in empty] == [0, 0]


@pytest.mark.parametrize(
    "rows, counts, images, match",
    [
        # counts that do not add up to the rows
        (ROWS, np.array([3, 2], np.int32), 2, r"odd_model\.onnx: box counts \[3, 2\] add up to 5, but 4 boxes came out"),
        # one count for two images
        (ROWS, np.array([4], np.int32), 2, r"odd_model\.onnx: 1 box counts for a batch of 2 images"),
        # float counts
        (ROWS, np.array([3.0, 1.0], np.float32), 2, r"odd_model\.onnx: count output is float32 \[3\.0, 1\.0\], expected non-negative"),
        # rows of 5 columns
        (ROWS[:, :5], np.array([3, 1], np.int32), 2, r"odd_model\.onnx: box output is float32 \[4, 5\], expected float \[M, 6\]"),
        # a class id beyond the names (3 names: ids 0–2; this model says 3)
        (np.array([[3, 0.9, 0, 0, 5, 5]], np.float32), np.array([1], np.int32), 1, r"model models/odd_model\.onnx gives class id 3 but has 3 class names"),
    ],
)
def test_graph_outputs_that_do_not_add_up_are_model_errors(rows, counts, images: int, match: str) -> None:
    decoder = GraphNmsDecoder(GraphNmsLayout(0, 1), class_names=["a", "b", "c"], options=OPTIONS, model_path=MODEL)
    with pytest.raises(ModelError, match=match):
        decoder.decode([rows, counts], scales_xy=np.ones((images, 2)), images_hw=[(60, 80)] * images)
