"""The precision rule (workers/precision.py), VNNI detection (models/cpu_features.py) and the pure parts of the
int8 guard (box matching, speed summary, uneven tensors): numbers in, numbers out."""
from __future__ import annotations

import numpy as np
import pytest

from models.cpu_features import parse_cpu_flags, read_cpu_flags, vnni_flags
from models.errors import ModelError
from models.quantize import TensorRange, uneven_tensors
from workers.models_quantize import iou_matrix, matched_boxes
from workers.precision import MIN_SPEEDUP, GuardCheck, GuardReport, Int8Status, SpeedPoint, decide, precision_setting

OK = Int8Status("ok", "recall@1 minus fp32's 0.017; x1.92 vs fp32", passed=True)
FAILED = Int8Status("ok", "fp32 boxes matched at IoU>=0.9 0.920 < 0.950", passed=False)
MISSING = Int8Status("missing", "no int8 copy of det.onnx")
OTHER = Int8Status("other_fp32", "the int8 copy was made from another fp32 file")
CHANGED = Int8Status("changed", "the int8 file x.int8.onnx changed since its guard ran (corrupt or replaced)")
VNNI = ("avx512_vnni",)


@pytest.mark.parametrize(
    ("setting", "backend", "use_gpu", "vnni", "int8", "precision", "reason_has"),
    [
        # the default on this kind of machine: a passing guard and VNNI give int8
        ("auto", "onnx", False, VNNI, OK, "int8", "guard passed"),
        # no VNNI: fp32 however good the guard
        ("auto", "onnx", False, (), OK, "fp32", "no VNNI"),
        # a failed guard keeps fp32 and says what failed
        ("auto", "onnx", False, VNNI, FAILED, "fp32", "0.920 < 0.950"),
        # nothing quantized yet
        ("auto", "onnx", False, VNNI, MISSING, "fp32", "no int8 copy"),
        # the report belongs to another fp32 file (the model was replaced)
        ("auto", "onnx", False, VNNI, OTHER, "fp32", "another fp32"),
        # the int8 file is not the one the guard measured
        ("auto", "onnx", False, VNNI, CHANGED, "fp32", "changed since its guard"),
        # Paddle Inference and the GPU keep their fp32 paths
        ("auto", "paddle", False, VNNI, OK, "fp32", "backend paddle"),
        ("auto", "onnx", True, VNNI, OK, "fp32", "GPU"),
        # fp32 asked for: fp32, whatever is there
        ("fp32", "onnx", False, VNNI, OK, "fp32", "is fp32"),
        # int8 asked for: int8 even when the guard failed or VNNI is missing, and the reason says so
        ("int8", "onnx", False, VNNI, OK, "int8", "is int8"),
        ("int8", "onnx", False, VNNI, FAILED, "int8", "guard failed"),
        ("int8", "onnx", False, (), OK, "int8", "no VNNI"),
    ],
)
def test_decide(setting, backend, use_gpu, vnni, int8, precision, reason_has) -> None:
    decision = decide(setting, backend=backend, use_gpu=use_gpu, vnni=vnni, int8=int8)
    assert decision.precision == precision
    assert reason_has in decision.reason


@pytest.mark.parametrize(
    ("int8", "backend", "message"),
    [
        # int8 asked for but none made: say how to make one
        (MISSING, "onnx", "vidrec models quantize"),
        # int8 asked for but the copy is of another model, or damaged: an error, never a silent fallback
        (OTHER, "onnx", "another fp32"),
        (CHANGED, "onnx", "corrupt or replaced"),
        # int8 asked for on Paddle Inference
        (OK, "paddle", "Global.backend=onnx"),
    ],
)
def test_int8_asked_for_but_unusable_is_an_error(int8, backend, message) -> None:
    with pytest.raises(ModelError, match=message):
        decide("int8", backend=backend, use_gpu=False, vnni=VNNI, int8=int8)


@pytest.mark.parametrize(
    ("env", "configured", "expected"),
    [
        (None, "auto", "auto"),  # nothing set: the config
        ("fp32", "auto", "fp32"),  # the environment wins (what the test suite sets)
        ("int8", "fp32", "int8"),
        ("  ", "int8", "int8"),  # a blank variable counts as unset
    ],
)
def test_precision_setting(monkeypatch: pytest.MonkeyPatch, env, configured, expected) -> None:
    if env is None:
        monkeypatch.delenv("VIDREC_PRECISION", raising=False)
    else:
        monkeypatch.setenv("VIDREC_PRECISION", env)
    assert precision_setting(configured) == expected


def test_a_bad_precision_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDREC_PRECISION", "int4")
    with pytest.raises(ModelError, match=r"\$VIDREC_PRECISION='int4'"):
        precision_setting("auto")


CPUINFO_SERVER = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"


