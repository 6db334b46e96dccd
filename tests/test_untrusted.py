"""Untrusted files: a checkpoint built to run code when unpickled is refused on every loading path, YAML is safe-loaded."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import auformer
from auformer.cli import main
from auformer.config import load_config, save_config
from test_killed import TINY_MODEL
from test_train import write_tiny_preset


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _poisoned(path: Path, marker: Path) -> Path:
    torch.save({"model": _Payload(marker), "weight": torch.zeros(2)}, path)
    return path


def test_the_payload_is_real(tmp_path):
    marker = tmp_path / "pwned"
    torch.load(_poisoned(tmp_path / "evil.pt", marker), weights_only=False)  # what an unsafe loader would do
    assert marker.exists()


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "ckpt" / "tiny"
    auformer.save_checkpoint(auformer.build_model(3, **TINY_MODEL), path)
    return path


def _refused(argv: list[str], marker: Path, capsys, *expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and all(text in err for text in expected), err
    assert not marker.exists(), "the payload ran"


def test_poisoned_adapter_checkpoint_refused_by_evaluate_detect_export(tmp_path, checkpoint, capsys):
    marker = tmp_path / "pwned"
    _poisoned(checkpoint.with_suffix(".safetensors"), marker)  # tiny.json stays valid
    Image.new("RGB", (32, 32)).save(tmp_path / "face.png")
    preset = write_tiny_preset(tmp_path / "tiny.yaml")
    expected = ("tiny.safetensors: not a safetensors file",)
    _refused(["evaluate", str(checkpoint), "--preset", preset, "--out", str(tmp_path / "eval")], marker, capsys, *expected)
    _refused(["detect", str(tmp_path), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "det"),
              "--face-detector", "none"], marker, capsys, *expected)  # fmt: skip
    _refused(["export", str(checkpoint), "--out", str(tmp_path / "exp")], marker, capsys, *expected)
    checkpoint.with_suffix(".json").unlink()  # the weights file alone: its header is read first
    _refused(["export", str(checkpoint), "--out", str(tmp_path / "exp")], marker, capsys, *expected)


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".pt"])
def test_poisoned_backbone_weights_refused(tmp_path, checkpoint, capsys, suffix):
    marker = tmp_path / "pwned"
    evil = _poisoned(tmp_path / f"vit{suffix}", marker)
    _refused(["export", str(checkpoint), "--out", str(tmp_path / "exp"), "--backbone-weights", str(evil)],
             marker, capsys, f"vit{suffix}: cannot read backbone weights", "blocked loading", "posix.system")  # fmt: skip
    _refused(["train", "--preset", write_tiny_preset(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run"),
              "--set", f"model.backbone_weights={evil}"], marker, capsys, f"vit{suffix}: cannot read backbone weights")  # fmt: skip


def test_poisoned_train_state_refused_by_resume(tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    save_config(load_config(write_tiny_preset(tmp_path / "tiny.yaml")), run / "config.yaml")
    _poisoned(run / "train_state.pt", marker)
    _refused(["train", "--resume", str(run)], marker, capsys, "train_state.pt: refused or unreadable training state")
    with open(run / "train_state.pt", "wb") as file:  # an old-style plain pickle, not a torch zip
        pickle.dump({"model": _Payload(marker)}, file)
    _refused(["train", "--resume", str(run)], marker, capsys, "train_state.pt: refused or unreadable training state")


def test_yaml_cannot_build_objects(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(evil.read_text())
    _refused(["train", "--preset", str(evil), "--out", str(tmp_path / "run")], marker, capsys,
             "evil.yaml: not valid YAML for auformer", "python/object/apply:os.system")  # fmt: skip
    _refused(["train", "--set", f"train.lr=!!python/object/apply:os.system ['touch {marker}']"], marker, capsys,
             "--set", "not valid YAML")  # fmt: skip
