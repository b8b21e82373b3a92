"""Config: PP-ShiTu keys keep their names; anything wrong fails with one line naming file, key and what is allowed."""
from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, load_config, parse_override


def test_defaults_load_with_ppshitu_names() -> None:
    cfg = load_config()
    assert cfg.Global.rec_nms_thresold == 0.05
    assert cfg.IndexProcess.index_method == "Flat"
    assert cfg.IndexProcess.delimiter == "\t"
    assert [next(iter(op)) for op in cfg.RecPreProcess.transform_ops] == ["ResizeImage", "NormalizeImage", "ToCHWImage"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["Global.threshold=0.3"], ("Global", "threshold", 0.3)),
        (["Global.use_gpu=true"], ("Global", "use_gpu", True)),
        (["IndexProcess.index_method=HNSW32"], ("IndexProcess", "index_method", "HNSW32")),
        (["IndexProcess.delimiter= "], ("IndexProcess", "delimiter", " ")),
        # PaddleClas's config spells label_list "labe_list" in one copy; both are accepted.
        (["Global.labe_list=[thing]"], ("Global", "label_list", ["thing"])),
        (["Global.batch_size=2", "Global.batch_size=8"], ("Global", "batch_size", 8)),  # last one wins
    ],
)
def test_overrides_apply(overrides: list[str], expected: tuple[str, str, object]) -> None:
    section, key, value = expected
    assert getattr(getattr(load_config(overrides=overrides), section), key) == value


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["Global.batch_size=0"], ["-o Global.batch_size=0", "Global.batch_size", ">= 1"]),
        (["Global.threshold=-0.1"], ["Global.threshold", ">= 0"]),
        (["IndexProcess.score_thres=1.5"], ["IndexProcess.score_thres", "<= 1"]),
        (["Global.batchsize=4"], ["Global.batchsize", "unknown key", "batch_size"]),
        (["Globl.threshold=0.3"], ["Globl", "unknown key", "Global"]),
        (["IndexProcess.index_method=LSH"], ["IndexProcess.index_method", "'Flat'", "'HNSW32'"]),
        (["IndexProcess.dist_type=hamming"], ["IndexProcess.dist_type", "'IP'"]),
        (["Global.use_gpu=maybe"], ["Global.use_gpu", "boolean"]),
        (["Global.threshold"], ["-o Global.threshold", "Section.key=value"]),
        (["Kafka.topic=bad topic!"], ["Kafka.topic"]),
    ],
)
def test_bad_overrides_name_the_option_and_key(overrides: list[str], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad_value = tmp_path / "bad.yaml"
    bad_value.write_text("Global:\n  max_det_results: -1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: Global\.max_det_results: .*>= 0"):
        load_config(bad_value)

    broken = tmp_path / "broken.yaml"
    broken.write_text("Global: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:2: invalid YAML"):
        load_config(broken)

    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")

    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping"):
        load_config(not_mapping)


def test_ppshitu_inference_general_yaml_loads(tmp_path: Path) -> None:
    """The shape of PaddleClas's deploy/configs/inference_general.yaml (its keys, our values)."""
    path = tmp_path / "inference_general.yaml"
    path.write_text(
        """
Global:
  infer_imgs: "./drink_dataset_v2.0/test_images/100.jpeg"
  det_inference_model_dir: "./models/picodet_PPLCNet_x2_5_mainbody_lite_v1.0_infer"
  rec_inference_model_dir: "./models/general_PPLCNetV2_base_pretrained_v1.0_infer"
  rec_nms_thresold: 0.05
  batch_size: 1
  image_shape: [3, 640, 640]
  threshold: 0.2
  max_det_results: 5
  label_list:
  - foreground
  use_gpu: True
  enable_mkldnn: True
  cpu_num_threads: 10
  enable_benchmark: True
  use_fp16: False
  ir_optim: True
  use_tensorrt: False
  gpu_mem: 8000
  enable_profile: False
DetPreProcess:
  transform_ops:
    - DetResize:
        interp: 2
        keep_ratio: false
        target_size: [640, 640]
    - DetNormalizeImage:
        is_scale: true
        mean: [0.485, 0.456, 0.406]
        std: [0.229, 0.224, 0.225]
    - DetPermute: {}
DetPostProcess: {}
RecPreProcess:
  transform_ops:
    - ResizeImage:
        size: 224
    - NormalizeImage:
        scale: 0.00392157
        mean: [0.485, 0.456, 0.406]
        std: [0.229, 0.224, 0.225]
        order: ''
    - ToCHWImage:
RecPostProcess: null
IndexProcess:
  index_method: "HNSW32"
  image_root: "./drink_dataset_v2.0/gallery/"
  index_dir: "./drink_dataset_v2.0/index"
  data_file:  "./drink_dataset_v2.0/gallery/drink_label.txt"
  index_operation: "new"
  delimiter: "\\t"
  dist_type: "IP"
  embedding_size: 512
  batch_size: 32
  return_k: 5
  score_thres: 0.5
"""
    )
    cfg = load_config(path, ["Global.use_gpu=False"])
    assert cfg.IndexProcess.index_method == "HNSW32"
    assert cfg.IndexProcess.delimiter == "\t"
    assert cfg.IndexProcess.embedding_size == 512
    assert cfg.Global.cpu_num_threads == 10
    assert cfg.Global.use_gpu is False
    # the user's file replaces the default op list, it is not merged item by item
    assert cfg.RecPreProcess.transform_ops[1]["NormalizeImage"]["scale"] == 0.00392157


def test_parse_override_parses_yaml_values() -> None:
    assert parse_override("Global.image_shape=[3, 320, 320]") == (["Global", "image_shape"], [3, 320, 320])
    assert parse_override("Kafka.bootstrap=127.0.0.1:9092") == (["Kafka", "bootstrap"], "127.0.0.1:9092")
