"""Image files as the model's input, read with Pillow.

``load_image`` decodes a file into a (3, H, W) float32 array in [0, 1], once its header says it
has the size the annotation file says and at most ``MAX_PIXELS`` pixels; ``image_size`` reads
only a file's header, quick enough to check a whole data set's images before any work
(``coco.CocoDetection.image_problems``);
``image_paths`` turns the files and folders a user names into image files. An error names the
file and what to do.
"""
import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..core.files import UnreadableFileError

# What Pillow raises for a file it cannot read: damaged, truncated, not an image, or so large
# that decoding it would be a decompression bomb; its plugins also raise ValueError (a chunk cut
# short, a palette index out of range, a tile outside the image), IndexError, and TypeError
# (a TIFF tag of the wrong type: a fraction where a count belongs).
IMAGE_READ_ERRORS = (OSError, SyntaxError, EOFError, struct.error, ValueError, IndexError, TypeError,
                     Image.DecompressionBombError)
# The most pixels an image may have, and the longest side, read from its header and refused
# before anything is decoded: 64 megapixels (8192 x 8192), 65,535 pixels a side (JPEG's own
# limit). Decoding takes at most 16 bytes a pixel (Pillow's image, 4, and the float32 RGB
# result, 12), 1 GiB at the limit; the model resizes every image to max_size (1333 pixels for
# torchvision's recipe) anyway. A data set's image must also have the size its annotation
# gives, before it is decoded.
MAX_PIXELS = 2 ** 26
MAX_SIDE = 65535
_BAND_PIXELS = 2 ** 20  # pixels converted at a time (``_unit_rgb``): whole rows, about 16 MB as float32


class UnreadableImageError(UnreadableFileError, OSError):
    """An image file that cannot be read: damaged, truncated, not an image, too large, or not
    the size its annotation says. An UnreadableFileError (a ValueError) like every reader's,
    and an OSError as Pillow's own errors are."""


def load_image(path, height=None, width=None, upright=False):
    """(3, H, W) float32 in [0, 1] from an image file; checks the size the annotations expect.

    ``upright``: turn the image as its EXIF orientation says (a phone's portrait photo is
    stored on its side), as viewers show it. Off for data sets, whose annotations are drawn
    over the pixels as stored.

    Images come as their files have them: 8-bit ones in any mode become RGB (grey repeated,
    a palette looked up); an alpha channel (RGBA, LA, a palette with transparency) is laid
    over white, as a viewer on a white page shows it; 16-bit greyscale ones (PNG, TIFF) are
    divided by 65535, their full range, rather than clipped to 8 bits (16-bit colour PNGs
    Pillow itself reads at 8 bits a channel, scaled right).

    The size is read from the file's header and checked before anything is decoded: against
    ``height`` and ``width`` when given, and against ``MAX_PIXELS``. Errors name the file: a
    missing one is a FileNotFoundError; a damaged or truncated one, one of another size or too
    large, or of a kind that has no sensible RGB (32-bit integers outside the 16-bit range,
    floats outside [0, 1]) an ``UnreadableImageError``.
    """
    path = Path(path)
    try:
        found = path.is_file()
    except (OSError, ValueError) as e:  # a name too long for the system, a NUL byte in it
        raise UnreadableImageError(f"{str(path)[:300]}: not a path this system can open ({e})") from None
    if not found:
        raise FileNotFoundError(f"image file not found: {path} (check image_dir and the file_name in the "
                                "annotation file)")
    try:
        # from memory, not the file: Pillow's plugins read as many bytes as a chunk's length
        # claims (2 GB from a 43-byte PNG), and a file object allocates them before reading
        with Image.open(io.BytesIO(path.read_bytes())) as im:
            _check_size(path, *im.size[::-1], height, width)
            if upright:
                ImageOps.exif_transpose(im, in_place=True)  # decodes it; one copy at a time
            im.load()  # decodes now, so a damaged file fails here, where its name is known
            return _unit_rgb(im, path)
    except UnreadableFileError:
        raise
    except IMAGE_READ_ERRORS as e:
        # Pillow's messages ("image file is truncated", "broken PNG file") do not say which file
        raise UnreadableImageError(f"{path}: cannot read the image ({type(e).__name__}: {str(e)[:200]}); the file "
                                   "is damaged, truncated or not an image") from None


