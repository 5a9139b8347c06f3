"""Reading and writing the JSON manifests of export and run folders."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rechar.errors import UserError


def read_manifest_file(folder: str | Path, filename: str, kind: str, required_key: str) -> dict[str, Any]:
    """The JSON object in ``folder/filename``, or a UserError naming what is wrong with it."""
    folder = Path(folder)
    path = folder / filename
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{folder} is not {kind} folder (no {filename})") from None
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is unreadable: {e}") from None
    if not isinstance(data, dict) or required_key not in data:
        raise UserError(f"{path} is not {kind} manifest")
    return data


def write_json_atomic(path: Path, data: Any) -> None:
    """Write under a temporary name, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
