"""Reading config files safely: every config the suite reads (pretraining and detection configs,
their `_BASE_` chains, plans) is plain YAML read with `yaml.safe_load`, so no config file can run
code; each fault is a one-line ConfigError naming the file.

fvcore's `CfgNode.load_yaml_with_base` falls back to `yaml.unsafe_load` when `allow_unsafe`, which
detectron2's `merge_from_file` sets by default; `SafeConfigFiles` replaces it for the suite's
CfgNodes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import yaml

BASE_KEY = "_BASE_"


class ConfigError(ValueError):
    """A config file or override that does not fit the config's keys and types."""


def read_config_file(
    path: str,
    resolve: Callable[[str], str] = str,
    loader: Callable[[str], type[yaml.SafeLoader]] = lambda path: yaml.SafeLoader,
) -> dict[str, Any]:
    """A YAML config file merged over its `_BASE_` chain (a file, or a list of files merged in
    order; relative to the including file), every file read with `yaml.safe_load`: a tagged value
    (`!!python/...`) is refused, never constructed, so no config file can run code. `resolve` maps
    each name to the file to read (detection configs: `model_zoo://` bases), `loader` each file to
    its `yaml.SafeLoader` (subclass). A file that cannot be read, is not a YAML mapping, or inherits
    itself is a ConfigError naming it."""
    return _read_with_bases(path, resolve, loader, ())


def _read_with_bases(
    name: str,
    resolve: Callable[[str], str],
    loader: Callable[[str], type[yaml.SafeLoader]],
    chain: tuple[str, ...],
) -> dict:
    """`name`'s mapping over its bases; `chain`: the files that inherit it, outermost first."""
    path = resolve(name)
    real = [os.path.realpath(p) for p in chain]
    if os.path.realpath(path) in real:
        cycle = " -> ".join([*chain[real.index(os.path.realpath(path)) :], path])
        raise ConfigError(f"{chain[0]}: {BASE_KEY} cycle: {cycle}")
    data = read_yaml_mapping(path, chain[-1] if chain else None, loader(path))
    merged: dict[str, Any] = {}
    for base in base_paths(data, path):
        _merge_into(_read_with_bases(base, resolve, loader, (*chain, path)), merged, path)
    _merge_into({k: v for k, v in data.items() if k != BASE_KEY}, merged, path)
    return merged


def base_paths(data: dict[str, Any], path: str) -> list[str]:
    """The files `data` (read from `path`) inherits, as paths relative to `path`'s folder."""
    bases = data.get(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(
            f"{path}: {BASE_KEY} must be a file name or a list of them, got {bases!r}"
        )
    return [os.path.join(os.path.dirname(path), os.path.expanduser(b)) for b in bases]


def read_yaml_mapping(
    path: str | os.PathLike,
    included_by: str | None = None,
    loader: type[yaml.SafeLoader] = yaml.SafeLoader,
) -> dict[str, Any]:
    """One config file's YAML mapping (`_BASE_` left in), read with `yaml.safe_load` (or a subclass
    of its loader); every failure is a one-line ConfigError naming the file (and the file whose
    base it is)."""
    where = f" (a {BASE_KEY} of {included_by})" if included_by else ""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {path}{where} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}{where}: {e}") from None
    try:
        data = yaml.load(text, Loader=loader)  # a SafeLoader or a subclass: constructs no objects
    except yaml.constructor.ConstructorError as e:
        line = f" at line {e.problem_mark.line + 1}" if e.problem_mark else ""
        raise ConfigError(
            f"{path}{where}: refused{line}: {e.problem}; a config holds plain YAML values only "
            "(a !!python tag could run code)"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        detail = (
            f"line {mark.line + 1}, column {mark.column + 1}: {e.problem}"
            if mark is not None
            else " ".join(str(e).split())
        )
        raise ConfigError(f"{path}{where}: not valid YAML: {detail}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}{where}: a config is a mapping of KEY: value, got a {type(data).__name__}"
        )
    return data


def _merge_into(a: dict[str, Any], b: dict[str, Any], path: str) -> None:
    """Merge `a` into `b` recursively, `a`'s values winning (fvcore's `_BASE_` semantics)."""
    for key, value in a.items():
        if isinstance(value, dict) and key in b:
            if not isinstance(b[key], dict):
                raise ConfigError(f"{path}: {key} is a section here but a value in its {BASE_KEY}")
            _merge_into(value, b[key], path)
        else:
            b[key] = value


class SafeConfigFiles:
    """A CfgNode mixin (before the CfgNode class) whose files, `_BASE_` chains included, are read
    by `read_config_file` whatever `allow_unsafe` says (detectron2's `merge_from_file` defaults
    it to True). `resolve_config_path` maps a `_BASE_` name to the file to read, `yaml_loader` a
    file to its `yaml.SafeLoader` (subclass)."""

    @classmethod
    def resolve_config_path(cls, filename: str) -> str:
        return filename

    @classmethod
    def yaml_loader(cls, filename: str) -> type[yaml.SafeLoader]:
        return yaml.SafeLoader

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> dict[str, Any]:
        return read_config_file(filename, cls.resolve_config_path, cls.yaml_loader)
