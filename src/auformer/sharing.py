"""Adapter sharing: push a checkpoint to the Hugging Face Hub with a model card, as peft shares its adapters.

A Hub repo holds ``adapter.safetensors`` + ``adapter.json`` (the two files of
`auformer.model.checkpoint`, renamed) and a model card ``README.md``; the frozen
backbone is not uploaded (it is the timm hub ViT, the packaged synthetic ViT, or a
file the user names with ``--backbone-weights``). Pulling is checkpoint loading's own
resolver (`auformer.model.weights.download_checkpoint`: ``load_checkpoint("user/name")``),
kept below this module so that `auformer.model` never imports upward. Both go through
``huggingface_hub``, so its cache (``HF_HUB_CACHE``), offline mode
(``HF_HUB_OFFLINE=1``) and login (``HF_TOKEN`` or ``hf auth login``) apply unchanged.
"""

from __future__ import annotations

import json
import os

from huggingface_hub import CommitOperationAdd, HfApi

from auformer.errors import AUFormerError
from auformer.model.checkpoint import checkpoint_paths, read_checkpoint_meta
from auformer.model.weights import REPO_STEM, parse_repo_id


def model_card(meta: dict, repo_id: str) -> str:
    """The repo's README.md: Hub metadata, what the adapters detect and how to load them."""
    aus = ", ".join(f"AU{au}" for au in meta["aus"])
    backbone = meta["backbone"]
    extra = {key: value for key, value in meta.get("extra", {}).items() if isinstance(value, (int, float, str))}
    return f"""---
library_name: auformer
tags:
- auformer
- facial-action-units
- action-unit-detection
---
# {repo_id}

AUFormer adapters (Mixture-of-Knowledge-Experts and AU heads, adapter-only) for {len(meta["aus"])} facial
Action Units: {aus}. Backbone `{backbone["name"]}`, weights `{backbone["weights"]}`
(sha256 `{backbone["sha256"]}`; the backbone is not in this repo). Written by auformer {meta["auformer_version"]}.

```bash
auformer detect photo.jpg --checkpoint {repo_id} --out results/
```

```python
import auformer
model = auformer.load_checkpoint("{repo_id}")
```

Training record: `{json.dumps(extra)}`
"""


def push_checkpoint(
    checkpoint: str | os.PathLike, repo_id: str, private: bool = False, message: str = "Upload auformer adapters"
) -> str:
    """Upload a local checkpoint's two files (as ``adapter.*``) and a model card; returns the commit URL.

    The repo is created if missing. Bad arguments are ``ValueError``/``FileNotFoundError``;
    Hub failures (offline, not logged in, no rights) are one ``ConnectionError`` line.
    """
    if parse_repo_id(repo_id) is None or "@" in repo_id:
        raise AUFormerError(f"REPO_ID must look like user/name (letters, digits, '-', '_', '.'), got {repo_id!r}")
    weights_path, json_path = checkpoint_paths(checkpoint)
    if not weights_path.is_file():
        raise FileNotFoundError(f"checkpoint weights not found: {weights_path} (push takes a local checkpoint)")
    meta = read_checkpoint_meta(checkpoint)
    operations = [
        CommitOperationAdd(f"{REPO_STEM}.safetensors", str(weights_path)),
        CommitOperationAdd(f"{REPO_STEM}.json", (json.dumps(meta, indent=2) + "\n").encode()),
        CommitOperationAdd("README.md", model_card(meta, repo_id).encode()),
    ]
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.create_commit(repo_id, operations=operations, commit_message=message)
    except OSError as error:  # HTTP errors (401, 403, ...), connection errors and offline mode are all OSError
        raise ConnectionError(f"push to Hugging Face Hub repo {repo_id} failed: {str(error).splitlines()[0]}") from None
    return commit.commit_url
