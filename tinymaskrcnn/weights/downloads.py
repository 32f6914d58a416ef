"""torchvision's published weight files: where they are, and downloads verified by SHA-256.

torchvision names each file after the start of its SHA-256 (``resnet50-0676ba61.pth``), so a
download is checked against its own name; it appears under that name only once complete and
verified, and a file already there is checked before it is reused.
"""
import hashlib
import os
import re
import urllib.request

from ..core.files import atomic_write

__all__ = ["WEIGHT_URLS", "download", "verify_sha256"]

_BASE_URL = "https://download.pytorch.org/models/"
# name -> URL. The hex digits before '.pth' are the start of the file's SHA-256.
WEIGHT_URLS = {
    "resnet18": _BASE_URL + "resnet18-f37072fd.pth",            # ImageNet, IMAGENET1K_V1
    "resnet34": _BASE_URL + "resnet34-b627a593.pth",
    "resnet50": _BASE_URL + "resnet50-0676ba61.pth",            # the Mask R-CNN backbone's start
    "resnet50_v2": _BASE_URL + "resnet50-11ad3fa6.pth",         # IMAGENET1K_V2 (newer recipe)
    "resnet101": _BASE_URL + "resnet101-63fe2227.pth",
    "resnet101_v2": _BASE_URL + "resnet101-cd907fc2.pth",
    "resnet152": _BASE_URL + "resnet152-394f9c45.pth",
    "resnet152_v2": _BASE_URL + "resnet152-f82ba261.pth",
    "maskrcnn_resnet50_fpn_coco": _BASE_URL + "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",  # 37.9 box / 34.6 mask AP
}

_HASH_IN_NAME = re.compile(r"-([0-9a-f]+)\.")


def _hash_prefix(filename):
    match = _HASH_IN_NAME.search(os.path.basename(filename))
    if match is None:
        raise ValueError(f"{filename!r} carries no '-<sha256 prefix>.' in its name to check against")
    return match.group(1)


def verify_sha256(path, prefix=None):
    """Check that the SHA-256 of the file at ``path`` starts with ``prefix`` (default: the hex
    digits in the file name, torchvision's convention: 'resnet50-0676ba61.pth'). Returns the
    full hex digest; raises ValueError on a mismatch."""
    prefix = _hash_prefix(path) if prefix is None else prefix
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    _check_digest(digest.hexdigest(), prefix, path)
    return digest.hexdigest()


def _check_digest(hexdigest, prefix, what):
    if not hexdigest.startswith(prefix):
        raise ValueError(f"SHA-256 of {what} is {hexdigest}, expected it to start with {prefix}: the file is "
                         "corrupt or not the published one; delete it and download again")


def download(name, dest_dir=None):
    """Download torchvision's weight file ``name`` (a key of ``WEIGHT_URLS``) into ``dest_dir``
    (default ~/.cache/tinymaskrcnn), check its SHA-256 prefix and return its path. A file
    already there is checked and reused. The file appears under its final name only once
    complete and verified."""
    if name not in WEIGHT_URLS:
        raise ValueError(f"unknown weights {name!r}: choose one of {', '.join(WEIGHT_URLS)}")
    url = WEIGHT_URLS[name]
    dest_dir = dest_dir or os.path.join(os.path.expanduser("~"), ".cache", "tinymaskrcnn")
    dest = os.path.join(dest_dir, url.rsplit("/", 1)[1])
    prefix = _hash_prefix(dest)
    if os.path.exists(dest):
        verify_sha256(dest, prefix)
        return dest
    os.makedirs(dest_dir, exist_ok=True)

    def fetch(f):
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=60) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                f.write(chunk)
        _check_digest(digest.hexdigest(), prefix, url)  # raising here discards the temporary file

    atomic_write(dest, fetch)
    return dest