def _check_size(path, found_height, found_width, height, width):
    """The header's size against the annotation's (when given) and ``MAX_PIXELS``."""
    if height is not None and (found_height, found_width) != (height, width):
        raise UnreadableImageError(f"{path} is {found_height}x{found_width} (HxW) but the annotation file says "
                                   f"{height}x{width}: the masks would not line up; fix the file's 'height'/'width'")
    if found_height * found_width > MAX_PIXELS or max(found_height, found_width) > MAX_SIDE:
        raise UnreadableImageError(f"{path} is {found_height}x{found_width} (HxW), more than an image may have "
                                   f"({MAX_PIXELS} pixels, {MAX_SIDE} a side: images.MAX_PIXELS, MAX_SIDE): resize "
                                   "it first (the model works at about 1333 pixels a side)")


def _unit_rgb(im, path):
    """A decoded Pillow image as (3, H, W) float32 in [0, 1] (see ``load_image``), written into
    the result a band of rows (``_BAND_PIXELS``) at a time: the whole image at once would hold
    more 8-bit and float32 copies of it beside the result (1.5 GB more for a 12000 x 12000
    picture)."""
    width, height = im.size
    convert = _band_converter(im, path)
    out = np.empty((3, height, width), np.float32)
    rows = max(1, _BAND_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        band = im.crop((0, top, width, min(top + rows, height)))
        out[:, top:top + band.height] = convert(band)
    return out


def _band_converter(im, path):
    """A function from a band of ``im`` (a Pillow image of its mode) to its (3, h, W) or
    (h, W) float32 values in [0, 1]; the whole image's range is checked here first."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N") or im.mode == "I":
        low, high = im.getextrema()
        if im.mode == "I" and (low < 0 or high > 65535):
            raise UnreadableImageError(f"{path} holds 32-bit integer pixels from {low} to {high}: there is no "
                                       "standard way to show them; save the image with 8 or 16 bits per channel")
        return lambda band: np.asarray(band).astype(np.float32) / np.float32(65535)
    if im.mode == "F":
        def floats(band):
            grey = np.asarray(band, dtype=np.float32)
            if grey.size and not (np.isfinite(grey).all() and grey.min() >= 0 and grey.max() <= 1):
                raise UnreadableImageError(f"{path} holds floating-point pixels outside [0, 1] (from "
                                           f"{np.nanmin(grey):g} to {np.nanmax(grey):g}): scale them to [0, 1], or "
                                           "save 8 or 16 bits per channel")
            return grey
        return floats

    def converted(band, mode):
        try:
            return band if band.mode == mode else band.convert(mode)
        # a mode Pillow cannot turn into RGB (e.g. LAB), a palette index past its end, or a
        # transparency entry of the wrong kind for the mode (TypeError)
        except (ValueError, TypeError) as e:
            kind = f"mode {im.mode}" + (", with a transparency entry" if "transparency" in im.info else "")
            raise UnreadableImageError(f"{path}: its pixels ({kind}) cannot be shown as RGB ({e}); save it as "
                                       "an RGB or greyscale image") from None

    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        def over_white(band):
            rgba = np.asarray(converted(band, "RGBA"), dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
            return rgba[:3] * rgba[3:] + (1 - rgba[3:])
        return over_white

    return lambda band: np.asarray(converted(band, "RGB")).transpose(2, 0, 1) / np.float32(255)


def image_size(path):
    """(height, width) of the image file at ``path``, read from its header alone: nothing is
    decoded, so a whole data set is checked in moments, and a file truncated after its header
    is found only when it is loaded. Raises one of ``IMAGE_READ_ERRORS`` (Pillow's, which does
    not name the file) when Pillow cannot identify the file."""
    with Image.open(path) as im:
        width, height = im.size
    return height, width


def image_paths(inputs):
    """The image files that ``inputs`` (files and folders) name, in order: a folder stands for
    the image files directly inside it (by extension, sorted by name). Every path is checked
    before any is read, so a typo fails before any work."""
    extensions = set(Image.registered_extensions())
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir()
                           if p.suffix.lower() in extensions and not p.name.startswith(".") and p.is_file())
            if not found:
                raise FileNotFoundError(f"{item} is a folder with no image files in it (looked for "
                                        ".png, .jpg, .jpeg, .tif, .bmp, ... directly inside it)")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"image file not found: {item}")
    return paths
