"""A package's face: the names it offers, each loaded from its module on first use.

A face that imported its modules eagerly would make ``from ..search.store import mask_url``
load the storage (Optuna, SQLAlchemy) for a URL helper, and would tie the packages' import
orders together; a table of names (PEP 562's module ``__getattr__``) keeps each import as
cheap and as ordered as importing the one module, and the table says what the package offers.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_face(package: str, table: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, offering each name of ``table`` (name ->
    module of the package that defines it)."""

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} offers no {name!r}; it offers {', '.join(sorted(table))}")
        return getattr(import_module(f"{package}.{table[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(table)

    return __getattr__, __dir__
