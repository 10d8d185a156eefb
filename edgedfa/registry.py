"""One registration mechanism for named implementations (layers by op, feedback kinds)."""

from __future__ import annotations

from .errors import EdgeDFAError


class Registry:
    """Name -> class; each name registered once; unknown names list what exists."""

    def __init__(self, what: str, attr: str):
        self.what, self.attr, self.items = what, attr, {}

    def register(self, name: str):
        """Class decorator: the implementation of ``name`` (sets ``cls.<attr> = name``)."""

        def deco(cls):
            if name in self.items:
                raise EdgeDFAError(f"{self.what} {name!r} registered twice")
            setattr(cls, self.attr, name)
            self.items[name] = cls
            return cls

        return deco

    def __contains__(self, name) -> bool:
        return name in self.items

    def get(self, name: str, where: str = ""):
        if name not in self.items:
            raise EdgeDFAError(f"{where}unknown {self.what} {name!r}; supported: {', '.join(sorted(self.items))}")
        return self.items[name]

    def names(self) -> list:
        return sorted(self.items)
