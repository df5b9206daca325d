"""Image loading shared by all image datasets.

Every failure names the file: a missing file or an image that PIL cannot decode raises
:class:`gspdml.errors.DataError`. Datasets never drop images silently; the opt-in
``skip_corrupt=True`` of :class:`gspdml.data.base.ImageListDataset` uses :func:`find_unreadable`
to check every image once at construction and reports how many it skipped with a
:class:`SkippedImagesWarning` (and the ``gspdml.data`` logger).
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Sequence

from PIL import Image, UnidentifiedImageError

from gspdml.errors import DataError

logger = logging.getLogger("gspdml.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class SkippedImagesWarning(UserWarning):
    """Warned when ``skip_corrupt=True`` made a dataset leave out unreadable images."""


def load_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Open and fully decode the image at ``path``, converted to ``mode`` (default RGB).

    Raises:
        DataError: the file does not exist or is not a decodable image; the message names the file.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode) if mode is not None and image.mode != mode else image.copy()
    except FileNotFoundError:
        raise DataError(
            f"image file not found: {path!r} (it is listed by the dataset's metadata; check that the "
            "dataset was extracted completely and that root points at the right folder)"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"cannot read image {path!r}: {exc.__class__.__name__}: {exc}. The file is corrupt or not an "
            "image; replace it, or pass skip_corrupt=True to leave unreadable images out (their count is reported)"
        ) from None


def unreadable_reason(path: str | os.PathLike) -> str | None:
    """Return why the image at ``path`` cannot be used (missing or undecodable), or None if it is fine."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return "missing"
    try:
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"{exc.__class__.__name__}: {exc}"
    return None


def find_unreadable(paths: Iterable[str], progress: bool | None = None, desc: str = "checking images") -> list[tuple[int, str, str]]:
    """Decode every image once; return ``(index, path, reason)`` for those that fail.

    ``progress`` shows a tqdm bar (None: only on a terminal).
    """
    from tqdm.auto import tqdm

    paths = list(paths)
    bad = []
    disable = None if progress is None else not progress
    for index, path in enumerate(tqdm(paths, desc=desc, unit="img", disable=disable, leave=False)):
        reason = unreadable_reason(path)
        if reason is not None:
            bad.append((index, path, reason))
    return bad


def check_files_exist(paths: Sequence[str], where: str, max_listed: int = 5) -> None:
    """Raise DataError if any of ``paths`` is not an existing file (listing the first few)."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        listed = ", ".join(repr(p) for p in missing[:max_listed])
        more = f" (and {len(missing) - max_listed} more)" if len(missing) > max_listed else ""
        raise DataError(
            f"{len(missing)} of {len(paths)} image files listed by {where} do not exist: {listed}{more}. "
            "The metadata and the image folder are inconsistent; re-extract the dataset"
        )


def report_skipped(bad: Sequence[tuple[int, str, str]], total: int, where: str, extra: str = "", max_listed: int = 5) -> str:
    """Warn (SkippedImagesWarning + log) that ``bad`` images were skipped; return the message."""
    listed = "; ".join(f"{p!r} ({reason})" for _, p, reason in bad[:max_listed])
    more = f"; and {len(bad) - max_listed} more" if len(bad) > max_listed else ""
    message = f"skipped {len(bad)} of {total} images of {where} that cannot be read: {listed}{more}{extra}"
    logger.warning(message)
    warnings.warn(message, SkippedImagesWarning, stacklevel=3)
    return message
