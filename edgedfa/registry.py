"""One registration mechanism for named implementations (layers, float ops, export handlers,
feedback kinds, ONNX op handlers, the hardware model's layers)."""

from __future__ import annotations

from .errors import EdgeDFAError


class Registry:
    """Name -> implementation; each name registered once; unknown names list what exists."""

    def __init__(self, what: str, attr: str | None = None):
        self.what, self.attr, self.items = what, attr, {}

    def register(self, *names: str):
        """Decorator: the implementation of every name in ``names`` (sets ``obj.<attr>`` to the
        first name when the registry has an ``attr``)."""
        if not names:
            raise EdgeDFAError(f"a {self.what} is registered under at least one name")

        def deco(obj):
            for name in names:
                if name in self.items:
                    old = self.items[name]
                    raise EdgeDFAError(f"{self.what} {name!r} registered twice (already registered: "
                                       f"{getattr(old, '__name__', old)!s})")
            self.items.update(dict.fromkeys(names, obj))
            if self.attr:
                setattr(obj, self.attr, names[0])
            return obj

        return deco

    def __contains__(self, name) -> bool:
        return name in self.items

    def find(self, name):
        """The implementation of ``name``, or None."""
        return self.items.get(name)

    def get(self, name: str, where: str = ""):
        if name not in self.items:
            raise EdgeDFAError(f"{where}unknown {self.what} {name!r}; supported: {', '.join(sorted(self.items))}")
        return self.items[name]

    def names(self) -> list:
        return sorted(self.items)
