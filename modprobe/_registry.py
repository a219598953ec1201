"""Named objects behind a registry, looked up by a config field: the mask methods
(:mod:`modprobe.pruning.methods`) and the probe measures (:mod:`modprobe.probes.measures`)."""
from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Instances of ``base`` by their ``name``, in the order registered (built-ins first).

    ``kind`` names one entry in messages ("mask method"); ``module`` is where users register
    their own (named in the error for an unknown name).
    """

    def __init__(self, kind: str, base: type, module: str):
        self.kind, self.base, self.module = kind, base, module
        self._items: dict[str, T] = {}

    def register(self, item: T, *, replace: bool = False) -> T:
        """Make ``item`` available by its ``name``; returns it. A name registered already is
        refused unless ``replace``."""
        if not isinstance(item, self.base):
            raise TypeError(f"register takes a {self.base.__name__} instance, got "
                            f"{type(item).__name__}")
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{type(item).__name__}.name must be a non-empty string")
        if name in self._items and not replace:
            raise ValueError(f"a {self.kind} named {name!r} is registered already; pick "
                             "another name or pass replace=True")
        self._items[name] = item
        return item

    def unregister(self, name: str) -> None:
        """Remove a registered entry (a no-op for unknown names)."""
        self._items.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """The registered names, built-ins first."""
        return tuple(self._items)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; a ValueError lists the known names."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {list(self._items)} "
                             f"(or register your own with {self.module}.register)") from None
