"""What the CK+ and Aff-Wild2 converters share: decoding a label file, with the file and line named on failure."""

from __future__ import annotations

from pathlib import Path

from auformer.errors import AUFormerError


def read_label_text(path: Path) -> str:
    """The text of a label file (UTF-8, an optional byte-order mark); not text is an error naming the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise AUFormerError(f"{path}: line {line}: not UTF-8 text") from None
