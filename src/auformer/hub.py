"""Share adapter-only checkpoints on the Hugging Face Hub, as peft shares its adapters.

A Hub repo holds ``adapter.safetensors`` + ``adapter.json`` (the two files of
`auformer.model.checkpoint`, renamed) and a model card ``README.md``; the frozen
backbone is not uploaded (it is the timm hub ViT, the packaged synthetic ViT, or a
file the user names with ``--backbone-weights``). Downloads go through
``huggingface_hub``, so its cache (``HF_HUB_CACHE``), offline mode
(``HF_HUB_OFFLINE=1``) and login (``HF_TOKEN`` or ``hf auth login``) apply unchanged.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.utils import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from auformer.errors import AUFormerError

REPO_STEM = "adapter"  # adapter.safetensors + adapter.json in the repo
# user/name[@revision]: the Hub's naming rules (letters, digits, - _ .), revision a branch, tag or commit.
_REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")


def parse_repo_id(text: str) -> tuple[str, str | None] | None:
    """``"user/name@v1"`` -> ``("user/name", "v1")``; ``None`` where ``text`` cannot be a Hub repo id."""
    match = _REPO_ID.match(text)
    if match is None or ".." in match["repo"] or match["repo"].endswith((".", "-")):
        return None
    return match["repo"], match["revision"]


def download_checkpoint(repo_id: str, revision: str | None = None) -> Path:
    """Fetch the adapter files of a Hub repo (or find them in the cache) -> the checkpoint path (no suffix).

    Any failure (no such repo, revision or file, no network and not cached) is one
    ``FileNotFoundError`` line naming the repo and what to do.
    """
    name = repo_id + (f"@{revision}" if revision else "")
    try:
        for suffix in (".json", ".safetensors"):  # both land in one snapshot folder: snapshots/<commit>/
            path = hf_hub_download(repo_id, REPO_STEM + suffix, revision=revision)
    except LocalEntryNotFoundError:  # offline, or the Hub unreachable, and not in the cache
        raise FileNotFoundError(
            f"checkpoint {name}: no such local file, and the Hugging Face Hub cannot be reached "
            "(offline?) with no copy in the local cache"
        ) from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"checkpoint {name}: Hub repo {repo_id} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"checkpoint {name}: no such local file or Hub repo (a private or gated repo needs `hf auth login` or HF_TOKEN)"
        ) from None
    except EntryNotFoundError:
        raise FileNotFoundError(
            f"checkpoint {name}: Hub repo has no {REPO_STEM}.json/.safetensors "
            "(not an auformer adapter repo; see `auformer push`)"
        ) from None
    except OSError as error:  # other HTTP and connection errors
        raise FileNotFoundError(f"checkpoint {name}: Hugging Face Hub download failed: {str(error).splitlines()[0]}") from None
    return Path(path).with_suffix("")


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
    from auformer.model.checkpoint import checkpoint_paths, read_checkpoint_meta  # it imports this module

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
