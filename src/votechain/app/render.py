"""Text output shared by the command line and the demo: hash rates and tables,
and `out`, which the `votechain` subcommands print their lines with.

Tables are padded by display width, not by `len()`: a category may be any
printable text (core/voting.py), and a CJK ideograph or an emoji takes two
terminal columns while a combining accent takes none, so padding by code
points would misalign every column after such a name. The width comes from
the `wcwidth` library (Markus Kuhn's rule as terminals apply it, kept up with
each Unicode version, emoji presentation sequences included), not from a
hand-written table. Control and format characters cannot reach a table:
categories refuse them; were one to, it counts one column.
"""

from __future__ import annotations

from collections.abc import Sequence

from wcwidth import wcswidth, wcwidth

# The longest tally bar, in characters: fits an 80-column terminal beside the table.
BAR_WIDTH = 40


def out(text: str = "") -> None:
    """Print to stdout and flush at once: scripts and the demo wait for these lines
    (a peer's "listening" line above all) through a pipe."""
    print(text, flush=True)


def display_width(text: str) -> int:
    """Terminal columns `text` takes (see the top comment)."""
    width = wcswidth(text)
    if width >= 0:
        return width
    # wcswidth says -1 for text holding a non-printable character: count
    # each such character one column, the rest as wcwidth says.
    return sum(max(wcwidth(char), 1) if wcwidth(char) != 0 else 0 for char in text)


def ljust(text: str, width: int) -> str:
    """`text` padded on the right to `width` columns (str.ljust counts code points)."""
    return text + " " * max(0, width - display_width(text))


def rjust(text: str, width: int) -> str:
    """`text` padded on the left to `width` columns."""
    return " " * max(0, width - display_width(text)) + text


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], *,
                 left: int = 1, rule: bool = True) -> str:
    """Columns two spaces apart, each as wide as its widest cell in display
    columns; the first `left` columns left-aligned (names), the rest
    right-aligned (numbers); a rule of dashes under the header if `rule`."""
    widths = [max(display_width(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [ljust(c, w) if i < left else rjust(c, w)
                  for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(padded).rstrip()

    lines = [line(header)]
    if rule:
        lines.append("  ".join("-" * w for w in widths))
    lines.extend(line(row) for row in rows)
    return "\n".join(lines)


def format_hashrate(rate: float) -> str:
    for unit, scale in (("GH/s", 1e9), ("MH/s", 1e6), ("kH/s", 1e3)):
        if rate >= scale:
            return f"{rate / scale:.2f} {unit}"
    return f"{rate:.0f} H/s"


def format_tally(counts: dict[str, int], *, bars: bool = False) -> str:
    """A table of categories and votes; with `bars`, a bar of █ scaled to the largest count."""
    if not counts:
        return "no votes yet"
    width = max(display_width("category"), *(display_width(c) for c in counts))
    count_width = max(len("votes"), *(len(str(n)) for n in counts.values()))
    top = max(counts.values())
    lines = [f"{ljust('category', width)}  {'votes':>{count_width}}"]
    for category, count in counts.items():
        line = f"{ljust(category, width)}  {count:>{count_width}}"
        if bars:
            # At least one block, so a single vote is still visible next to thousands.
            line += "  " + "█" * max(1, round(BAR_WIDTH * count / top))
        lines.append(line)
    lines.append(f"{ljust('total', width)}  {sum(counts.values()):>{count_width}}")
    return "\n".join(lines)
