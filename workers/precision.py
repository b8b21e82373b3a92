"""Which precision each model runs in — fp32 or its int8 copy — and why (``Global.precision``).

``vidrec models quantize`` (workers/models_quantize.py) writes, for an fp32 model file, an int8 copy and a
guard report (JSON) into the model cache (``int8_files``). The report binds the int8 file to the fp32 file by
both files' sha256 and holds what was measured on this machine: the quality checks against fp32 and the
speed at batch 1/4/8.

``Global.precision``:

* ``fp32``: the fp32 file, always;
* ``int8``: the int8 copy, even where its guard failed or VNNI is missing (said in the reason); an int8 copy
  that is missing, made from another fp32 file, or changed since its guard ran is an error;
* ``auto`` (default): the int8 copy only on a CPU with VNNI (``models/cpu_features.py``), with the ONNX
  backend on CPU, when its report belongs to this very fp32 file and this very int8 file, its quality checks
  passed and it measured faster; otherwise fp32, with the reason.

The environment variable ``VIDREC_PRECISION`` (fp32 | int8 | auto), when set, replaces the config's value:
the test suite sets it to fp32 (tests/conftest.py) so that the models' numbers the tests were written for do
not change with what the machine's cache holds; the tests about int8 choose it themselves.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from models.cpu_features import read_cpu_flags, vnni_flags
from models.errors import ModelError
from models.resolve import cache_dir, sha256_of

log = logging.getLogger(__name__)

Precision = Literal["fp32", "int8"]
Setting = Literal["auto", "fp32", "int8"]
Role = Literal["detector", "recognizer"]
PRECISION_ENV = "VIDREC_PRECISION"
INT8_SUFFIX = ".int8.onnx"
REPORT_SUFFIX = ".int8.json"
REPORT_FORMAT = 1
# int8 must beat fp32 by this factor (geometric mean over the measured batch sizes) to be picked by auto:
# below it the gain is within this shared machine's noise, and the quality loss buys nothing.
MIN_SPEEDUP = 1.1


# ---- the guard report ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GuardCheck:
    """One measured condition: ``value`` against ``limit`` (``value >= limit`` passes)."""

    name: str
    value: float
    limit: float
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class SpeedPoint:
    batch: int
    fp32_ms: float
    int8_ms: float

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms if self.int8_ms > 0 else 0.0


@dataclass(frozen=True)
class GuardReport:
    role: Role
    fp32_path: str
    fp32_sha256: str
    int8_path: str
    int8_sha256: str
    checks: list[GuardCheck]
    speed: list[SpeedPoint]
    cpu: str = ""
    vnni: list[str] = field(default_factory=list)
    created: str = ""
    quantization: dict[str, Any] = field(default_factory=dict)

    @property
    def quality_passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    @property
    def speedup(self) -> float:
        """Geometric mean of int8's speedup over the measured batch sizes (0 when none was measured)."""
        ratios = [point.speedup for point in self.speed if point.speedup > 0]
        if not ratios:
            return 0.0
        product = 1.0
        for ratio in ratios:
            product *= ratio
        return product ** (1.0 / len(ratios))

    @property
    def faster(self) -> bool:
        return self.speedup >= MIN_SPEEDUP

    @property
    def passed(self) -> bool:
        return self.quality_passed and self.faster

    def failures(self) -> str:
        """What failed, in words ('' when it passed)."""
        parts = [f"{c.name} {c.value:.3f} < {c.limit:.3f}" for c in self.checks if not c.passed]
        if not self.checks:
            parts.append("no quality check was measured")
        if not self.faster:
            parts.append(f"int8 only x{self.speedup:.2f} the speed of fp32 (needs x{MIN_SPEEDUP})")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body.update(
            format=REPORT_FORMAT, passed=self.passed, quality_passed=self.quality_passed, speedup=round(self.speedup, 3),
            min_speedup=MIN_SPEEDUP,
        )
        body["speed"] = [dict(asdict(p), speedup=round(p.speedup, 3)) for p in self.speed]
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> "GuardReport":
        if body.get("format") != REPORT_FORMAT:
            raise ValueError(f"report format {body.get('format')!r}, expected {REPORT_FORMAT}")
        return cls(
            role=body["role"], fp32_path=body["fp32_path"], fp32_sha256=body["fp32_sha256"], int8_path=body["int8_path"],
            int8_sha256=body["int8_sha256"], checks=[GuardCheck(**c) for c in body["checks"]],
            speed=[SpeedPoint(batch=p["batch"], fp32_ms=p["fp32_ms"], int8_ms=p["int8_ms"]) for p in body["speed"]],
            cpu=body.get("cpu", ""), vnni=list(body.get("vnni", [])), created=body.get("created", ""),
            quantization=dict(body.get("quantization", {})),
        )


def int8_files(fp32_path: Path) -> tuple[Path, Path]:
    """Where the int8 copy of ``fp32_path`` and its guard report live: the model cache, in a folder named like
    the fp32 model's folder (so beside the fp32 file when that is in the cache too). Never the fp32 folder
    itself when it is elsewhere: that may be read-only or shared ($VIDREC_MODEL_DIR)."""
    fp32_path = Path(fp32_path)
    folder = cache_dir() / fp32_path.resolve().parent.name
    return folder / f"{fp32_path.stem}{INT8_SUFFIX}", folder / f"{fp32_path.stem}{REPORT_SUFFIX}"


