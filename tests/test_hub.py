"""Hub repo ids as checkpoints, offline: a local cache laid out as huggingface_hub lays it out, and `auformer push`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import scan_cache_dir
from PIL import Image

from auformer import load_checkpoint, save_checkpoint
from auformer.cli import main
from auformer.model import build_model
from auformer.model.weights import REPO_STEM, parse_repo_id
from auformer.sharing import push_checkpoint

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache in offline mode (huggingface_hub reads these constants at call time)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def put_in_cache(cache: Path, repo_id: str, files: dict[str, bytes], refs: tuple[str, ...] = ("main",)) -> None:
    """The hub cache layout: blobs/<sha256> holds the bytes, snapshots/<commit>/<name> links to it, refs/<branch> names the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / COMMIT / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../..") / "blobs" / blob.name)
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(COMMIT)


class FakeHfApi:
    """Stands in for huggingface_hub.HfApi: records what push would upload."""

    uploads: dict[str, dict[str, bytes]] = {}

    def create_repo(self, repo_id, private=False, exist_ok=False):
        assert exist_ok

    def create_commit(self, repo_id, operations, commit_message):
        FakeHfApi.uploads[repo_id] = {
            op.path_in_repo: Path(op.path_or_fileobj).read_bytes() if isinstance(op.path_or_fileobj, str) else op.path_or_fileobj
            for op in operations
        }
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{COMMIT}",
            commit_message=commit_message,
            commit_description="",
            oid=COMMIT,
        )


@pytest.fixture
def pushed(tmp_path, hub_cache, tiny_model_kwargs, monkeypatch, capsys):
    """A tiny trained-like model, pushed with the fake Hub API and laid into the offline cache as the Hub would serve it."""
    torch.manual_seed(0)
    model = build_model(3, aus=[1, 2, 4], **tiny_model_kwargs).eval()
    for parameter in model.learnable_state_dict().values():
        parameter.data.normal_()
    save_checkpoint(model, tmp_path / "run" / "best", extra={"epoch": 2, "mean_f1": 0.5})
    monkeypatch.setattr("auformer.sharing.HfApi", FakeHfApi)
    assert main(["push", str(tmp_path / "run" / "best"), "user/tiny-aus"]) == 0
    assert capsys.readouterr().out == (
        f"pushed {tmp_path / 'run' / 'best'} to https://huggingface.co/user/tiny-aus "
        f"(commit https://huggingface.co/user/tiny-aus/commit/{COMMIT})\n"
    )
    put_in_cache(hub_cache, "user/tiny-aus", FakeHfApi.uploads["user/tiny-aus"], refs=("main", "v1"))
    return model


@pytest.mark.parametrize(
    "text, expected",
    [
        ("user/name", ("user/name", None)),
        ("org-1/AU.adapters_v2@v1.0", ("org-1/AU.adapters_v2", "v1.0")),
        (f"user/name@{COMMIT}", ("user/name", COMMIT)),
        ("best", None),
        ("runs/x/best", None),
        ("/abs/best", None),
        ("./best", None),
        ("user/name@", None),
        ("a/..", None),
    ],
)
def test_parse_repo_id(text, expected):
    assert parse_repo_id(text) == expected


def test_push_uploads_adapter_files_and_a_card(pushed):
    files = FakeHfApi.uploads["user/tiny-aus"]
    assert sorted(files) == ["README.md", f"{REPO_STEM}.json", f"{REPO_STEM}.safetensors"]
    assert json.loads(files[f"{REPO_STEM}.json"])["aus"] == [1, 2, 4]
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: auformer\n") and "AU1, AU2, AU4" in card and "--checkpoint user/tiny-aus" in card


@pytest.mark.parametrize("revision", ["", "@v1", f"@{COMMIT}"])
def test_load_from_hub_cache_equals_the_pushed_model(pushed, hub_cache, revision):
    loaded = load_checkpoint(f"user/tiny-aus{revision}")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images).logits, pushed(images).logits)
    repo = next(iter(scan_cache_dir(hub_cache).repos))  # huggingface_hub itself reads the layout
    assert repo.repo_id == "user/tiny-aus" and {f.file_name for f in next(iter(repo.revisions)).files} >= {"adapter.json"}


def test_local_checkpoint_wins_over_a_repo_of_the_same_name(tmp_path, hub_cache, tiny_model_kwargs, monkeypatch):
    save_checkpoint(build_model(3, aus=[1, 2, 4], **tiny_model_kwargs), tmp_path / "user" / "name")
    monkeypatch.chdir(tmp_path)  # "user/name" is now a path; the empty offline cache would fail a Hub lookup
    assert load_checkpoint("user/name").aus == [1, 2, 4]


def no_hub(*args):
    raise AssertionError(f"asked the Hub for {args}")


def test_run_folder_is_its_best_checkpoint_without_asking_the_hub(tmp_path, tiny_model_kwargs, monkeypatch):
    monkeypatch.setattr("auformer.model.checkpoint.download_checkpoint", no_hub)
    monkeypatch.chdir(tmp_path)
    save_checkpoint(build_model(3, aus=[1, 2, 4], **tiny_model_kwargs), tmp_path / "runs" / "tiny" / "last")
    assert load_checkpoint("runs/tiny").aus == [1, 2, 4]  # no best yet: the last one
    save_checkpoint(build_model(2, aus=[1, 2], **tiny_model_kwargs), tmp_path / "runs" / "tiny" / "best")
    assert load_checkpoint("runs/tiny").aus == [1, 2]


@pytest.mark.parametrize(
    "checkpoint, message",
    [
        ("runs/empty", "error: checkpoint runs/empty: a folder with no checkpoint in it (expected best.safetensors"),
        ("runs/typo", "error: checkpoint runs/typo: no such file (typo.safetensors or typo.json) in runs"),
    ],
)
def test_local_looking_non_checkpoint_is_one_line_without_the_hub(tmp_path, monkeypatch, capsys, checkpoint, message):
    monkeypatch.setattr("auformer.model.checkpoint.download_checkpoint", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "empty").mkdir(parents=True)
    assert main(["export", checkpoint, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


@pytest.mark.parametrize(
    "checkpoint, message",
    [
        ("user/missing", "error: checkpoint user/missing: no such local file, and the Hugging Face Hub cannot be reached"),
        (
            "user/tiny-aus@v2",
            "error: checkpoint user/tiny-aus@v2: no such local file, and the Hugging Face Hub cannot be reached",
        ),
    ],
)
def test_unreachable_repo_is_one_line(pushed, tmp_path, capsys, checkpoint, message):
    Image.new("RGB", (32, 32)).save(tmp_path / "face.png")
    assert main(["detect", str(tmp_path / "face.png"), "--checkpoint", checkpoint, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["CKPT", "not a repo"], "error: REPO_ID must look like user/name"),
        (["CKPT", "user/name@v1"], "error: REPO_ID must look like user/name"),
        (["missing", "user/name"], "error: checkpoint weights not found: missing.safetensors"),
        (["CKPT", "user/name"], "error: push to Hugging Face Hub repo user/name failed: Cannot reach https://huggingface.co"),
    ],
)
def test_push_argument_errors_and_offline_failure(tmp_path, hub_cache, tiny_model_kwargs, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    save_checkpoint(build_model(3, aus=[1, 2, 4], **tiny_model_kwargs), tmp_path / "CKPT")
    assert main(["push", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_push_refuses_a_hub_id_as_source(hub_cache):
    with pytest.raises(FileNotFoundError, match="push takes a local checkpoint"):
        push_checkpoint("user/other", "user/name")
