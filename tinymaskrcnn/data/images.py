"""Image files as the model's input, read with Pillow.

``load_image`` decodes a file into a (3, H, W) float32 array in [0, 1] and checks it has the size
the annotation file says; ``image_size`` reads only a file's header, quick enough to check a
whole data set's images before any work (``coco.CocoDetection.image_problems``);
``image_paths`` turns the files and folders a user names into image files. An error names the
file and what to do.
"""
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# What Pillow raises for a file it cannot read: damaged, truncated, not an image, or so large
# that decoding it would be a decompression bomb.
IMAGE_READ_ERRORS = (OSError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def load_image(path, height=None, width=None, upright=False):
    """(3, H, W) float32 in [0, 1] from an image file; checks the size the annotations expect.

    ``upright``: turn the image as its EXIF orientation says (a phone's portrait photo is
    stored on its side), as viewers show it. Off for data sets, whose annotations are drawn
    over the pixels as stored.

    Images come as their files have them: 8-bit ones in any mode become RGB (grey repeated,
    a palette looked up); an alpha channel (RGBA, LA, a palette with transparency) is laid
    over white, as a viewer on a white page shows it; 16-bit greyscale ones (PNG, TIFF) are
    divided by 65535, their full range, rather than clipped to 8 bits (16-bit colour PNGs
    Pillow itself reads at 8 bits a channel, scaled right). Errors name the file: missing,
    damaged or truncated, or of a kind that has no sensible RGB (32-bit integers outside the
    16-bit range, floats outside [0, 1]).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path} (check image_dir and the file_name in the "
                                "annotation file)")
    try:
        with Image.open(path) as im:
            im.load()  # decodes now, so a damaged file fails here, where its name is known
            pixels = _unit_rgb(ImageOps.exif_transpose(im) if upright else im, path)
    except IMAGE_READ_ERRORS as e:
        # Pillow's messages ("image file is truncated", "broken PNG file") do not say which file
        raise OSError(f"{path}: cannot read the image ({e}); the file is damaged, truncated or not an image") from None
    if height is not None and pixels.shape[1:] != (height, width):
        raise ValueError(f"{path} is {pixels.shape[1]}x{pixels.shape[2]} (HxW) but the annotation file says "
                         f"{height}x{width}: the masks would not line up; fix the file's 'height'/'width'")
    return pixels


def _unit_rgb(im, path):
    """A decoded Pillow image as (3, H, W) float32 in [0, 1] (see ``load_image``)."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N") or im.mode == "I":
        grey = np.asarray(im)
        if im.mode == "I" and grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise ValueError(f"{path} holds 32-bit integer pixels from {grey.min()} to {grey.max()}: there is no "
                             "standard way to show them; save the image with 8 or 16 bits per channel")
        grey = grey.astype(np.float32) / np.float32(65535)
    elif im.mode == "F":
        grey = np.asarray(im, dtype=np.float32)
        if grey.size and not (np.isfinite(grey).all() and grey.min() >= 0 and grey.max() <= 1):
            raise ValueError(f"{path} holds floating-point pixels outside [0, 1] (from {np.nanmin(grey):g} to "
                             f"{np.nanmax(grey):g}): scale them to [0, 1], or save 8 or 16 bits per channel")
    else:
        if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
            rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / np.float32(255)
            alpha = rgba[..., 3:]
            rgb = rgba[..., :3] * alpha + (1 - alpha)  # over white
        else:
            try:
                rgb = im if im.mode == "RGB" else im.convert("RGB")
            except ValueError as e:  # a mode Pillow cannot turn into RGB (e.g. LAB)
                raise ValueError(f"{path}: images of mode {im.mode} cannot be shown as RGB ({e}); "
                                 "save it as an RGB or greyscale image") from None
            return _unit_rgb_in_bands(rgb)
        return np.ascontiguousarray(rgb.transpose(2, 0, 1))
    return np.ascontiguousarray(np.broadcast_to(grey, (3, *grey.shape)))


def _unit_rgb_in_bands(rgb, rows=256):
    """An RGB Pillow image as (3, H, W) float32 in [0, 1], written into the result a band of
    ``rows`` rows at a time: the whole image at once would hold two more 8-bit copies of it
    (Pillow's bytes, NumPy's array) and two float32 ones (divided, then transposed) beside the
    result, 1.5 GB more for a 12000 x 12000 picture."""
    width, height = rgb.size
    out = np.empty((3, height, width), np.float32)
    for top in range(0, height, rows):
        band = np.asarray(rgb.crop((0, top, width, min(top + rows, height))))
        np.divide(band.transpose(2, 0, 1), np.float32(255), out=out[:, top:top + band.shape[0]])
    return out


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
