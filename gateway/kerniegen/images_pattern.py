"""The pictures KernieGen's simulated VAE decodes: soft, deterministic, cheap.

A recipe digest (seed, prompt texts, model, sampler settings) picks a palette and a layout: a smooth
colour field with a few glowing orbs, reminiscent of bokeh. The prompt text sets the palette, so one
prompt keeps its colours across seeds while each seed rearranges them. Same digest, same pixels.
"""

from __future__ import annotations

import colorsys
import hashlib
import random
from functools import cache

from PIL import Image, ImageChops

_FIELD_CELLS = 4  # the colour field is a 4x4 grid blown up smoothly
_ORB_TEXTURE_SIZE = 128


def recipe_digest(*parts: object) -> bytes:
    """A stable digest of a recipe; repr() of ints, floats and strings is the same in every process."""
    return hashlib.sha256(repr(parts).encode("utf-8", "surrogatepass")).digest()


def _palette(text_digest: bytes) -> list[tuple[int, int, int]]:
    """Four harmonious colours from the prompt text: a base hue, two neighbours and an accent."""
    rng = random.Random(text_digest)
    base = rng.random()
    hues = [base, base + 0.08, base - 0.08, base + 0.5]
    colours = []
    for index, hue in enumerate(hues):
        saturation = 0.35 + 0.4 * rng.random()
        value = 0.35 + 0.5 * rng.random() if index < 3 else 0.9
        red, green, blue = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
        colours.append((int(red * 255), int(green * 255), int(blue * 255)))
    return colours


@cache
def _orb_texture() -> Image.Image:
    """A soft disc: bright centre, smooth falloff, transparent edge."""
    falloff = Image.radial_gradient("L").resize((_ORB_TEXTURE_SIZE, _ORB_TEXTURE_SIZE), Image.Resampling.BILINEAR)
    # radial_gradient is 0 in the centre, 181 at the edge midpoints and 255 in the corners; fade to 0
    # at the inscribed circle, squared for a gentler glow, so the square texture leaves no edges.
    return falloff.point(lambda value: int(255 * (1 - min(value / 181, 1.0)) ** 2))


def render_pattern(width: int, height: int, text_digest: bytes, layout_digest: bytes) -> Image.Image:
    """One RGB picture of the given size."""
    palette = _palette(text_digest)
    rng = random.Random(layout_digest)
    field = Image.new("RGB", (_FIELD_CELLS, _FIELD_CELLS))
    field.putdata([_jitter(rng.choice(palette[:3]), rng) for _ in range(_FIELD_CELLS * _FIELD_CELLS)])
    picture = field.resize((width, height), Image.Resampling.BICUBIC)
    glow = Image.new("RGB", (width, height))
    short_side = min(width, height)
    for _ in range(rng.randint(4, 8)):
        diameter = max(2, int(short_side * (0.15 + 0.45 * rng.random())))
        mask = _orb_texture().resize((diameter, diameter), Image.Resampling.BILINEAR)
        colour = palette[3] if rng.random() < 0.4 else rng.choice(palette[:3])
        left = int(rng.random() * width) - diameter // 2
        top = int(rng.random() * height) - diameter // 2
        glow.paste(Image.new("RGB", (diameter, diameter), colour), (left, top), mask)
    # Screen blending lightens like light does, so overlapping orbs glow instead of covering each other.
    return ImageChops.screen(picture, glow)


def _jitter(colour: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    shift = rng.randint(-24, 24)
    red, green, blue = (min(255, max(0, channel + shift)) for channel in colour)
    return red, green, blue
