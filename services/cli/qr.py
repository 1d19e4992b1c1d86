"""QR codes drawn in a terminal with Unicode half blocks (two modules rows per text line).

:func:`qr_matrix` encodes with segno (pure Python, no Pillow); :func:`half_blocks` is a pure
renderer of any module matrix, so it is tested on known vectors without a terminal.

Readable on dark and light terminals alike: with ``color`` (the default on a TTY, off under
``NO_COLOR``) every line sets black-on-white itself (SGR ``30;107``) and resets at its end, so
the terminal's theme does not matter. Without colour the light modules are drawn as blocks,
which shows a correct code on the usual dark background (on a light one it is inverted; most
phone scanners read that too, else use the printed URI). The quiet zone is the 4 modules the
QR specification asks for.
"""

from __future__ import annotations

from collections.abc import Sequence

QUIET_ZONE = 4

_FULL, _UPPER, _LOWER, _EMPTY = "\u2588", "\u2580", "\u2584", " "
_BLACK_ON_WHITE = "\x1b[30;107m"
_RESET = "\x1b[0m"

Matrix = Sequence[Sequence[int]]
"""Rows of modules, 1 = dark, 0 = light, without a quiet zone."""


def qr_matrix(data: str) -> list[list[int]]:
    """The module matrix of ``data`` (byte mode, error correction boosted as far as it fits)."""
    import segno

    code = segno.make(data, micro=False, error="L", boost_error=True)
    return [list(row) for row in code.matrix]


def with_quiet_zone(matrix: Matrix, border: int = QUIET_ZONE) -> list[list[int]]:
    """``matrix`` surrounded by ``border`` light modules on each side."""
    width = len(matrix[0]) if matrix else 0
    if any(len(row) != width for row in matrix):
        raise ValueError("the matrix rows differ in length")
    blank = [0] * (width + 2 * border)
    side = [0] * border
    return (
        [blank[:] for _ in range(border)]
        + [[*side, *(1 if m else 0 for m in row), *side] for row in matrix]
        + [blank[:] for _ in range(border)]
    )


def half_blocks(matrix: Matrix, *, color: bool = True, border: int = QUIET_ZONE) -> list[str]:
    """Text lines drawing ``matrix`` (plus its quiet zone) two module rows per line.

    With ``color`` a block is a dark module (drawn black on an explicit white background);
    without, a block is a light module (for dark terminals). An odd last row is paired
    with a light row.
    """
    grid = with_quiet_zone(matrix, border)
    if len(grid) % 2:
        grid.append([0] * len(grid[0]))
    lines = []
    for top, bottom in zip(grid[0::2], grid[1::2], strict=True):
        chars = []
        for t, b in zip(top, bottom, strict=True):
            if not color:
                t, b = 1 - t, 1 - b
            chars.append(_FULL if t and b else _UPPER if t else _LOWER if b else _EMPTY)
        text = "".join(chars)
        lines.append(f"{_BLACK_ON_WHITE}{text}{_RESET}" if color else text)
    return lines


def terminal_qr(data: str, *, color: bool = True) -> str:
    """``data`` as a QR code for a terminal, newline-terminated lines."""
    return "".join(line + "\n" for line in half_blocks(qr_matrix(data), color=color))
