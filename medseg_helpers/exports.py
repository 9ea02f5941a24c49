"""Lazy public API for the subpackages: ``from medseg_helpers import viz; viz.show_slice``.

Each subpackage's ``__init__`` lists which of its modules defines each public name.
A name's module is imported on first use, so importing a subpackage stays cheap
(no torch or matplotlib until needed) and subpackages can use each other without
import cycles through their ``__init__`` files.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for ``package``.

    Args:
        package: the subpackage's ``__name__``.
        exports: ``{public name: module name inside the package}``.

    Returns:
        ``(__getattr__, __dir__)`` to assign in the package's ``__init__``.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{exports[name]}")
        return getattr(module, name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
