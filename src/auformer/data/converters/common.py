"""What the CK+ and Aff-Wild2 converters share: decoding a label file, and notes added to the JSON files `run_prepare` wrote.

CK+ and Aff-Wild2 record more than the shared :class:`~auformer.data.converters.PrepareReport`
holds (sequences without FACS codes, unannotated frames, the official split). The readers
(`read_folds`) ignore keys they do not know, so the extra keys cost them nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from auformer.errors import AUFormerError
from auformer.files import atomic_write_text


def read_label_text(path: Path) -> str:
    """The text of a label file (UTF-8, an optional byte-order mark); not text is an error naming the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise AUFormerError(f"{path}: line {line}: not UTF-8 text") from None


def add_notes(out_dir: str | Path, name: str, notes: dict[str, Any]) -> None:
    """Merge ``notes`` into the JSON object ``out_dir/name`` (atomically; a key already there is replaced)."""
    path = Path(out_dir) / name
    data = json.loads(path.read_text())
    atomic_write_text(path, json.dumps({**data, **notes}, indent=2) + "\n")
