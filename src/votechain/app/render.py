"""Text output shared by the command line and the demo: hash rates and tally tables,
and `out`, which the `votechain` subcommands print their lines with."""

from __future__ import annotations

# The longest tally bar, in characters: fits an 80-column terminal beside the table.
BAR_WIDTH = 40


def out(text: str = "") -> None:
    """Print to stdout and flush at once: scripts and the demo wait for these lines
    (a peer's "listening" line above all) through a pipe."""
    print(text, flush=True)


def format_hashrate(rate: float) -> str:
    for unit, scale in (("GH/s", 1e9), ("MH/s", 1e6), ("kH/s", 1e3)):
        if rate >= scale:
            return f"{rate / scale:.2f} {unit}"
    return f"{rate:.0f} H/s"


def format_tally(counts: dict[str, int], *, bars: bool = False) -> str:
    """A table of categories and votes; with `bars`, a bar of █ scaled to the largest count."""
    if not counts:
        return "no votes yet"
    width = max(len("category"), *(len(c) for c in counts))
    count_width = max(len("votes"), *(len(str(n)) for n in counts.values()))
    top = max(counts.values())
    lines = [f"{'category':<{width}}  {'votes':>{count_width}}"]
    for category, count in counts.items():
        line = f"{category:<{width}}  {count:>{count_width}}"
        if bars:
            # At least one block, so a single vote is still visible next to thousands.
            line += "  " + "█" * max(1, round(BAR_WIDTH * count / top))
        lines.append(line)
    lines.append(f"{'total':<{width}}  {sum(counts.values()):>{count_width}}")
    return "\n".join(lines)
