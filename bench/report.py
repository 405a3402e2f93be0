"""Shared table rendering for the bench sections (markdown tables, as in README.md)."""

from __future__ import annotations

Row = tuple[str, str, str, str, str]


def fmt_num(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _txt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return fmt_num(v)


def row(label: str, a, b, *, max_ratio: float | None = None, min_ratio: float | None = None,
        max_abs: float | None = None, abs_unit: str = "") -> Row:
    """One table row: pyvirtd's value ``a`` beside libvirtd's ``b`` (floats, or a reason string).

    Targets: ``max_ratio`` (a/b at most, times), ``min_ratio`` (a/b at least, throughputs),
    ``max_abs`` (pyvirtd's value below this, whatever libvirtd does).
    """
    num = lambda v: v if isinstance(v, (int, float)) else None  # noqa: E731
    na, nb = num(a), num(b)
    ratio = f"{na / nb:.2f}x" if na is not None and nb else "-"
    tgt = ""
    if max_ratio is not None or min_ratio is not None:
        lim, higher = (min_ratio, True) if min_ratio is not None else (max_ratio, False)
        head = f"{'>=' if higher else '<='} {lim:g}x"
        if na is None or not nb:
            tgt = f"{head}: -"
        else:
            ok = na / nb >= lim if higher else na / nb <= lim
            tgt = f"{head}: {'PASS' if ok else 'FAIL'}"
    elif max_abs is not None:
        head = f"< {max_abs:g}{abs_unit}"
        tgt = f"{head}: -" if na is None else f"{head}: {'PASS' if na < max_abs else 'FAIL'}"
    return (label, _txt(a), _txt(b), ratio, tgt)


def render_table(rows: list[Row]) -> str:
    head = ("measurement", "pyvirtd", "libvirtd", "ratio", "target")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    fmt = lambda r: "| " + " | ".join(  # noqa: E731
        (c.ljust(widths[i]) if i == 0 or i == 4 else c.rjust(widths[i])) for i, c in enumerate(r)) + " |"
    lines = [fmt(head),
             "|" + "|".join("-" * (w + 2) if i in (0, 4) else "-" * (w + 1) + ":"
                            for i, w in enumerate(widths)) + "|"]
    lines.extend(fmt(r) for r in rows)
    return "\n".join(lines)
