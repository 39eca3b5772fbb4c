"""Files of a run, written atomically and read safely.

Every write goes to a temporary file in the same folder, is flushed and fsync'ed, then renamed
over the target: a run killed at any moment leaves the old file or the new one, never a torn
one. Checkpoints hold tensors and plain data only and are read with ``weights_only=True``.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path

import torch
import yaml

from .errors import RdfcilError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write_with(path, lambda handle: handle.write(data))


def atomic_write_with(path: str | Path, write) -> None:
    """``write(handle)`` into a temporary file beside ``path``, fsync, rename over ``path``
    (streams large files, e.g. ``np.save``, without a copy in memory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_text(data, indent: int | None = 1) -> str:
    """``data`` as strict JSON (RFC 8259): a NaN or an infinity raises :class:`RdfcilError`
    naming where it is, since strict parsers (``jq``, browsers, most languages) reject the
    ``NaN`` / ``Infinity`` that Python's ``json`` writes by default."""
    try:
        return json.dumps(data, indent=indent, allow_nan=False)
    except ValueError:
        raise RdfcilError(f"cannot write strict JSON: {nonfinite_path(data) or 'a value'} is NaN or infinite") from None


def nonfinite_path(data, at: str = "") -> str | None:
    """Where the first non-finite float of nested dicts and lists is, e.g. ``accuracy_matrix[1][1]``."""
    if isinstance(data, float):
        return None if math.isfinite(data) else at or "the value"
    if isinstance(data, dict):
        items = [(f"{at}.{key}" if at else str(key), value) for key, value in data.items()]
    elif isinstance(data, (list, tuple)):
        items = [(f"{at}[{i}]", value) for i, value in enumerate(data)]
    else:
        return None
    for where, value in items:
        found = nonfinite_path(value, where)
        if found:
            return found
    return None


def write_json(path: str | Path, data) -> None:
    """Strict JSON (:func:`json_text`), written atomically."""
    atomic_write_text(path, json_text(data) + "\n")


def read_json(path: str | Path):
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RdfcilError(f"cannot read '{path}': {type(err).__name__}: {str(err).splitlines()[0]}") from None


def write_yaml(path: str | Path, data: dict) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def nonfinite_tensors(state, prefix: str = "") -> list[str]:
    """The dotted names of the floating-point tensors in nested dicts and lists holding a NaN or
    an infinity (e.g. ``model.backbone.bn1.running_var``)."""
    if isinstance(state, torch.Tensor):
        return [prefix or "tensor"] if state.is_floating_point() and not torch.isfinite(state).all() else []
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else []
    return [name for key, value in items for name in nonfinite_tensors(value, f"{prefix}.{key}" if prefix else str(key))]


def save_checkpoint(path: str | Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load with ``weights_only=True``; a tampered, truncated or corrupt file is one line."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise RdfcilError(f"checkpoint '{path}' does not exist") from None
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            reason = "it holds objects other than tensors and plain data (refused: loading it could run code)"
        else:
            reason = f"it is truncated or corrupt ({type(err).__name__}: {first[:120]})"
        raise RdfcilError(f"cannot load checkpoint '{path}': {reason}; delete it to retrain that task") from None
