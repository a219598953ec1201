"""Inside / contact on procedurally drawn images (Break It Down's Inside-Contact style), numpy only.

Each image shows a large shape drawn as a closed one-pixel outline (intensity 1.0) and a small
filled shape (intensity 0.5). Relations are measured on the rasterised shapes, never taken from
how a scene was proposed: *inside* = every pixel of the small shape lies in the outline's interior;
*contact* = some pixel of the small shape is 8-adjacent to the outline (overlaps are redrawn).
Scenes are proposed aimed at a target relation and redrawn until the measured relations match,
which balances the classes. The composite task answers both relations (one head of two logits per
relation, scored on both right; targets: the cell 2·inside + contact); subroutines ``inside`` and
``contact`` are labelled by their own relation and read their own pair of logits. Combinations are (outer shape, inner shape) pairs; ``frac_ood`` of
them are held out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import (RELATION_CLASSES, Draw, Task, TaskConfig, assemble, check_int, cycle, holdout,
                   make_config, n_heldout, relation_cells, relation_targets, relation_views,
                   stream_rng)

SHAPES = ("circle", "square", "diamond")
OUTLINE, FILL = 1.0, 0.5      # pixel intensities of the outer outline and the inner shape
_HALF_WIDTH = 0.5             # outline = pixels within this distance of the outer boundary
_CHUNK = 2048                 # scenes rasterised at once (bounds memory at ~40 MB per array)
_MAX_ROUNDS = 1000
_INNER_TRIES = 30           # inner-shape proposals before the outer shape is redrawn


@dataclass(frozen=True)
class VisionConfig(TaskConfig):
    """``image_size``: side of the square single-channel images, in pixels.

    Below 64 the small inner circle and diamond are only a few pixels wide and can look alike.
    """

    image_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("image_size", self.image_size, 32, 512)


def make(progress: bool = False, **options) -> Task:
    """The ``vision`` task: composite = whether inside and whether contact hold; subroutines
    ``inside``, ``contact``."""
    config = make_config(VisionConfig, "vision", options)
    n = len(SHAPES)
    pairs = np.arange(n * n)
    held = holdout(stream_rng(config.seed, "heldout"), pairs,
                    n_heldout(len(pairs), config.frac_ood),
                    lambda h: _covers(np.setdiff1d(pairs, h)),
                    "every shape in training as outer and as inner shape")
    train = np.setdiff1d(pairs, held)
    info = {"summary": "inside and contact on drawn shapes, both answered",
            "image_shape": [1, config.image_size, config.image_size],
            "shapes": list(SHAPES),
            "train_combinations": [_pair_name(p) for p in train],
            "heldout_combinations": [_pair_name(p) for p in held]}
    family = _Vision(config.image_size)
    return assemble("vision", config, family, train, held, n_classes=RELATION_CLASSES,
                     chance=0.5, views=relation_views(family.subroutines),
                     input_kind="image", info=info, progress=progress)


def _covers(pairs: np.ndarray) -> bool:
    n = len(SHAPES)
    return len(set(pairs // n)) == n and len(set(pairs % n)) == n


def _pair_name(pair: int) -> list[str]:
    return [SHAPES[pair // len(SHAPES)], SHAPES[pair % len(SHAPES)]]


class _Vision:
    subroutines = ("inside", "contact")

    def __init__(self, size: int):
        self.size = size

    def draw(self, view: str, n: int, combos: np.ndarray, rng: np.random.Generator) -> Draw:
        want_inside, want_contact = relation_cells(rng, view, n)
        pairs = cycle(rng, n, combos)
        outer, inner = pairs // len(SHAPES), pairs % len(SHAPES)
        images, inside, contact = _render(rng, outer, inner, want_inside, want_contact, self.size)
        labels = {"inside": inside, "contact": contact, "outer_shape": outer, "inner_shape": inner}
        return Draw(images, relation_targets(view, self.subroutines, inside, contact), pairs,
                     labels)

    def encode(self, raw: list[np.ndarray]) -> list[torch.Tensor]:
        return [torch.from_numpy(images) for images in raw]


def _render(rng: np.random.Generator, outer: np.ndarray, inner: np.ndarray,
            want_inside: np.ndarray, want_contact: np.ndarray, size: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images ``(n, 1, size, size)`` whose measured relations equal the wanted ones.

    The outer shape is drawn once per example, independent of the wanted relations, and only
    the inner shape is redrawn until they hold, so nuisance geometry (outer size and position)
    carries no information about the labels. An outer shape is redrawn only after
    ``_INNER_TRIES`` failures (rare).
    """
    n = len(outer)
    images = np.zeros((n, 1, size, size), np.float32)
    inside, contact = np.zeros(n, np.int64), np.zeros(n, np.int64)
    frame = _outer_frames(rng, n, size)
    tries = np.zeros(n, np.int64)
    todo = np.arange(n)
    for _ in range(_MAX_ROUNDS):
        if not todo.size:
            return images, inside, contact
        stale = todo[tries[todo] >= _INNER_TRIES]
        if stale.size:
            for key, value in _outer_frames(rng, len(stale), size).items():
                frame[key][..., stale] = value
            tries[stale] = 0
        for chunk in np.array_split(todo, -(-len(todo) // _CHUNK)):
            outline, shape, ins, con, ok = _scenes(
                rng, {k: v[..., chunk] for k, v in frame.items()}, outer[chunk], inner[chunk],
                want_inside[chunk], want_contact[chunk], size)
            keep = chunk[ok]
            images[keep, 0] = np.where(outline[ok], np.float32(OUTLINE),
                                       shape[ok] * np.float32(FILL))
            inside[keep], contact[keep] = ins[ok], con[ok]
            tries[chunk] += 1
            tries[keep] = -1
        todo = np.flatnonzero(tries >= 0)
    raise RuntimeError(f"could not draw {len(todo)} scenes with the wanted relations in "
                       f"{_MAX_ROUNDS} rounds; use a larger image_size")


def _outer_frames(rng: np.random.Generator, m: int, size: int) -> dict[str, np.ndarray]:
    """Outer shape radius and centre, pushed towards a random corner so there is room beside it.

    ``side`` (+1 / -1 per axis) points from the outer shape towards the free part of the canvas.
    """
    radius = rng.uniform(0.2, 0.26, m) * size
    side = rng.choice([-1.0, 1.0], (2, m))
    offset = radius + 1 + rng.uniform(0, 0.08 * size, (2, m))
    centre = np.where(side > 0, offset, size - 1 - offset)
    return {"radius": radius, "centre": centre, "side": side}


def _scenes(rng: np.random.Generator, frame: dict[str, np.ndarray], outer: np.ndarray,
            inner: np.ndarray, want_inside: np.ndarray, want_contact: np.ndarray, size: int):
    """Place the inner shape aimed at the wanted relations; measure them on the pixel masks.

    Returns the outline and inner-shape masks, the measured relations and which scenes are
    acceptable (on canvas, no overlap, relations as wanted).
    """
    m = len(outer)
    r_out, c_out, side = frame["radius"], frame["centre"], frame["side"]
    r_in = rng.uniform(0.065, 0.08, m) * size
    # a direction into the free quadrant, for every cell alike
    angle = rng.uniform(0, np.pi / 2, m)
    direction = np.stack([np.cos(angle), np.sin(angle)]) * side
    theta = np.arctan2(direction[1], direction[0])
    # distance from the outer centre to its boundary, and the inner shape's reach, along theta
    boundary, reach = _extent(outer, r_out, theta), _extent(inner, r_in, theta)
    jitter = rng.uniform(0, 1, m)
    touching_inside = boundary - _HALF_WIDTH - reach - 0.5 - jitter
    free_inside = np.maximum(boundary - _HALF_WIDTH - reach - 2.5, 0) * jitter
    touching_outside = boundary + _HALF_WIDTH + reach + 0.5 + jitter
    free_outside = boundary + _HALF_WIDTH + reach + 2.5 + jitter * size / 4
    rho = np.where(want_inside == 1, np.where(want_contact == 1, touching_inside, free_inside),
                   np.where(want_contact == 1, touching_outside, free_outside))
    c_in = c_out + rho * direction
    on_canvas = np.all((c_in >= r_in + 1) & (c_in <= size - 2 - r_in), axis=0)

    level_out = _level(outer, c_out, r_out, size)
    outline = np.abs(level_out) <= _HALF_WIDTH
    shape = _level(inner, c_in, r_in, size) <= 0
    flat = (m, -1)
    overlaps = (shape & outline).reshape(flat).any(1)
    inside = ~(shape & (level_out >= -_HALF_WIDTH)).reshape(flat).any(1)
    contact = (shape & _dilate(outline)).reshape(flat).any(1)
    ok = (on_canvas & ~overlaps & shape.reshape(flat).any(1)
          & (inside == want_inside.astype(bool)) & (contact == want_contact.astype(bool)))
    return outline, shape, inside.astype(np.int64), contact.astype(np.int64), ok


def _extent(kind: np.ndarray, r: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Distance from a shape's centre to its boundary in direction ``theta``."""
    c, s = np.abs(np.cos(theta)), np.abs(np.sin(theta))
    return r * np.select([kind == 0, kind == 1], [1.0, 1 / np.maximum(c, s)], 1 / (c + s))


def _level(kind: np.ndarray, centre: np.ndarray, r: np.ndarray, size: int) -> np.ndarray:
    """Level-set function ``(m, size, size)`` per shape: negative inside, ~distance in pixels."""
    axis = np.arange(size, dtype=np.float32)
    out = np.empty((len(kind), size, size), np.float32)
    for k in range(len(SHAPES)):
        idx = np.flatnonzero(kind == k)
        if not idx.size:
            continue
        dx = np.abs(axis[None, None, :] - centre[0, idx, None, None].astype(np.float32))
        dy = np.abs(axis[None, :, None] - centre[1, idx, None, None].astype(np.float32))
        rk = r[idx, None, None].astype(np.float32)
        if k == 0:
            out[idx] = np.sqrt(dx * dx + dy * dy) - rk
        elif k == 1:
            out[idx] = np.maximum(dx, dy) - rk
        else:
            out[idx] = (dx + dy - rk) / np.float32(np.sqrt(2))
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    """8-neighbourhood dilation of ``(m, h, w)`` boolean masks (separable 3x3 max)."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    rows = padded[:, :, :-2] | padded[:, :, 1:-1] | padded[:, :, 2:]
    return rows[:, :-2] | rows[:, 1:-1] | rows[:, 2:]
