"""JsonlSink against the real filesystem: schema-valid lines, atomic finish, nothing left on abort."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from stream.errors import SinkError
from stream.messages import FrameResult, load_schema
from stream.sinks.jsonl import JsonlSink
from tests.factories import make_result


def test_lines_validate_and_file_appears_only_on_close(tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.jsonl"  # parent created by the sink
    results = [make_result("cam-a", i) for i in range(7)]
    sink = JsonlSink(path)
    for r in results:
        sink.write(r)
    assert not path.exists(), "final file visible before close()"
    assert path.with_name("results.jsonl.partial").exists()
    sink.close()
    assert path.is_file()
    assert not path.with_name("results.jsonl.partial").exists()

    validator = jsonschema.Draft202012Validator(load_schema())
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(results)
    for line, r in zip(lines, results):
        data = json.loads(line)
        validator.validate(data)
        assert line == r.to_json()
        assert FrameResult.from_dict(data).frame_index == r.frame_index


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    sink = JsonlSink(path)
    sink.write(make_result("cam-a", 0))
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_context_manager_aborts_on_error(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with pytest.raises(RuntimeError):
        with JsonlSink(path) as sink:
            sink.write(make_result("cam-a", 0))
            raise RuntimeError("job failed")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_directory_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    path = blocker / "results.jsonl"
    with pytest.raises(SinkError, match="not-a-dir/results.jsonl"):
        JsonlSink(path)
