"""Load the YAML config: embedded defaults ← user file ← ``-o Section.key=value`` overrides.

Every problem becomes one ConfigError line naming where the bad value came from (the file or the
``-o`` option), the dotted key, and what is allowed.
"""
from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from config.schema import VidrecConfig

DEFAULT_CONFIG_NAME = "default.yaml"
# PaddleClas's own inference_general.yaml spells label_list as "labe_list" in one copy; accept it.
_KEY_ALIASES = {("Global", "labe_list"): ("Global", "label_list")}


class ConfigError(Exception):
    """A config file or override is unreadable, has an unknown key, or a value out of range."""


def default_config_text() -> str:
    return resources.files("config").joinpath(DEFAULT_CONFIG_NAME).read_text(encoding="utf-8")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (Global, IndexProcess, ...), got {type(data).__name__}")
    return data


def _apply_aliases(data: dict[str, Any]) -> dict[str, Any]:
    for (section, old), (_, new) in _KEY_ALIASES.items():
        sec = data.get(section)
        if isinstance(sec, dict) and old in sec:
            sec[new] = sec.pop(old)
    return data


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(option: str) -> tuple[list[str], Any]:
    """``Global.batch_size=4`` → (["Global", "batch_size"], 4). Values are parsed as YAML scalars/lists."""
    if "=" not in option:
        raise ConfigError(f"-o {option}: expected Section.key=value")
    key, _, raw = option.partition("=")
    path = [part for part in key.strip().split(".")]
    if len(path) < 2 or any(not part for part in path):
        raise ConfigError(f"-o {option}: expected Section.key=value (e.g. -o Global.threshold=0.3)")
    try:
        # A blank value (e.g. a space delimiter) is kept as written, not read as YAML null.
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw  # an unparsable value is taken as a plain string; validation judges it
    return path, value


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"-o {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def _describe(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    ctx = error.get("ctx") or {}
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    bounds = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()), "")
        return f"must be {bounds[kind]} {limit}"
    return error["msg"][0].lower() + error["msg"][1:]


def _allowed_keys(loc: tuple[Any, ...]) -> str:
    """For an unknown key, list the keys its section does allow."""
    model: Any = VidrecConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return ""
        annotation = field.annotation
        model = next((a for a in getattr(annotation, "__args__", (annotation,)) if hasattr(a, "model_fields")), None)
        if model is None:
            return ""
    return ", ".join(model.model_fields)


def load_config(path: Path | str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> VidrecConfig:
    """Build the effective config; raise ConfigError with one line on any problem."""
    defaults = _apply_aliases(yaml.safe_load(default_config_text()) or {})
    user: dict[str, Any] = {}
    source = f"{DEFAULT_CONFIG_NAME} (embedded defaults)"
    if path is not None:
        path = Path(path)
        user = _apply_aliases(_read_yaml(path))
        source = str(path)
    merged = _deep_merge(defaults, user)

    override_origin: dict[tuple[str, ...], str] = {}
    for option in overrides:
        key_path, value = parse_override(option)
        key_path = list(_KEY_ALIASES.get(tuple(key_path), key_path))
        _set_path(merged, key_path, value)
        override_origin[tuple(key_path)] = f"-o {option}"

    try:
        return VidrecConfig.model_validate(merged)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(str(p) for p in error["loc"])
        dotted = ".".join(loc)
        origin = next(
            (o for k, o in override_origin.items() if loc[: len(k)] == k or k[: len(loc)] == loc), source
        )
        detail = _describe(error)
        if error["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            detail += f"; allowed: {allowed}" if allowed else ""
        elif "input" in error and not isinstance(error["input"], dict):
            detail += f" (got {error['input']!r})"
        more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"{origin}: {dotted}: {detail}{more}") from None