def write_report(report: GuardReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_report(path: Path) -> GuardReport:
    try:
        return GuardReport.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot read int8 guard report {path}: {exc}") from None


# ---- the rule (pure) ----------------------------------------------------------------------------------------
Int8State = Literal["missing", "unreadable", "other_fp32", "changed", "failed", "ok"]


@dataclass(frozen=True)
class Int8Status:
    """What the cache holds for one fp32 file: the state and, in words, what it rests on."""

    state: Int8State
    detail: str = ""
    passed: bool = False  # the report's quality checks held and int8 was faster


@dataclass(frozen=True)
class Decision:
    precision: Precision
    reason: str


def decide(setting: Setting, *, backend: str, use_gpu: bool, vnni: tuple[str, ...], int8: Int8Status) -> Decision:
    """The precision for one model; a ModelError when ``int8`` is asked for and cannot be had."""
    if setting == "fp32":
        return Decision("fp32", "Global.precision is fp32")
    if backend != "onnx" or use_gpu:
        where = f"backend {backend}" if backend != "onnx" else "the GPU"
        if setting == "int8":
            raise ModelError(f"Global.precision=int8 needs ONNX Runtime on CPU (Global.backend=onnx, use_gpu false), not {where}")
        return Decision("fp32", f"int8 models run on ONNX Runtime's CPU provider only, not {where}")
    if int8.state in ("missing", "unreadable", "other_fp32", "changed"):
        if setting == "int8":
            raise ModelError(f"Global.precision=int8 but {int8.detail}: run `vidrec models quantize`")
        return Decision("fp32", int8.detail)
    if setting == "int8":
        notes = ([] if int8.passed else [f"guard failed: {int8.detail}"]) + ([] if vnni else ["this CPU has no VNNI"])
        return Decision("int8", "Global.precision is int8" + (f" ({'; '.join(notes)})" if notes else ""))
    if not vnni:
        return Decision("fp32", "this CPU has no VNNI (avx512_vnni / avx_vnni): int8 would gain little here")
    if not int8.passed:
        return Decision("fp32", f"int8 guard failed: {int8.detail}")
    return Decision("int8", f"int8 guard passed ({int8.detail}); CPU has {', '.join(vnni)}")


# ---- reading the files --------------------------------------------------------------------------------------
def int8_status(fp32_path: Path, fp32_sha256: str | None = None) -> Int8Status:
    """The state of ``fp32_path``'s int8 copy in the cache, checked against both files' sha256."""
    model, report_path = int8_files(fp32_path)
    if not report_path.is_file() or not model.is_file():
        return Int8Status("missing", f"no int8 copy of {fp32_path} in {model.parent} (`vidrec models quantize` makes one)")
    try:
        report = read_report(report_path)
    except ModelError as exc:
        return Int8Status("unreadable", str(exc))
    fp32_sha256 = fp32_sha256 or sha256_of(Path(fp32_path))
    if report.fp32_sha256 != fp32_sha256:
        return Int8Status("other_fp32", f"the int8 copy {model} was made from another fp32 file than {fp32_path} (sha256 differs)")
    if sha256_of(model) != report.int8_sha256:
        return Int8Status("changed", f"the int8 file {model} changed since its guard ran (corrupt or replaced)")
    summary = ", ".join(f"{c.name} {c.value:.3f}" for c in report.checks) + f"; x{report.speedup:.2f} vs fp32"
    return Int8Status("ok", report.failures() if not report.passed else summary, passed=report.passed)


@dataclass(frozen=True)
class ModelChoice:
    """The file a model runs from, its precision and why; what the start-up log and /healthz show."""

    role: Role
    path: Path
    precision: Precision
    reason: str

    def view(self) -> dict[str, str]:
        return {"precision": self.precision, "file": str(self.path), "reason": self.reason}


def precision_setting(configured: str) -> Setting:
    """``VIDREC_PRECISION`` when set (checked), else the configured ``Global.precision``."""
    value = os.environ.get(PRECISION_ENV, "").strip() or configured
    if value not in ("auto", "fp32", "int8"):
        raise ModelError(f"${PRECISION_ENV}={value!r}: expected auto, fp32 or int8")
    return value  # type: ignore[return-value]


def choose_model_file(
    role: Role, fp32_path: Path, *, setting: str, backend: str, use_gpu: bool, cpu_flags: frozenset[str] | None = None
) -> ModelChoice:
    """The file to open for ``role``: ``fp32_path`` or its int8 copy, by ``decide``."""
    fp32_path = Path(fp32_path)
    chosen = precision_setting(setting)
    vnni = vnni_flags(read_cpu_flags() if cpu_flags is None else cpu_flags)
    onnx_cpu = backend == "onnx" and not use_gpu
    status = int8_status(fp32_path) if chosen != "fp32" and onnx_cpu and fp32_path.suffix == ".onnx" else Int8Status("missing", "no int8 copy")
    decision = decide(chosen, backend=backend, use_gpu=use_gpu, vnni=vnni, int8=status)
    path = int8_files(fp32_path)[0] if decision.precision == "int8" else fp32_path
    if status.state in ("changed", "unreadable"):
        log.warning("%s: %s", role, status.detail)
    return ModelChoice(role=role, path=path, precision=decision.precision, reason=decision.reason)
