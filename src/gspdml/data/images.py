"""Image loading shared by all image datasets.

Every failure names the file: a missing file or an image that PIL cannot decode raises
:class:`gspdml.errors.DataError`. Datasets never drop images silently; the opt-in
``skip_corrupt=True`` of :class:`gspdml.data.base.ImageListDataset` uses :func:`find_unreadable`
to check every image once at construction and reports how many it skipped with a
:class:`SkippedImagesWarning` (and the ``gspdml.data`` logger).

Verification (:func:`find_unreadable` with a cache file): every image is opened, checked by
PIL's ``verify`` and decoded (JPEGs at reduced scale, which still reads the whole compressed
stream), in a few threads. The images found good are recorded in a small JSON cache
(:class:`VerifyCache`: path -> size and modification time), so the next verification of the same
files decodes only those that are new or changed. The cache lives next to the dataset's metadata
(``.gspdml-verified.json``) or, where that folder is not writable, in the user cache folder
(``$GSPDML_CACHE_DIR``, else ``$XDG_CACHE_HOME/gspdml``, else ``~/.cache/gspdml``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

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
    """Return why the image at ``path`` cannot be used (missing or undecodable), or None if it is fine.

    The file is checked by PIL's ``verify`` and then decoded (a JPEG at 1/8 scale: the whole
    compressed stream is still read, so a truncated file is found)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return "missing"
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"{exc.__class__.__name__}: {exc}"
    return None


VERIFY_CACHE_NAME = ".gspdml-verified.json"


def user_cache_dir() -> Path:
    """gspdml's user cache folder: ``$GSPDML_CACHE_DIR``, else ``$XDG_CACHE_HOME/gspdml``, else
    ``~/.cache/gspdml``."""
    if os.environ.get("GSPDML_CACHE_DIR"):
        return Path(os.environ["GSPDML_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gspdml"


def _signature(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


class VerifyCache:
    """The images already found good: ``{absolute path: [size, mtime_ns]}`` in a JSON file.

    ``folder`` is where the dataset's metadata lives (the cache file ``.gspdml-verified.json`` is
    written there); when it is not writable, or with ``folder=None``, the file goes to
    :func:`user_cache_dir`, named after a hash of ``key`` (default: ``folder``). A file whose size or modification time changed is checked again. The cache
    is only an accelerator: an unreadable or unwritable cache file is ignored (logged)."""

    def __init__(self, folder: str | os.PathLike | None, key: str | None = None) -> None:
        key = os.path.abspath(os.fspath(folder)) if key is None and folder is not None else str(key)
        digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        self.candidates = [Path(folder) / VERIFY_CACHE_NAME] if folder is not None else []
        self.candidates.append(user_cache_dir() / "verified" / f"{digest}.json")
        self.good: dict[str, list[int]] = {}
        for candidate in self.candidates:
            try:
                data = json.loads(candidate.read_text())
            except (OSError, ValueError):
                continue
            files = data.get("files") if isinstance(data, dict) else None
            if isinstance(files, dict):
                self.good.update({k: v for k, v in files.items() if isinstance(v, list)})

    def is_good(self, path: str) -> bool:
        """Whether ``path`` was verified before and has not changed since."""
        known = self.good.get(os.path.abspath(path))
        return known is not None and known == _signature(path)

    def add(self, path: str) -> None:
        sig = _signature(path)
        if sig is not None:
            self.good[os.path.abspath(path)] = sig

    def save(self) -> Path | None:
        """Write the cache (the first writable candidate); returns its path, None if none was writable."""
        from gspdml.io import write_json

        for candidate in self.candidates:
            try:
                candidate.parent.mkdir(parents=True, exist_ok=True)
                return write_json(candidate, {"version": 1, "files": self.good})
            except OSError as exc:
                logger.debug("cannot write the image verification cache %s: %s", candidate, exc)
        logger.info("image verification cache not written (no writable folder among %s)",
                    ", ".join(str(c) for c in self.candidates))
        return None


def find_unreadable(paths: Iterable[str], progress: bool | None = None, desc: str = "checking images",
                    cache: VerifyCache | None = None, threads: int | None = None) -> list[tuple[int, str, str]]:
    """Check every image once (:func:`unreadable_reason`); return ``(index, path, reason)`` for
    those that fail.

    With ``cache``, images recorded good and unchanged are not decoded again, and the good ones
    found now are added and the cache saved. ``threads`` decode in parallel (default: up to 8,
    never more than the CPUs); ``progress`` shows a tqdm bar (None: only on a terminal).
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    paths = list(paths)
    todo = [i for i, p in enumerate(paths) if cache is None or not cache.is_good(p)]
    bad = []
    if todo:
        workers = threads or max(1, min(8, os.cpu_count() or 1))
        disable = None if progress is None else not progress
        with ThreadPoolExecutor(max_workers=workers) as pool:
            reasons = pool.map(lambda i: unreadable_reason(paths[i]), todo, chunksize=16)
            for index, reason in zip(todo, tqdm(reasons, total=len(todo), desc=desc, unit="img",
                                                disable=disable, leave=False)):
                if reason is not None:
                    bad.append((index, paths[index], reason))
                elif cache is not None:
                    cache.add(paths[index])
        if cache is not None:
            cache.save()
    return bad


def unreadable_error(bad: Sequence[tuple[int, str, str]], total: int, where: str, max_listed: int = 5) -> DataError:
    """The DataError for the images ``bad`` (``(index, path, reason)``) of ``total`` found by a
    verification: how many, the first few with their reasons, and the options."""
    listed = "; ".join(f"{p!r} ({reason})" for _, p, reason in bad[:max_listed])
    more = f"; and {len(bad) - max_listed} more" if len(bad) > max_listed else ""
    return DataError(
        f"{len(bad)} of {total} images of {where} cannot be read: {listed}{more}. Replace or remove them, "
        "set the dataset option skip_corrupt=true to leave them out (their count is reported), or "
        "verify=false to skip this check"
    )


def check_files_exist(paths: Sequence[str], where: str, max_listed: int = 5,
                      hint: str = "The metadata and the image folder are inconsistent; re-extract the dataset",
                      names: Sequence[str] | None = None) -> None:
    """Raise DataError if any of ``paths`` is not an existing file (listing the first few, by
    ``names[i]`` when given, e.g. ``row 7 'images/a.jpg'``), ending with ``hint``."""
    missing = [i for i, p in enumerate(paths) if not os.path.isfile(p)]
    if missing:
        listed = ", ".join(names[i] if names is not None else repr(paths[i]) for i in missing[:max_listed])
        more = f" (and {len(missing) - max_listed} more)" if len(missing) > max_listed else ""
        raise DataError(f"{len(missing)} of {len(paths)} image files listed by {where} do not exist: {listed}{more}. {hint}")


def report_skipped(bad: Sequence[tuple[int, str, str]], total: int, where: str, extra: str = "", max_listed: int = 5) -> str:
    """Warn (SkippedImagesWarning + log) that ``bad`` images were skipped; return the message."""
    listed = "; ".join(f"{p!r} ({reason})" for _, p, reason in bad[:max_listed])
    more = f"; and {len(bad) - max_listed} more" if len(bad) > max_listed else ""
    message = f"skipped {len(bad)} of {total} images of {where} that cannot be read: {listed}{more}{extra}"
    logger.warning(message)
    warnings.warn(message, SkippedImagesWarning, stacklevel=3)
    return message
