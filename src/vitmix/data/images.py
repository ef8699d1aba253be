"""Opening one image of a dataset within vitmix.limits.MAX_IMAGE_PIXELS.

An image file's header says how large it is before a pixel is decoded, so an image over the
bound (a decompression bomb: a PNG of a few hundred bytes declaring 100,000 x 100,000 pixels)
is refused there, as an unreadable sample: skipped and counted like a truncated file, never
decoded.
"""

from __future__ import annotations

from typing import IO

from PIL import Image

from ..limits import MAX_IMAGE_PIXELS

__all__ = ["check_image_size", "open_checked"]


def check_image_size(img: Image.Image) -> Image.Image:
    """``img`` (opened, not decoded), or ValueError when it has more pixels than the bound."""
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{width} x {height} pixels, more than the {MAX_IMAGE_PIXELS:,} an "
                         f"image may have")
    return img


def open_checked(source: str | IO[bytes]) -> Image.Image:
    """``Image.open(source)`` once its header is read and its size is within the bound.

    PIL refuses images of more than twice its own bound in ``Image.open`` itself, with
    DecompressionBombError, which is not an OSError: said here in the words of the bound.
    """
    try:
        img = Image.open(source)
    except Image.DecompressionBombError as err:
        raise ValueError(f"more pixels than the {MAX_IMAGE_PIXELS:,} an image may have "
                         f"({err})") from None
    try:
        return check_image_size(img)
    except ValueError:
        img.close()
        raise
