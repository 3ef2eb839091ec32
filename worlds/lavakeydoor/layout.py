"""Layouts of the lava-key-door world: cell codes, procedural families, BFS distance maps.

Every generated layout has a border of walls and one inner wall that splits the grid in two, with
a single locked door in it. The agent and the key start on one side, the goal lies on the other,
so the key is always needed. Families differ in how lava (and extra walls) are laid out:

* ``scatter`` -- lava cells scattered at random (``lava_density`` of the free cells);
* ``river``   -- a lava strip across the whole grid with one gap on each side of the wall;
* ``rooms``   -- each side split again by a wall with one opening, light scattered lava;
* ``moat``    -- (held out, OOD) the goal is ringed by lava with a single gap.

The canonical picture (agent side left) is then rotated / mirrored at random (8 symmetries).

Generation is vectorised over the layouts being made (no Python loop over environments): the
random choices are drawn as arrays and positions are sampled with the argmax-of-uniforms trick.
Unsolvable layouts (agent -> key -> door -> goal blocked by lava) are regenerated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EMPTY, WALL, LAVA, KEY, DOOR_LOCKED, DOOR_OPEN, GOAL, OUTSIDE = range(8)
CELL_NAMES: tuple[str, ...] = ("empty", "wall", "lava", "key", "door_locked", "door_open", "goal", "outside")
"""Cell codes in order; the symbolic observation has one channel per name (``outside`` = beyond the grid)."""

FAMILIES: tuple[str, ...] = ("scatter", "river", "rooms", "moat")
OOD_FAMILIES: tuple[str, ...] = ("moat",)
TRAIN_FAMILIES: tuple[str, ...] = tuple(f for f in FAMILIES if f not in OOD_FAMILIES)

UNREACHABLE = 1 << 20
"""Distance given to cells from which the target cannot be reached (before capping)."""

_CHARS = {".": EMPTY, " ": EMPTY, "#": WALL, "L": LAVA, "K": KEY, "D": DOOR_LOCKED, "O": DOOR_OPEN, "G": GOAL, "A": EMPTY}


@dataclass(frozen=True)
class Layouts:
    """A batch of ``m`` layouts on an ``s x s`` grid with their precomputed distance maps."""

    cells: np.ndarray
    """``int8[m s s]`` cell codes (the agent is not a cell)."""
    start: np.ndarray
    """``int64[m 2]`` agent start (row, col)."""
    family: np.ndarray
    """``int64[m]`` index into ``FAMILIES``."""
    values: np.ndarray
    """``int32[m 3 s s]`` shortest number of actions to the goal from each cell, for key/door state
    0 = no key, 1 = key held and door locked, 2 = door open (``UNREACHABLE`` where impossible)."""
    lava_dist: np.ndarray
    """``int32[m s s]`` Manhattan distance to the nearest lava cell (``UNREACHABLE`` if there is none)."""

    def __len__(self) -> int:
        return int(self.cells.shape[0])

    def take(self, idx: np.ndarray) -> "Layouts":
        """The layouts at indices ``idx[k]`` (fancy indexing, so always copies)."""
        return Layouts(self.cells[idx], self.start[idx], self.family[idx], self.values[idx], self.lava_dist[idx])


def bfs_distance(passable: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Fewest 4-neighbour moves from each cell to a ``source`` cell, moving only through passable cells.

    ``passable, source: bool[b h w]`` -> ``int32[b h w]`` (``UNREACHABLE`` where no path exists).
    Hand-written because we need it batched over thousands of tiny grids (scipy's csgraph works one
    graph at a time, and a plain int relaxation was the bottleneck of env throughput). The batch is
    packed into the bits of ``uint64`` words, a frontier is grown by shifting whole planes, and each
    cell's distance is stored bit-sliced (bit-plane i holds bit i of the distance): the frontier
    first reached at sweep k is OR-ed into the planes of the bits set in k.
    """
    b, h, w = passable.shape
    words = -(-b // 64)

    def pack(x: np.ndarray) -> np.ndarray:                  # bool[b h w] -> uint64[h+2 w+2 words], zero border
        y = np.zeros((h + 2, w + 2, words * 64), dtype=bool)
        y[1:-1, 1:-1, :b] = x.transpose(1, 2, 0)
        return np.packbits(y, axis=-1, bitorder="little").view(np.uint64)

    allowed = pack(passable & ~source)
    visited = pack(source)
    frontier = visited.copy()
    planes = [np.zeros_like(visited) for _ in range((h * w).bit_length())]
    grow = np.zeros_like(visited)
    core, tmp = grow[1:-1, 1:-1], np.empty_like(visited[1:-1, 1:-1])
    k = 0
    while True:
        np.bitwise_or(frontier[:-2, 1:-1], frontier[2:, 1:-1], out=core)
        np.bitwise_or(frontier[1:-1, :-2], frontier[1:-1, 2:], out=tmp)
        core |= tmp
        np.bitwise_and(grow, allowed, out=frontier)
        np.bitwise_and(frontier, ~visited, out=frontier)
        if not frontier.any():
            break
        k += 1                                              # cells first reached now are at distance k:
        for i, plane in enumerate(planes):                  # set bit i of their count where k has it
            if k >> i & 1:
                plane |= frontier
        visited |= frontier

    # unpack all bit-planes at once ([nbits+1 h w b] bits), then add up the weighted planes
    stack = np.stack([*planes, visited])[:, 1:-1, 1:-1]
    bits = np.unpackbits(stack.view(np.uint8), axis=-1, bitorder="little")[..., :b]
    dist = np.zeros((h, w, b), dtype=np.uint16 if len(planes) <= 16 else np.int32)
    for i in range(len(planes)):
        dist |= bits[i].astype(dist.dtype) << i
    reached = bits[-1].transpose(2, 0, 1).astype(bool)
    return np.where(reached, dist.transpose(2, 0, 1).astype(np.int32), np.int32(UNREACHABLE))


def value_maps(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Steps-to-goal maps ``int32[m 3 s s]`` and lava Manhattan distance ``int32[m s s]`` of ``cells[m s s]``.

    Paths avoid walls and lava and never pass through the goal (it ends the episode). With the door
    open the value is the BFS distance to the goal; holding the key it is the better of going round
    the locked door or (distance to door) + (door to goal, door open); without the key it is the better
    of reaching the goal with the door locked or (distance to key) + (value from the key, key held).
    """
    m = cells.shape[0]
    wall, lava, goal = cells == WALL, cells == LAVA, cells == GOAL
    door = (cells == DOOR_LOCKED) | (cells == DOOR_OPEN)
    key = cells == KEY
    free = ~wall & ~lava
    passable = np.concatenate([free, free & ~door, free & ~goal, free & ~door & ~goal, np.ones_like(free)])
    source = np.concatenate([goal, goal, door, key, lava])
    d = bfs_distance(passable, source).reshape(5, m, *cells.shape[1:])
    to_goal_open, to_goal_locked, to_door, to_key, lava_dist = d
    flat = np.arange(m)

    def at(grid: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``[m]`` value of ``grid`` at the (single) cell set in ``mask``, UNREACHABLE if none is set."""
        has = mask.reshape(m, -1).any(1)
        pos = mask.reshape(m, -1).argmax(1)
        return np.where(has, grid.reshape(m, -1)[flat, pos], UNREACHABLE)[:, None, None]

    v_open = to_goal_open
    v_key = np.minimum(to_goal_locked, to_door + at(to_goal_open, door))
    v_nokey = np.minimum(to_goal_locked, to_key + at(v_key, key))
    values = np.minimum(np.stack([v_nokey, v_key, v_open], axis=1), UNREACHABLE).astype(np.int32)
    return values, lava_dist.astype(np.int32)


def parse_layout(text: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Parse a hand-written square layout: ``# wall, L lava, K key, D locked door, O open door, G goal,
    A agent, . empty``. Returns ``(cells int8[s s], (row, col) of A)``."""
    rows = [r.strip() for r in text.strip().splitlines()]
    s = len(rows)
    if any(len(r) != s for r in rows):
        raise ValueError(f"a layout must be square, got rows of lengths {[len(r) for r in rows]}")
    bad = sorted({ch for r in rows for ch in r} - set(_CHARS))
    if bad:
        raise ValueError(f"unknown layout characters {bad}; use {''.join(sorted(_CHARS))}")
    flat = "".join(rows)
    counts = {ch: flat.count(ch) for ch in "AGKDO"}
    if counts["A"] != 1 or counts["G"] != 1 or counts["K"] > 1 or counts["D"] + counts["O"] > 1:
        raise ValueError(f"a layout needs exactly one A and one G, at most one K and one door (D/O), got {counts}")
    cells = np.array([[_CHARS[ch] for ch in r] for r in rows], dtype=np.int8)
    a = flat.index("A")
    return cells, (a // s, a % s)


# ----------------------------------------------------------------------------- generation


def _sample(allowed: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One uniformly random allowed cell per layout: ``allowed bool[m s s]`` -> ``(rc int64[m 2], ok bool[m])``."""
    m, s, _ = allowed.shape
    score = rng.random(allowed.shape) * allowed
    flat = score.reshape(m, -1).argmax(1)
    return np.stack([flat // s, flat % s], axis=1), allowed.reshape(m, -1).any(1)


def _below(high: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform integers in ``[0, high)`` elementwise (``high`` an int array of any shape)."""
    return (rng.random(high.shape) * high).astype(np.int64)


def _put(cells: np.ndarray, rc: np.ndarray, code: int) -> None:
    cells[np.arange(len(rc)), rc[:, 0], rc[:, 1]] = code


def _dilate(mask: np.ndarray, diagonal: bool) -> np.ndarray:
    """Cells of ``mask[m s s]`` or 4- (8- with ``diagonal``) adjacent to one."""
    p = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    out = mask | p[:, :-2, 1:-1] | p[:, 2:, 1:-1] | p[:, 1:-1, :-2] | p[:, 1:-1, 2:]
    if diagonal:
        out |= p[:, :-2, :-2] | p[:, :-2, 2:] | p[:, 2:, :-2] | p[:, 2:, 2:]
    return out


def _canonical(fam: np.ndarray, s: int, density: float, rng: np.random.Generator):
    """Canonical layouts (agent side = columns left of the inner wall), one per family index in ``fam[m]``.

    Returns ``(cells int8[m s s], start int64[m 2], ok bool[m])``; ``ok`` is false where a cell
    could not be placed. Every random draw is made for all ``m`` layouts, whatever their family.
    """
    m = len(fam)
    is_ = {name: (fam == FAMILIES.index(name))[:, None, None] for name in FAMILIES}
    rows, cols = np.mgrid[0:s, 0:s]
    cells = np.zeros((m, s, s), dtype=np.int8)
    border = (rows == 0) | (rows == s - 1) | (cols == 0) | (cols == s - 1)
    wall_col = rng.integers(3, s - 3, size=m)[:, None, None]      # inner wall column
    wall_col = np.where(is_["moat"], np.minimum(wall_col, s - 6), wall_col)   # moat: room for the ring
    door_row = rng.integers(1, s - 1, size=m)[:, None, None]
    cells[:, border] = WALL
    cells[(cols == wall_col) & ~border] = WALL
    door = (cols == wall_col) & (rows == door_row)
    cells[door] = DOOR_LOCKED
    left = (cols < wall_col) & ~border
    right = (cols > wall_col) & ~border
    keep_free = _dilate(door, diagonal=False) & ~door                  # the cells either side of the door

    scatter = np.where(is_["scatter"], density, density / 2)
    lava = (rng.random((m, s, s)) < scatter) & (left | right)
    # river: a strip across the grid (not on the door's row), one gap on each side of the wall
    river_row = 2 + _below(np.full((m, 1, 1), s - 5), rng)
    river_row += river_row >= door_row
    river_row = np.minimum(river_row, s - 3)
    gap_l = 1 + _below(wall_col - 1, rng)
    gap_r = wall_col + 1 + _below(s - 2 - wall_col, rng)
    lava |= is_["river"] & (rows == river_row) & (left | right) & (cols != gap_l) & (cols != gap_r)
    # rooms: each side split again by a wall with one opening
    for side, lo, width in ((left, 1, wall_col - 1), (right, wall_col + 1, s - 2 - wall_col)):
        split_row = rng.integers(2, s - 2, size=m)[:, None, None]
        gap = lo + _below(width, rng)
        inner_wall = is_["rooms"] & side & (rows == split_row) & (cols != gap) & ~keep_free
        cells[inner_wall] = WALL
        lava &= ~inner_wall
    cells[lava & ~keep_free] = LAVA

    start, ok_a = _sample((cells == EMPTY) & left, rng)
    _put(cells, start, KEY)                                         # reserve start, place key, clear start
    key, ok_k = _sample((cells == EMPTY) & left, rng)
    _put(cells, start, EMPTY)
    _put(cells, key, KEY)
    # moat: the goal away from every wall, ringed by lava with one gap next to it
    inland = (rows > 1) & (rows < s - 2) & (cols > wall_col + 1) & (cols < s - 2)
    goal, ok_g = _sample((cells == EMPTY) & right & (inland | ~is_["moat"]), rng)
    _put(cells, goal, GOAL)
    g = cells == GOAL
    ring = is_["moat"] & _dilate(g, diagonal=True) & ~g & (cells == EMPTY)
    cells[ring] = LAVA
    gap, has_gap = _sample(_dilate(g, diagonal=False) & ring, rng)
    cells[np.flatnonzero(has_gap), gap[has_gap, 0], gap[has_gap, 1]] = EMPTY
    return cells, start, ok_a & ok_k & ok_g


def _symmetries(s: int) -> np.ndarray:
    """``int64[8 s*s]``: for each of the 8 square symmetries, the source flat index of every target cell."""
    idx = np.arange(s * s).reshape(s, s)
    out = [np.rot90(idx, k) for k in range(4)]
    out += [o.T for o in out]
    return np.stack([o.reshape(-1) for o in out])


def generate(families: np.ndarray, size: int, lava_density: float, rng: np.random.Generator,
             max_rounds: int = 200) -> Layouts:
    """Solvable random layouts, one per entry of ``families`` (``int64[m]``, indices into ``FAMILIES``)."""
    m = len(families)
    cells = np.zeros((m, size, size), dtype=np.int8)
    start = np.zeros((m, 2), dtype=np.int64)
    values = np.zeros((m, 3, size, size), dtype=np.int32)
    lava_dist = np.zeros((m, size, size), dtype=np.int32)
    todo = np.arange(m)
    sym = _symmetries(size)
    inv = np.argsort(sym, axis=1)
    for _ in range(max_rounds):
        if len(todo) == 0:
            return Layouts(cells, start, np.asarray(families, dtype=np.int64), values, lava_dist)
        c, st, ok = _canonical(families[todo], size, lava_density, rng)
        k = rng.integers(0, 8, size=len(todo))                     # a random rotation / mirror each
        c = c.reshape(len(todo), -1)[np.arange(len(todo))[:, None], sym[k]].reshape(c.shape)
        flat = inv[k, st[:, 0] * size + st[:, 1]]
        st = np.stack([flat // size, flat % size], axis=1)
        v, ld = value_maps(c)
        ok &= v[np.arange(len(todo)), 0, st[:, 0], st[:, 1]] < UNREACHABLE
        done = todo[ok]
        cells[done], start[done], values[done], lava_dist[done] = c[ok], st[ok], v[ok], ld[ok]
        todo = todo[~ok]
    raise RuntimeError(
        f"could not generate solvable layouts for families {sorted({FAMILIES[f] for f in families[todo]})} "
        f"in {max_rounds} rounds (size={size}, lava_density={lava_density}); lower lava_density or raise size"
    )
