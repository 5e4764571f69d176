"""Images as a corpus: a folder (searched recursively) or a list file of image paths.

Each readable image becomes a :class:`~saedata.corpus.Document` whose text is the image's
absolute path (so reports can show a thumbnail), whose ``ext_id`` is its path relative
to the folder (or as written in the list file), and whose metadata holds its width,
height, mode, format and parent folder. Files that are not images, or that cannot be
decoded, are skipped and counted (``n_empty``) and listed in ``skipped``, as are
files that are not regular files (FIFOs, sockets) and decompression bombs (images that
decode to more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``); mixed sizes and
modes are fine (the vision reader converts to RGB and resizes).
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saedata.config import InputConfig
from saedata.corpus.formats import IMAGE_EXTENSIONS, Document
from saedata.errors import InputError


def is_image_source(path: str | os.PathLike, cfg: InputConfig = InputConfig()) -> bool:
    """A folder, or any file when ``--input-format images`` says it lists images."""
    return cfg.format == "images" or (str(path) != "-" and os.path.isdir(path))


class ImageCorpusReader:
    """Iterate the images of a folder or list file in batches of Documents (sorted by path)."""

    format = "images"

    def __init__(self, path: str | os.PathLike, cfg: InputConfig = InputConfig()):
        self.cfg = cfg
        root = Path(path)
        if str(path) == "-":
            raise InputError("images cannot be read from stdin; give a folder or a list file", path="-")
        if not root.exists():
            raise InputError("no such file or folder", path=str(root))
        self.source = str(root.resolve())
        self.n_read = 0
        self.n_empty = 0
        self.skipped: list[tuple[str, str]] = []
        """(path, reason) of every file skipped so far."""
        if root.is_dir():
            self._base = root.resolve()
            self._paths = sorted(
                (p for p in self._base.rglob("*") if not p.is_dir() and not p.name.startswith(".")),
                key=lambda p: str(p),
            )
        else:
            self._base = root.resolve().parent
            lines = root.read_text(encoding="utf-8").splitlines()
            self._paths = [(self._base / ln.strip()) for ln in lines if ln.strip()]
        if not self._paths:
            raise InputError("the folder has no files; nothing to embed", path=self.source)

    def __len__(self) -> int:
        return len(self._paths)

    def __iter__(self) -> Iterator[list[Document]]:
        self.n_read = self.n_empty = 0
        self.skipped = []
        batch: list[Document] = []
        for i, p in enumerate(self._paths, start=1):
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                self._skip(p, "not an image file")
                continue
            meta = self._image_meta(p)
            if meta is None:
                continue
            try:
                ext_id = str(p.relative_to(self._base))
            except ValueError:
                ext_id = str(p)
            batch.append(Document(ext_id=ext_id, text=str(p.resolve()), meta=meta, line=i))
            self.n_read += 1
            if len(batch) >= self.cfg.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _image_meta(self, path: Path) -> dict[str, Any] | None:
        """The image's width, height, mode, format and folder, decoded in full (a truncated
        file fails here, not mid-embedding); None, with the file skipped, when it is not a
        regular file (a FIFO would block), cannot be decoded, or decodes to more pixels than
        PIL allows (a decompression bomb)."""
        from PIL import Image, UnidentifiedImageError

        try:
            if not stat.S_ISREG(path.stat().st_mode):
                self._skip(path, "not a regular file")
                return None
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    im.load()
                    return {"width": im.width, "height": im.height, "mode": im.mode,
                            "format": im.format, "folder": path.parent.name}
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            self._skip(path, f"decompression bomb ({_first_line(e)})")
        except (OSError, UnidentifiedImageError, ValueError) as e:
            self._skip(path, f"unreadable image ({_first_line(e)})")
        return None

    def _skip(self, path: Path, reason: str) -> None:
        self.n_empty += 1
        self.skipped.append((str(path), reason))


def _first_line(e: BaseException, width: int = 80) -> str:
    """The first line of an exception's message, cut to ``width`` characters."""
    return (str(e).splitlines() or [type(e).__name__])[0][:width]


def thumbnail_png(path: str | os.PathLike, size: int = 96) -> bytes | None:
    """A PNG thumbnail of an image file, or None when it cannot be read."""
    import io

    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            if max(im.size) < size // 2:  # tiny images (8x8 digits) are scaled up, pixelated
                scale = max(1, size // max(im.size))
                im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            return buf.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
