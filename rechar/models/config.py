"""Model configurations: typed dataclasses, scales, and overrides from TOML/JSON files.

Every number of the model specification is a dataclass default (the ``paper`` scale). Scales cap
the fields marked ``rows`` (embedding-table rows) and ``seq`` (behaviour-sequence length);
overrides from a config file are applied after the cap, so a user can set any field explicitly.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from pathlib import Path
from typing import Any

from rechar.errors import UserError

#: Per-scale caps: (max embedding-table rows, max behaviour-sequence length). None = no cap.
SCALES: dict[str, tuple[int | None, int | None]] = {
    "paper": (None, None),
    "small": (100_000, None),
    "tiny": (1_000, 8),
}
SCALE_HELP = (
    "paper: the study's sizes (2.5-4 GB of embeddings per model); "
    "small: tables capped at 100,000 rows (default; ~10-120 MB per model); "
    "tiny: tables capped at 1,000 rows and sequences at 8 (unit tests)"
)
DEFAULT_SCALE = "small"


def rows(default: Any) -> Any:
    """A field holding embedding-table row counts (int or tuple of ints); capped by the scale."""
    return _field(default, role="rows")


def seq(default: int) -> Any:
    """A field holding a behaviour-sequence length; capped by the scale."""
    return _field(default, role="seq")


def _field(default: Any, role: str) -> Any:
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default_factory=lambda d=tuple(default): d, metadata={"role": role})
    return dataclasses.field(default=default, metadata={"role": role})


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Base of every model's config. Subclasses add fields; all are plain JSON-able values."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def scaled(self, scale: str) -> "ModelConfig":
        if scale not in SCALES:
            raise UserError(f"unknown scale {scale!r} (choose from {', '.join(SCALES)})")
        row_cap, seq_cap = SCALES[scale]
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            role = f.metadata.get("role")
            cap = row_cap if role == "rows" else seq_cap if role == "seq" else None
            if cap is None:
                continue
            value = getattr(self, f.name)
            changes[f.name] = tuple(min(v, cap) for v in value) if isinstance(value, tuple) else min(value, cap)
        return dataclasses.replace(self, **changes)

    def with_overrides(self, overrides: dict[str, Any], where: str = "config") -> "ModelConfig":
        hints = typing.get_type_hints(type(self))
        names = {f.name for f in dataclasses.fields(self)}
        changes = {}
        for key, value in overrides.items():
            if key not in names:
                raise UserError(
                    f"{where}: unknown field {key!r} for {type(self).__name__} "
                    f"(fields: {', '.join(sorted(names))})"
                )
            changes[key] = _coerce(hints[key], value, f"{where}: field {key!r}")
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise UserError if values are inconsistent. Subclasses extend."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            for v in values:
                if isinstance(v, int) and v <= 0:
                    raise UserError(f"field {f.name!r} must be positive, got {value!r}")


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check a config-file value against a field's type hint; lists become tuples."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list of {item_type.__name__}, got {value!r}")
        return tuple(_coerce(item_type, v, where) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise UserError(f"{where} must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def load_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a config file: one table (section) per model name, each a mapping of field overrides.

    Example (TOML)::

        [dlrm-rmc1]
        lookups = 40

        [din]
        seq_len = 100
    """
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text.decode())
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise UserError(f"config file {path} must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is malformed: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UserError(f"config file {path}: expected one table per model name, e.g. [dlrm-rmc1]")
    return data
