"""Where each configuration value comes from: built-in default, the TOML file, or a COMFY_GATEWAY_* env var.

The file and the environment are read with pydantic-settings' own sources; this module adds what the
library does not keep: for every dotted key the name of its origin, and the refusal of unknown keys.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, EnvSettingsSource, TomlConfigSettingsSource
from pydantic_settings.exceptions import SettingsError

ENV_PREFIX = "COMFY_GATEWAY_"
ENV_NESTED_DELIMITER = "__"
CONFIG_PATH_ENV = "COMFY_GATEWAY_CONFIG"  # names the file; not a setting itself
BUILD_ENV = "COMFY_GATEWAY_COMPILE"  # read by setup.py when the gateway is built; left set, not a setting either
DEFAULT_SOURCE = "default"
_MAX_SHOWN_INPUT_CHARS = 80

KeyPath = tuple[str, ...]


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def dotted(path: Iterable[str]) -> str:
    """("backends", "gpu.box", "url") -> 'backends."gpu.box".url' (TOML's dotted-key spelling)."""
    return ".".join(part if _BARE_KEY.match(part) else json.dumps(part, ensure_ascii=False) for part in path)


def gateway_env_vars(env: Mapping[str, str]) -> dict[str, str]:
    """The env vars addressed to the gateway's settings (names compared case-insensitively, like the library)."""
    return {
        name: value
        for name, value in env.items()
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in (CONFIG_PATH_ENV, BUILD_ENV)
    }


def env_key_path(name: str) -> KeyPath:
    """COMFY_GATEWAY_BACKENDS__COMFYUI__URL -> ("backends", "comfyui", "url")."""
    return tuple(name[len(ENV_PREFIX) :].lower().split(ENV_NESTED_DELIMITER))


class _GivenEnvSource(EnvSettingsSource):
    """The library's env source reading a given mapping instead of os.environ (load_settings(env=...))."""

    def __init__(self, settings_cls: type[BaseSettings], env_vars: Mapping[str, str]) -> None:
        self._given_env_vars = env_vars
        super().__init__(
            settings_cls,
            case_sensitive=False,
            env_prefix=ENV_PREFIX,
            env_nested_delimiter=ENV_NESTED_DELIMITER,
            env_ignore_empty=True,
        )

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Empty means unset: `VAR=${UNSET}` in a compose file must not turn output_root into ".".
        return {name.lower(): value for name, value in self._given_env_vars.items() if value != ""}


class EnvValueError(ValueError):
    """An env var holds a list or table that is not valid JSON."""


def read_env_layer(settings_cls: type[BaseSettings], env_vars: Mapping[str, str]) -> dict[str, Any]:
    """Nested values from env vars ("__" splits keys; lists and tables as JSON). Raises EnvValueError."""
    try:
        data = _GivenEnvSource(settings_cls, env_vars)()
    except SettingsError as exc:
        # The library names only the field; name the variables that feed it.
        field = re.search(r'field "([^"]+)"', str(exc))
        top = field.group(1) if field else ""
        named = [f"{name}={value!r}" for name, value in sorted(env_vars.items()) if env_key_path(name)[0] == top]
        raise EnvValueError(
            f"{top} from env {', '.join(named) or '(unknown variable)'}: lists and tables in env vars "
            f"must be JSON, e.g. COMFY_GATEWAY_USER_HEADERS='[\"comfy-user\"]' ({exc})"
        ) from exc
    decoded: dict[str, Any] = _nested_json_decoded(settings_cls, data, ())
    return decoded


def _nested_json_decoded(shape: type[BaseModel] | _MappingOf | None, value: Any, prefix: KeyPath) -> Any:
    """`value` with the lists and tables given as JSON text inside a table of names decoded (the library decodes
    them only where it knows the field: not below `backends`, whose keys are free names)."""
    if not isinstance(value, Mapping) or shape is None:
        return value
    if isinstance(shape, _MappingOf):
        return {name: _nested_json_decoded(shape.value, sub, prefix + (name,)) for name, sub in value.items()}
    decoded = {}
    for key, sub in value.items():
        field = shape.model_fields.get(key)
        if field is not None and isinstance(sub, str) and prefix and _is_collection(field.annotation):
            try:
                sub = json.loads(sub)
            except ValueError:
                raise EnvValueError(
                    f"{dotted(prefix + (key,))} from env: lists and tables in env vars must be JSON, e.g. "
                    f"COMFY_GATEWAY_BACKENDS__COMFYUI__URLS='[\"http://gpu1:8188\"]' (not JSON: {sub[:80]!r})"
                ) from None
        decoded[key] = _nested_json_decoded(_shape_of(field.annotation), sub, prefix + (key,)) if field else sub
    return decoded


def _is_collection(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_collection(arg) for arg in typing.get_args(annotation))
    return origin in (tuple, list, dict, Mapping)


def read_toml_layer(settings_cls: type[BaseSettings], path: Path) -> dict[str, Any]:
    """The parsed file. Raises tomllib.TOMLDecodeError (its message has the line) or OSError."""
    return TomlConfigSettingsSource(settings_cls, toml_file=path).toml_data


@dataclass(frozen=True)
class _MappingOf:
    """A table whose keys are free names (like `backends`) and whose values all have one shape."""

    value: type[BaseModel] | _MappingOf | None


def _shape_of(annotation: Any) -> type[BaseModel] | _MappingOf | None:
    """A model, a table of names, or None for a leaf value."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        non_none = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _shape_of(non_none[0]) if len(non_none) == 1 else None
    if origin in (dict, Mapping):
        return _MappingOf(_shape_of(typing.get_args(annotation)[1]))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def unknown_keys(model_cls: type[BaseModel], data: Mapping[str, Any]) -> list[str]:
    """Dotted keys in parsed file data that name no setting."""
    found: list[str] = []

    def walk(shape: type[BaseModel] | _MappingOf | None, value: Any, prefix: KeyPath) -> None:
        if not isinstance(value, Mapping):
            return  # a wrong type is pydantic's to report
        if isinstance(shape, _MappingOf):
            for name, sub in value.items():
                walk(shape.value, sub, prefix + (name,))
        elif shape is not None:
            for key, sub in value.items():
                field = shape.model_fields.get(key)
                if field is None:
                    found.append(dotted(prefix + (key,)))
                else:
                    walk(_shape_of(field.annotation), sub, prefix + (key,))

    walk(model_cls, data, ())
    return found


def unknown_env_vars(model_cls: type[BaseModel], env_vars: Mapping[str, str]) -> list[tuple[str, str]]:
    """(env var name, dotted key) for each COMFY_GATEWAY_* var that names no setting."""
    return [
        (name, dotted(env_key_path(name))) for name in sorted(env_vars) if not _is_known(model_cls, env_key_path(name))
    ]


def _is_known(model_cls: type[BaseModel], path: KeyPath) -> bool:
    shape: type[BaseModel] | _MappingOf | None = model_cls
    for segment in path:
        if isinstance(shape, _MappingOf):
            if not segment:
                return False
            shape = shape.value
        elif shape is not None and segment in shape.model_fields:
            shape = _shape_of(shape.model_fields[segment].annotation)
        else:
            return False
    return True


def flatten(data: Mapping[str, Any], prefix: KeyPath = ()) -> dict[KeyPath, Any]:
    """Leaves of nested tables by key path; an empty table is a leaf (it was given, so it has a source)."""
    leaves: dict[KeyPath, Any] = {}
    for key, value in data.items():
        path = prefix + (str(key),)
        if isinstance(value, Mapping) and value:
            leaves.update(flatten(value, path))
        else:
            leaves[path] = value
    return leaves


def merge_layers(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge, later layers winning key by key; inputs are not modified."""
    merged: dict[str, Any] = {}
    for layer in layers:
        _merge_into(merged, layer)
    return merged


def _merge_into(target: dict[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in layer.items():
        if isinstance(value, Mapping):
            current = target.get(key)
            target[key] = _merge_into(current if isinstance(current, dict) else {}, value)
        else:
            target[key] = value
    return target


@dataclass(frozen=True)
class ValueOrigins:
    """Answers "where did this key's value come from?" for leaves, tables and error locations."""

    file_label: str | None
    file_keys: frozenset[KeyPath]
    env_keys: Mapping[KeyPath, str]  # leaf key path -> the env var that set it
    default_table_keys: frozenset[KeyPath]  # leaves of built-in tables (backends) kept under file and env
    # key path -> the command-line flag that set it
    cli_keys: Mapping[KeyPath, str] = field(default_factory=lambda: types.MappingProxyType({}))

    @classmethod
    def build(
        cls,
        file_label: str | None,
        file_leaves: Mapping[KeyPath, Any],
        env_leaves: Mapping[KeyPath, Any],
        env_vars: Mapping[str, str],
        default_table_leaves: Mapping[KeyPath, Any],
        cli_keys: Mapping[KeyPath, str] | None = None,
    ) -> ValueOrigins:
        var_paths = {env_key_path(name): name for name in env_vars}
        env_keys = {leaf: _setting_var(leaf, var_paths) for leaf in env_leaves}
        return cls(
            file_label,
            frozenset(file_leaves),
            env_keys,
            frozenset(default_table_leaves),
            types.MappingProxyType(dict(cli_keys or {})),
        )

    def origin_of(self, path: KeyPath) -> str:
        """The flag, env var or file that set `path` (or a table holding it), else what set keys under it."""
        if path in self.cli_keys:  # the command line beats everything; its flags name leaves only
            return self.cli_keys[path]
        for end in range(len(path), 0, -1):  # env beats the file at any depth
            if path[:end] in self.env_keys:
                return f"env {self.env_keys[path[:end]]}"
        for end in range(len(path), 0, -1):
            if path[:end] in self.file_keys:
                return str(self.file_label)
        below: list[str] = []
        if any(key[: len(path)] == path for key in self.default_table_keys - self.env_keys.keys()):
            below.append(DEFAULT_SOURCE)
        if any(key[: len(path)] == path for key in self.file_keys):
            below.append(str(self.file_label))
        below += sorted({f"env {var}" for key, var in self.env_keys.items() if key[: len(path)] == path})
        return " and ".join(below) if below else DEFAULT_SOURCE


def env_var_of(path: Iterable[str]) -> str:
    """("backends", "comfyui", "url") -> COMFY_GATEWAY_BACKENDS__COMFYUI__URL: the variable that sets a key."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(path).upper()


def _setting_var(leaf: KeyPath, var_paths: Mapping[KeyPath, str]) -> str:
    for end in range(len(leaf), 0, -1):
        if leaf[:end] in var_paths:
            return var_paths[leaf[:end]]
    return env_var_of(leaf)


# Sections whose values may be secrets, never echoed in an error.
SECRET_SECTIONS = frozenset({"security"})


def describe_validation_error(error: ErrorDetails, origins: ValueOrigins) -> str:
    """One pydantic error as "key: what is wrong (value ... from source)"."""
    loc = tuple(str(part) for part in error["loc"])
    if error["type"] == "missing":
        parent = loc[:-1]
        holder = f"{dotted(parent)} from {origins.origin_of(parent)}" if parent else "top level"
        return f"{dotted(loc)} is required but not set ({holder})"
    message = error["msg"].removeprefix("Value error, ")
    if loc and loc[0] in SECRET_SECTIONS:  # its values are tokens: the message names the key, never the value
        return f"{dotted(loc)}: {message} (from {origins.origin_of(loc)})"
    shown = repr(error["input"])
    if len(shown) > _MAX_SHOWN_INPUT_CHARS:
        shown = shown[: _MAX_SHOWN_INPUT_CHARS - 3] + "..."
    return f"{dotted(loc) or 'settings'}: {message} (value {shown} from {origins.origin_of(loc)})"
