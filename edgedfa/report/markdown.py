"""Markdown pieces of the summaries: tables and numbers a reader scans."""

from __future__ import annotations


def table(headers: list, rows: list) -> str:
    """A markdown table; cells are written as given (format them first)."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return "\n".join([line(headers), "|" + "|".join("---" for _ in headers) + "|"] + [line(r) for r in rows])


def pct(v, digits: int = 1) -> str:
    """A fraction 0..1 as a percentage."""
    return "—" if v is None or v != v else f"{100 * v:.{digits}f} %"


def num(v, digits: int = 0) -> str:
    """A number with thousands separators; a dash when absent."""
    if v is None or v != v:
        return "—"
    if isinstance(v, bool) or isinstance(v, str):
        return str(v)
    return f"{v:,.{digits}f}"


def bits(v) -> str:
    """A size in bits, with KiB beside it."""
    return "—" if v is None else f"{v:,.0f} ({v / 8192:,.1f} KiB)"


def image(path: str, alt: str) -> str:
    return f"![{alt}]({path})"