@pytest.mark.parametrize(
    ("text", "vnni"),
    [
        (CPUINFO_SERVER, ("avx512_vnni",)),  # a server part: AVX-512 VNNI
        ("flags\t: sse avx2 avx_vnni\n", ("avx_vnni",)),  # a client part: AVX-VNNI
        ("flags\t: sse avx2 avx512_vnni avx_vnni\n", ("avx512_vnni", "avx_vnni")),  # both, as on this machine
        ("flags\t: sse avx2 fma\n", ()),  # AVX2 only
        ("flags\t: avx512_vnni\n\nflags\t: avx2\n", ()),  # only what every core has counts
        ("Features\t: fp asimd asimddp\n", ()),  # Arm: no x86 VNNI
        ("", ()),  # nothing readable
    ],
)
def test_vnni_from_cpuinfo(text: str, vnni: tuple[str, ...]) -> None:
    assert vnni_flags(parse_cpu_flags(text)) == vnni


def test_this_machine_reads_its_flags(tmp_path) -> None:
    # /proc/cpuinfo lists some flag on any Linux machine; a missing file reads as no flags.
    assert "fpu" in read_cpu_flags() or "fp" in read_cpu_flags()
    assert read_cpu_flags(tmp_path / "missing") == frozenset()


BOX = [0, 0, 100, 100]


@pytest.mark.parametrize(
    ("reference", "candidate", "matched"),
    [
        ([BOX], [BOX], 1),  # identical
        ([BOX], [[0, 0, 100, 95]], 1),  # IoU 0.95
        ([BOX], [[0, 0, 100, 85]], 0),  # IoU 0.85: below 0.9
        ([BOX, [200, 200, 300, 300]], [BOX], 1),  # one fp32 box lost
        ([BOX, [1, 1, 101, 101]], [BOX], 1),  # one int8 box cannot match two fp32 boxes
        ([BOX], [], 0),  # int8 found nothing
        ([], [BOX], 0),  # nothing to match
    ],
)
def test_matched_boxes(reference, candidate, matched) -> None:
    assert matched_boxes(np.array(reference, np.float32).reshape(-1, 4), np.array(candidate, np.float32).reshape(-1, 4), 0.9) == matched


def test_iou_matrix_numbers() -> None:
    iou = iou_matrix(np.array([BOX]), np.array([[50, 0, 150, 100], [0, 0, 100, 100], [0, 0, 0, 0]]))
    np.testing.assert_allclose(iou, [[50 * 100 / (2 * 100 * 100 - 50 * 100), 1.0, 0.0]])


def _report(checks: list[GuardCheck], speed: list[SpeedPoint]) -> GuardReport:
    return GuardReport(role="recognizer", fp32_path="a.onnx", fp32_sha256="a", int8_path="b.onnx", int8_sha256="b", checks=checks, speed=speed)


PASS = GuardCheck("recall", 0.0, -0.02, True)
FAIL = GuardCheck("recall", -0.05, -0.02, False)


@pytest.mark.parametrize(
    ("checks", "speed", "speedup", "passed"),
    [
        # x2 at every batch: passes
        ([PASS], [SpeedPoint(1, 10, 5), SpeedPoint(4, 40, 20), SpeedPoint(8, 80, 40)], 2.0, True),
        # geometric mean of x1.0 and x1.44 = x1.2: passes
        ([PASS], [SpeedPoint(1, 10, 10), SpeedPoint(4, 14.4, 10)], 1.2, True),
        # just under the bar: quality alone is not enough
        ([PASS], [SpeedPoint(1, 10.5, 10)], 1.05, False),
        # fast but wrong
        ([FAIL], [SpeedPoint(1, 10, 5)], 2.0, False),
        # no check measured: never passes
        ([], [SpeedPoint(1, 10, 5)], 2.0, False),
    ],
)
def test_report_verdict(checks, speed, speedup, passed) -> None:
    report = _report(checks, speed)
    assert report.speedup == pytest.approx(speedup)
    assert report.passed is passed
    assert (report.failures() == "") is passed
    assert GuardReport.from_json(report.to_json()) == report
    assert MIN_SPEEDUP == 1.1  # the bar the cases above are written for


@pytest.mark.parametrize(
    ("channel_absmax", "low", "high", "uneven"),
    [
        # every channel spans most of the range
        ([1.0, 0.8, 0.9, 1.0], -1.0, 1.0, False),
        # PicoDet's stem: channels from ±4 to ±500 under one scale (step ~3.9): most narrow ones are noise
        ([500.0, 250.0, 4.0, 3.0, 2.0, 300.0], -500.0, 500.0, True),
        # one narrow channel in twenty is tolerated (5 % <= 10 %)
        ([10.0] * 19 + [0.01], -10.0, 10.0, False),
        # a tensor of zeros has no scale to judge
        ([0.0, 0.0], 0.0, 0.0, False),
    ],
)
def test_uneven_tensors(channel_absmax, low, high, uneven) -> None:
    ranges = {"t": TensorRange(low, high, np.array(channel_absmax))}
    assert (uneven_tensors(ranges) == {"t"}) is uneven
