"""Reading image files: RGB uint8 out, bounded in size, and a clear error naming a bad file.

Every reader of the package (the training pipeline, `evaluate`, `predict`) goes through
`load_rgb_image`, so a missing, unreadable, truncated or non-image file, or one above the pixel
limit, always fails the same way: `BadImageError("bad image PATH: REASON")`.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Images above this many pixels are refused before they are decoded (a 12000 x 12000 PNG would
# take ~10 GB); 36 MP keeps every common camera size (24 MP: 6000 x 4000).
DEFAULT_MAX_IMAGE_PIXELS = 36_000_000
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_PIL_LIMIT_LOCK = threading.Lock()


class BadImageError(ValueError):
    """An image file that cannot be used; the message starts with "bad image PATH:"."""

    def __init__(self, path: str | Path, reason: str, context: str = "") -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"bad image {path}: {reason}{context}")


def check_image_size(height: int, width: int, path: str | Path = "image",
                     max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Raises BadImageError if `height * width` exceeds `max_pixels` (None: no limit)."""
    if max_pixels is not None and height * width > max_pixels:
        raise BadImageError(path, f"{width} x {height} = {height * width} pixels is above the "
                            f"limit of {max_pixels}; downscale it or raise the limit "
                            "`max_image_pixels`")


def to_rgb8(img: Image.Image) -> np.ndarray:
    """A decoded PIL image as uint8 RGB `[h, w, 3]`; 16-bit images are scaled (v / 257), not
    clipped at 255."""
    if img.mode in SIXTEEN_BIT_MODES or (img.mode == "I" and img.format == "PNG"):
        values = np.asarray(img, dtype=np.float64)
        gray = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def open_without_pil_limit(path: Path) -> Image.Image:
    """`PIL.Image.open` (header only, nothing decoded) without PIL's own decompression-bomb
    limit, a process-wide 89M pixels that would override `max_pixels` both ways (name its own
    limit instead of ours, and refuse images a raised `max_pixels` allows); the caller
    checks the size before decoding. The global is restored at once, under a lock."""
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def load_rgb_image(path: str | Path,
                   max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Reads an image file as uint8 RGB `[h, w, 3]` (grayscale, palette, RGBA, CMYK, 16-bit
    converted). Raises BadImageError naming the file for a missing, non-image, truncated or
    oversized (> `max_pixels`, checked before decoding) file."""
    path = Path(path)
    if not path.is_file():
        raise BadImageError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_without_pil_limit(path) as img:
                width, height = img.size
                check_image_size(height, width, path, max_pixels)
                img.load()
                return to_rgb8(img)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image (unknown format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImageError(path, f"too large to decode safely ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(path, f"truncated or corrupt ({err})") from None


def image_file_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file from its header (nothing decoded); BadImageError
    naming the file when it is missing or not an image."""
    path = Path(path)
    if not path.is_file():
        raise BadImageError(path, "file not found")
    try:
        with open_without_pil_limit(path) as img:
            width, height = img.size
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image (unknown format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(path, f"truncated or corrupt ({err})") from None
    return int(height), int(width)
