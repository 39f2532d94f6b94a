"""How KernieGen holds IMAGE and MASK values, and the pixel arithmetic that makes them ComfyUI's.

ComfyUI keeps images as float32 tensors and SaveImage writes `uint8(255 * x)` (truncating). KernieGen
keeps 8-bit PIL images whose bytes are exactly what ComfyUI would save, and applies float32-faithful
lookup tables where ComfyUI's arithmetic does not round-trip (ImageInvert turns 65 into 189, not 190),
so model-free graphs produce the same pixels, and PNG bytes, as ComfyUI.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from functools import cache

from PIL import Image

from gateway.kerniegen.compute_types import NodeExecutionError

Images = list[Image.Image]  # IMAGE: a batch of RGB images of one size
Masks = list[Image.Image]  # MASK: a batch of "L" images holding uint8(255 * mask)

# Beyond this many distinct pixels in one node output KernieGen refuses, as ComfyUI does when
# torch cannot allocate (8192 x 8192 fits; a 16384-pixel square or a 4096 batch of 512s does not).
MAX_OUTPUT_PIXELS = 8192 * 8192


def _float32(value: float) -> float:
    single: float = struct.unpack("f", struct.pack("f", value))[0]
    return single


def saved_byte(value: float) -> int:
    """What `np.clip(255. * x, 0, 255).astype(np.uint8)` makes of one float32 channel value."""
    return min(255, max(0, math.trunc(_float32(255.0 * _float32(value)))))


def level(byte: int) -> float:
    """The float32 ComfyUI holds for a channel read from an 8-bit file or EmptyImage's color."""
    return _float32(byte / 255)


@cache
def invert_table() -> tuple[int, ...]:
    """ImageInvert (`1.0 - image`) per stored byte, float32 rounding included."""
    return tuple(saved_byte(_float32(1.0 - level(byte))) for byte in range(256))


def ensure_pixel_budget(width: int, height: int, distinct_images: int) -> None:
    """Refuse an output ComfyUI could not allocate on an ordinary machine, before allocating it."""
    pixels = width * height * max(distinct_images, 1)
    if pixels > MAX_OUTPUT_PIXELS:
        wanted = pixels * 3 * 4  # ComfyUI's float32 RGB tensor
        raise NodeExecutionError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
            f"you tried to allocate {wanted} bytes.",
            exception_type="RuntimeError",
        )


def map_batch(images: Sequence[Image.Image], transform: Callable[[Image.Image], Image.Image]) -> Images:
    """Apply a per-image transform once per distinct image object (EmptyImage batches share one)."""
    done: dict[int, Image.Image] = {}
    result: Images = []
    for image in images:
        key = id(image)
        if key not in done:
            done[key] = transform(image)
        result.append(done[key])
    return result


def distinct_count(images: Sequence[Image.Image]) -> int:
    return len({id(image) for image in images})


def filled_batch(width: int, height: int, rgb: tuple[int, int, int], batch_size: int) -> Images:
    """A batch of one flat color; every entry is the same immutable-by-convention image."""
    ensure_pixel_budget(width, height, 1)
    image = Image.new("RGB", (width, height), rgb)
    return [image] * batch_size


def check_images(value: object) -> Images:
    """The IMAGE a node received, or the error ComfyUI would raise touching something else."""
    if isinstance(value, list) and value and all(isinstance(item, Image.Image) for item in value):
        return value
    raise NodeExecutionError(f"'{type(value).__name__}' object has no attribute 'shape'",
                             exception_type="AttributeError")
