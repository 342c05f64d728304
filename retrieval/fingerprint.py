"""Model fingerprints: a sha256 over a model folder's config and weight files.

The fingerprint names the model in cache keys and manifests, so a changed model can never read
another model's vectors. Hashing ~90 MB costs a fraction of a second; it is still computed once
per folder state (path, sizes, mtimes) and remembered in memory and, when given, in a JSON store.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from catalog.fsutil import write_json

_PATTERNS = ("*.json", "*.safetensors", "*.bin", "*.txt", "*.model", "*.onnx")
_IGNORED = {"README.md", "duorank-card.json"}
_memo: dict[str, str] = {}
_lock = threading.Lock()


def model_files(folder: Path) -> list[Path]:
    """The files that define a model: configs, tokenizer files and weights (sorted)."""
    files: set[Path] = set()
    for pattern in _PATTERNS:
        files.update(p for p in folder.rglob(pattern) if p.is_file() and p.name not in _IGNORED)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _signature(folder: Path, files: list[Path]) -> str:
    parts = [str(folder.resolve())]
    for f in files:
        st = f.stat()
        parts.append(f"{f.relative_to(folder).as_posix()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def model_fingerprint(folder: str | Path, store: Path | None = None) -> str:
    """sha256 (hex) over the relative names and bytes of a model folder's defining files.

    Args:
        folder: the model folder.
        store: optional JSON file remembering fingerprints across processes.

    Raises:
        FileNotFoundError: the folder does not exist or holds no model files.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"model folder not found: {root}")
    files = model_files(root)
    if not files:
        raise FileNotFoundError(f"no model files (*.json, *.safetensors, ...) in {root}")
    signature = _signature(root, files)
    stored: dict[str, str] = {}
    if store is not None and store.exists():
        try:
            stored = json.loads(store.read_text())
        except (OSError, json.JSONDecodeError):
            stored = {}
    with _lock:
        value = _memo.get(signature) or stored.get(signature)
    if value is None:
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.relative_to(root).as_posix().encode() + b"\0")
            with f.open("rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
        value = digest.hexdigest()
    with _lock:
        _memo[signature] = value
    if store is not None and stored.get(signature) != value:
        stored[signature] = value
        write_json(store, stored)
    return value
