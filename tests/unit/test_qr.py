"""Terminal QR rendering (services.cli.qr): the encoded matrix and the half-block drawing."""

from __future__ import annotations

import re

import pytest

from services.cli.qr import QUIET_ZONE, half_blocks, qr_matrix, with_quiet_zone

URI = "otpauth://totp/PFM:a@b.example?secret=JBSWY3DPEHPK3PXP"

# qr_matrix(URI) when recorded (version 4-M, byte mode); decoded back to URI by zbarimg (ZBar
# 0.23.92, an independent decoder) from a PBM drawn from these rows plus a 4-module quiet zone.
KNOWN = [
    "#######.##.##...########..#######",
    "#.....#.#.##..#..#..#.##..#.....#",
    "#.###.#..#.####....#..#.#.#.###.#",
    "#.###.#.##.#........###.#.#.###.#",
    "#.###.#..#.##...###...###.#.###.#",
    "#.....#..#...#####.#..#.#.#.....#",
    "#######.#.#.#.#.#.#.#.#.#.#######",
    "........##.....###..#............",
    "#.##.###.##....###.#.##.#.#..#.##",
    "#..#.#.###.#.##.#.#.##.#.###.##.#",
    ".##...#.####.#...#.....##....#.##",
    "..###..#.##.#...#..#..#####..#...",
    "#.#####.##..#.###.#.####.#.#.#.#.",
    "....##.###....#......#....##.#.#.",
    ".#.##.####.......#####..#######..",
    "###.##.#..##.#.#..##.##.#.#.#####",
    "#..####.##.#.#..#.#.#.#...#.#.##.",
    "####.#.####.##.#....#..######..##",
    "#.##.##...#..####.#..##.#..#..##.",
    "#.##.....#.#....##.##.###..#...#.",
    "..#####...#.##.##...#...#..#..##.",
    "#.......#...##.##.##.#...#.#..#.#",
    "...########.#..#.##....###...####",
    ".#.##..#.###.#.#..#...###.####.##",
    "#...#.####.#.....#.####.#####..#.",
    "........#..###.##.####..#...##.#.",
    "#######.##.####..####.###.#.##...",
    "#.....#.#.####.#.##.##.##...#####",
    "#.###.#..#......#####.#######.##.",
    "#.###.#.#.#.#.#.##.##..###.#.#..#",
    "#.###.#.##.#.#.##.#...##..#..##..",
    "#.....#..#.#..#..#..#.....##....#",
    "#######.#...##..####...#..#####..",
]

SGR = re.compile(r"\x1b\[[0-9;]*m")
CHAR_MODULES = {"\u2588": (1, 1), "\u2580": (1, 0), "\u2584": (0, 1), " ": (0, 0)}


def _rows(text_rows: list[str]) -> list[list[int]]:
    return [[1 if c == "#" else 0 for c in row] for row in text_rows]


def _unrender(lines: list[str], color: bool) -> list[list[int]]:
    """Module rows back from half-block lines (dark = 1), undoing the colourless inversion."""
    grid: list[list[int]] = []
    for line in lines:
        plain = SGR.sub("", line)
        pairs = [CHAR_MODULES[c] for c in plain]
        top = [t if color else 1 - t for t, _ in pairs]
        bottom = [b if color else 1 - b for _, b in pairs]
        grid += [top, bottom]
    return grid


def test_matrix_matches_the_known_vector() -> None:
    """qr_matrix encodes an otpauth URI to the recorded, independently decoded 33x33 matrix."""
    assert qr_matrix(URI) == _rows(KNOWN)


def test_matrix_has_finder_patterns_and_timing() -> None:
    """The three 7x7 finder patterns and the timing rows are where the QR standard puts them."""
    m = qr_matrix(URI)
    n = len(m)
    finder = _rows(KNOWN[:7])
    for r0, c0 in ((0, 0), (0, n - 7), (n - 7, 0)):
        assert [row[c0 : c0 + 7] for row in m[r0 : r0 + 7]] == [row[:7] for row in finder]
    assert m[6][8 : n - 8] == [1 - (i % 2) for i in range(n - 16)]
    assert [row[6] for row in m[8 : n - 8]] == [1 - (i % 2) for i in range(n - 16)]


@pytest.mark.parametrize("color", [True, False])
def test_rendering_round_trips(color: bool) -> None:
    """Reading the half blocks back gives the matrix with its quiet zone (plus one pad row)."""
    m = qr_matrix(URI)
    lines = half_blocks(m, color=color)
    grid = _unrender(lines, color)
    expected = with_quiet_zone(m)
    assert len(expected) % 2 == 1  # QR sizes are odd: one light row pads the last line
    assert grid == [*expected, [0] * len(expected[0])]
    assert len(lines) == (len(m) + 2 * QUIET_ZONE + 1) // 2


def test_small_matrix_exact_characters() -> None:
    """Module pairs map to upper, lower, full and empty half blocks; an odd row gets a pad row."""
    m = [[1, 0, 1, 0], [0, 1, 1, 0]]
    assert half_blocks(m, color=True, border=0) == ["\x1b[30;107m\u2580\u2584\u2588 \x1b[0m"]
    # without colour the light modules are the blocks
    assert half_blocks(m, color=False, border=0) == ["\u2584\u2580 \u2588"]
    odd = [[1, 0]]
    assert half_blocks(odd, color=True, border=0) == ["\x1b[30;107m\u2580 \x1b[0m"]
    assert half_blocks(odd, color=False, border=0) == ["\u2584\u2588"]


def test_quiet_zone_is_light_on_every_side() -> None:
    """The first and last lines and the 4 outer columns are light modules only."""
    lines = [SGR.sub("", line) for line in half_blocks(qr_matrix(URI), color=True)]
    assert set(lines[0]) == set(lines[1]) == set(lines[-1]) == {" "}
    for line in lines:
        assert line[:QUIET_ZONE] == line[-QUIET_ZONE:] == " " * QUIET_ZONE


def test_colour_lines_set_and_reset_their_own_colours() -> None:
    """Each coloured line starts with black-on-white and ends with a reset (theme-proof)."""
    for line in half_blocks(qr_matrix("x"), color=True):
        assert line.startswith("\x1b[30;107m") and line.endswith("\x1b[0m")
    assert not any("\x1b" in line for line in half_blocks(qr_matrix("x"), color=False))


def test_ragged_matrix_is_refused() -> None:
    """Rows of different lengths raise ValueError."""
    with pytest.raises(ValueError, match="differ in length"):
        half_blocks([[1, 0], [1]])
