"""A package's public names, loaded on first use (PEP 562), so that importing one light part of
a package never pulls in the heavy dependencies (torch) of another."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_faces(package: str, faces: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``faces[name]`` (a module path) on first use."""

    def load(name: str) -> Any:
        if name not in faces:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(faces[name]), name)

    return load
