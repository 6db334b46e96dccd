"""Weight files from the Hugging Face Hub, cache first: a backbone's (``hub``) and an adapter repo's (``user/name``).

Backbone weights (``backbone_weights: hub``):

timm publishes each pretrained tag as a Hugging Face repository (``timm/<tag>``) holding
``model.safetensors`` (older ones only ``pytorch_model.bin``). ``hub`` is resolved here to
that file on disk, so it is loaded by the same code as a local ``--set
model.backbone_weights=PATH`` file: the Hugging Face cache is searched first (an offline
compute node with a filled cache needs no network; ``HF_HUB_OFFLINE=1`` forbids any
download), else the file is downloaded. When neither works the run stops before any data
is read, with one line naming the tag, the file and the flag that points at a copy.

Adapter checkpoints (``load_checkpoint("user/name[@revision]")``): `download_checkpoint` is the
resolver `auformer.model.checkpoint` asks for a local path when a name is no local file; the
repo's ``adapter.json``/``adapter.safetensors`` are what `auformer.sharing` pushes.
"""

from __future__ import annotations

import re
from pathlib import Path

import timm
from huggingface_hub import hf_hub_download
from huggingface_hub.utils import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from auformer.errors import AUFormerError

HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")  # what timm looks for, preferred first


def hub_repo(tag: str) -> str:
    """The Hugging Face repository of a timm tag (``timm/vit_base_patch16_224.augreg_in1k``)."""
    cfg = timm.models.get_pretrained_cfg(tag)
    if cfg is None:
        raise AUFormerError(f"timm has no pretrained weights for {tag!r}; list them with timm.list_pretrained('vit_*')")
    if not cfg.hf_hub_id:
        raise AUFormerError(
            f"timm tag {tag!r} has no Hugging Face copy ({cfg.url or 'no url'}); download it yourself and {PASS_WEIGHTS}"
        )
    return cfg.hf_hub_id


# Said to both audiences: the Python API takes the keyword, the CLI the --set.
PASS_WEIGHTS = "pass backbone_weights=PATH (CLI: --set model.backbone_weights=PATH)"


def _unavailable(tag: str, repo: str, why: str) -> FileNotFoundError:
    from huggingface_hub import constants

    cache = "fill the Hugging Face cache" + ("" if constants.HF_HUB_OFFLINE else " and set HF_HUB_OFFLINE=1")
    return FileNotFoundError(
        f"backbone weights for timm tag {tag} are not available ({why}): download {HUB_FILENAMES[0]} of the "
        f"Hugging Face repo {repo} "
        f"(`auformer weights download {tag} --out DIR` on a machine with a network) and {PASS_WEIGHTS}, or {cache}"
    )


def cached_weights(tag: str) -> Path | None:
    """The tag's weight file in the Hugging Face cache (``HF_HOME``/``HF_HUB_CACHE``), or None; no network."""
    from huggingface_hub import try_to_load_from_cache

    repo = hub_repo(tag)
    for filename in HUB_FILENAMES:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):  # the other return values mean "not cached" / "known to be absent"
            return Path(found)
    return None


def hub_weights(tag: str) -> Path:
    """The tag's weight file: from the cache, else downloaded into it; one-line FileNotFoundError when neither works."""
    found = cached_weights(tag)
    if found is not None:
        return found
    return download_weights(tag)


def download_weights(tag: str, out_dir: str | Path | None = None) -> Path:
    """Download the tag's weight file into ``out_dir`` (or the Hugging Face cache when None)."""
    from huggingface_hub import constants

    repo = hub_repo(tag)
    if constants.HF_HUB_OFFLINE:
        raise _unavailable(tag, repo, "not in the Hugging Face cache and HF_HUB_OFFLINE=1")
    local_dir = None if out_dir is None else str(out_dir)
    for filename in HUB_FILENAMES:
        try:
            return Path(hf_hub_download(repo, filename, local_dir=local_dir))
        except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError) no connection to the hub
            raise _unavailable(tag, repo, "not in the Hugging Face cache and the hub is unreachable") from None
        except EntryNotFoundError:
            continue  # an older repository with only pytorch_model.bin
        except Exception as error:  # network, proxy, auth and disk errors all mean "cannot have it"
            raise _unavailable(
                tag, repo, f"not in the Hugging Face cache and the download failed: {type(error).__name__}"
            ) from None
    raise _unavailable(tag, repo, f"the repository has none of {', '.join(HUB_FILENAMES)}")


def remote_size(tag: str) -> int:
    """Size in bytes of the tag's weight file on the hub (one metadata request, no download);
    the one-line FileNotFoundError when offline or unreachable. Used by ``--dry-run``."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    repo = hub_repo(tag)
    if constants.HF_HUB_OFFLINE:
        raise _unavailable(tag, repo, "not in the Hugging Face cache and HF_HUB_OFFLINE=1")
    try:
        return get_hf_file_metadata(hf_hub_url(repo, HUB_FILENAMES[0])).size or 0
    except Exception as error:  # network, proxy and auth errors all mean "cannot have it"
        raise _unavailable(
            tag, repo, f"not in the Hugging Face cache and the hub is unreachable: {type(error).__name__}"
        ) from None


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
