"""RGB rendering of lava-key-door cell codes (the egocentric view or the whole grid).

Each cell code is drawn as a fixed ``px x px`` tile; the agent is a red disc drawn over its cell.
Rendering is a table lookup (``tiles[codes]``) followed by one named rearrange, so it stays
vectorised over environments.
"""

from __future__ import annotations

import einops
import numpy as np

from worlds.lavakeydoor.layout import CELL_NAMES, DOOR_LOCKED, DOOR_OPEN, KEY

COLOURS: dict[str, tuple[int, int, int]] = {
    "empty": (0, 0, 0),
    "wall": (100, 100, 100),
    "lava": (255, 128, 0),
    "key": (255, 220, 0),
    "door_locked": (150, 90, 30),
    "door_open": (150, 90, 30),
    "goal": (0, 200, 0),
    "outside": (40, 40, 70),
}
AGENT_COLOUR = (230, 30, 30)


def make_tiles(px: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tiles, agent_tiles)``: ``uint8[c px px 3]`` one tile per cell code, without and with the agent."""
    if px < 2:
        raise ValueError(f"tile size must be >= 2 pixels, got {px}")
    yy, xx = np.mgrid[0:px, 0:px]
    centre = (px - 1) / 2
    disc = (yy - centre) ** 2 + (xx - centre) ** 2 <= (0.35 * px) ** 2
    edge = (yy == 0) | (xx == 0) | (yy == px - 1) | (xx == px - 1)
    tiles = np.zeros((len(CELL_NAMES), px, px, 3), dtype=np.uint8)
    for code, name in enumerate(CELL_NAMES):
        tiles[code] = COLOURS[name]
    tiles[KEY][~disc] = COLOURS["empty"]                      # key: a yellow disc on black
    tiles[DOOR_LOCKED][yy == px // 2] = COLOURS["key"]        # locked door: a yellow bar
    tiles[DOOR_OPEN][~edge] = COLOURS["empty"]                # open door: only its frame
    agent = tiles.copy()
    agent[:, disc] = AGENT_COLOUR
    return tiles, agent


def render_codes(codes: np.ndarray, agent_rc: np.ndarray, tiles: np.ndarray, agent_tiles: np.ndarray) -> np.ndarray:
    """Draw ``codes int[n h w]`` with the agent at ``agent_rc int[n 2]`` -> ``uint8[n 3 (h px) (w px)]``."""
    n = codes.shape[0]
    img = tiles[codes]                                                    # [n h w px px 3]
    ar = np.arange(n)
    img[ar, agent_rc[:, 0], agent_rc[:, 1]] = agent_tiles[codes[ar, agent_rc[:, 0], agent_rc[:, 1]]]
    return np.ascontiguousarray(einops.rearrange(img, "n h w p q c -> n c (h p) (w q)"))
