"""The training recipe on a tiny ViT and tiny synthetic data: outputs, loss choice, re-scoring, evaluate, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from auformer.cli import main
from auformer.config import load_config
from auformer.data import AUTable
from auformer.engine import build, outputs, protocols, trainer
from auformer.losses import auformer_loss, wa_loss
from auformer.metrics import au_metrics

# A run in seconds: 2-block width-32 ViT at 32 px, 240 synthetic faces of 12 subjects, no augmentation.
TINY = {
    "data": {
        "img_size": 32, "resize_size": 32, "color_jitter": 0.0, "hflip": False, "num_workers": 0,
        "synthetic_images": 240, "synthetic_size": 64, "synthetic_subjects": 12,
    },
    "model": {
        "backbone": "vit_tiny_patch16_224", "backbone_weights": "random", "dropout": 0.0,
        "backbone_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
    },
    "train": {"epochs": 2, "batch_size": 16, "lr": 3.0e-3, "warmup_epochs": 0.0, "checkpoint_every": 3},
}  # fmt: skip


def write_tiny_preset(path: Path, **updates: dict) -> str:
    """The tiny preset as a YAML file (what subprocess tests pass to --preset), with section updates."""
    values = {section: {**TINY.get(section, {}), **updates.get(section, {})} for section in {*TINY, *updates}}
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, dict]:
    """One tiny training run with a validation fold (best-checkpoint selection on)."""
    run_dir = tmp_path_factory.mktemp("run")
    config = load_config(write_tiny_preset(run_dir.parent / "tiny.yaml", data={"fold": 0, "val_fold": 1}))
    torch.set_num_threads(1)
    return run_dir, protocols.train(config, run_dir, verbose=False)


def test_run_folder_holds_every_output(tiny_run):
    run_dir, _ = tiny_run
    for name in ("config.yaml", "last.safetensors", "last.json", "best.safetensors", "best.json", "train_state.pt",
                 "metrics.json", "per_au.csv", "per_au.md", "predictions.csv", "metrics.csv", "metrics.jsonl", "curves.png"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((run_dir / "best.json").read_text())["extra"]["dataset"] == "synthetic"


def test_metrics_json_has_the_documented_schema(tiny_run):
    run_dir, returned = tiny_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == returned
    assert set(metrics) == {"mean_f1", "per_au", "backbone_weights"}
    assert metrics["backbone_weights"] == "random"  # what the scores stand on, recorded
    assert json.loads((run_dir / "best.json").read_text())["backbone"]["weights"] == "random"
    assert len(metrics["per_au"]) == 12
    for scores in metrics["per_au"].values():
        assert set(scores) == {"f1", "precision", "recall", "support"}
        assert 0 <= scores["f1"] <= 1 and isinstance(scores["support"], int)
    assert metrics["mean_f1"] == pytest.approx(np.mean([s["f1"] for s in metrics["per_au"].values()]))


def test_predictions_csv_rescores_to_metrics_json(tiny_run):
    run_dir, metrics = tiny_run
    frame = pd.read_csv(run_dir / "predictions.csv")
    aus = list(metrics["per_au"])
    labels = frame[[f"{au}_label" for au in aus]].to_numpy()
    rescored = au_metrics(frame[[f"{au}_prob" for au in aus]].to_numpy(), labels, [int(a[2:]) for a in aus])
    assert not set(aus) & set(frame.columns)  # no bare AU01: a label here, a probability in a detect CSV
    assert rescored["mean_f1"] == pytest.approx(metrics["mean_f1"], abs=1e-6)
    assert frame["subject"].nunique() == 4  # fold 0 of 12 subjects dealt into 3 folds


def test_history_uses_the_validation_split_and_the_loss_goes_down(tiny_run):
    run_dir, _ = tiny_run
    history = pd.read_csv(run_dir / "metrics.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert (history["eval_split"] == "val").all()
    assert history["train_loss"].iloc[1] < history["train_loss"].iloc[0]
    assert (history["images_per_s"] > 0).all()


def test_evaluate_reproduces_the_run_from_the_best_checkpoint(tiny_run, tmp_path, capsys):
    run_dir, metrics = tiny_run
    config = load_config(str(run_dir / "config.yaml"))
    again = protocols.evaluate(run_dir / "best", config, tmp_path, verbose=True)
    test_size = len(pd.read_csv(run_dir / "predictions.csv"))
    assert f"scoring {run_dir / 'best'} on synthetic faces, test fold 0: {test_size} images, cpu" in capsys.readouterr().out
    assert again["mean_f1"] == pytest.approx(metrics["mean_f1"], abs=1e-6)
    a = pd.read_csv(run_dir / "predictions.csv").filter(like="_prob").to_numpy()
    b = pd.read_csv(tmp_path / "predictions.csv").filter(like="_prob").to_numpy()
    np.testing.assert_allclose(a, b, atol=1e-5)


def _easy_source(config, root=None) -> build.Source:
    """Two AUs drawn as strong pixel cues (AU01: bright left half, AU02: red lower half), 12 subjects."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (240, 2)).astype(np.float32)  # (M, 2)
    images = rng.integers(0, 60, (240, 32, 32, 3)).astype(np.uint8)  # (M, H, W, 3)
    images[labels[:, 0] == 1, :, :16] += 150
    images[labels[:, 1] == 1, 16:, :, 0] += 150
    subjects = [f"S{i % 12:02d}" for i in range(240)]
    table = AUTable(Path("."), [f"synthetic/{i:05d}.png" for i in range(240)], subjects, labels, [1, 2])
    return build.Source(table, [[f"S{j:02d}" for j in range(k, 12, 3)] for k in range(3)], images)


def test_adapters_on_a_frozen_random_vit_learn_an_easy_task_far_above_chance(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trainer, "load_source", _easy_source)
    torch.set_num_threads(1)
    config = load_config(write_tiny_preset(tmp_path / "tiny.yaml", train={"epochs": 3, "head_lr": 6e-3}))
    recipe = trainer.Trainer(config, tmp_path / "run", verbose=True)
    recipe.setup()
    heads = {id(p) for p in [*recipe.model.head.parameters(), *recipe.model.aux_head.parameters()]}
    groups = [({id(p) for p in group["params"]}, group["initial_lr"]) for group in recipe.optimizer.param_groups]
    assert groups == [(groups[0][0], 3e-3), (heads, 6e-3)]  # experts at train.lr, heads at train.head_lr
    metrics = recipe.train()
    printed = capsys.readouterr().out
    assert "training on cpu: generated synthetic faces, test fold 0, 160 training / 80 test images" in printed
    labels = pd.read_csv(tmp_path / "run" / "predictions.csv")[["AU01_label", "AU02_label"]].to_numpy()
    chance = au_metrics(np.ones_like(labels, dtype=float), labels, [1, 2])["mean_f1"]  # always "present": ~0.67
    assert metrics["mean_f1"] > max(0.8, chance + 0.1)


def test_default_loss_is_the_paper_objective_and_the_choice_is_a_switch():
    torch.manual_seed(0)
    logits, aux = torch.randn(8, 5), torch.randn(8, 5)
    targets = torch.randint(0, 2, (8, 5)).float()
    targets[0, 0] = -1.0  # unknown label, masked
    rate = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    output = SimpleNamespace(logits=logits, aux_logits=aux, intensity=None)  # the fields the loss reads
    config = load_config("synthetic", ["loss.margin=0.15"])
    expected = auformer_loss(logits, aux, targets, rate, margin=0.15)["total"]
    torch.testing.assert_close(build.build_loss(config)(output, targets, rate)["total"], expected)
    wa_only = load_config("synthetic", ["loss.name=wa", "loss.wdi=false", "loss.aux_weight=0"])
    torch.testing.assert_close(build.build_loss(wa_only)(output, targets, rate)["total"], wa_loss(logits, targets, rate))


def test_fold_mean_and_table_by_hand():
    def run(f1_a: float, f1_b: float, support: int) -> dict:
        per_au = {"AU01": {"f1": f1_a, "precision": 0.5, "recall": 1.0, "support": support},
                  "AU02": {"f1": f1_b, "precision": 0.0, "recall": 0.0, "support": support}}  # fmt: skip
        return {"mean_f1": (f1_a + f1_b) / 2, "per_au": per_au, "backbone_weights": "random"}

    mean = outputs.mean_metrics([run(0.6, 0.2, 3), run(0.8, 0.0, 5)])
    assert mean["mean_f1"] == pytest.approx(0.4)
    assert mean["per_au"]["AU01"] == {"f1": pytest.approx(0.7), "precision": 0.5, "recall": 1.0, "support": 8}
    table = outputs.cv_table_markdown({"fold0": run(0.6, 0.2, 3), "mean": mean})
    assert "| AU01 | 60.0 | 70.0 |" in table and "| **Avg** | **40.0** | **40.0** |" in table


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    assert main(["train", "--set", "train.lrr=1", "--out", str(tmp_path)]) == 2
    assert "did you mean 'train.lr'" in capsys.readouterr().err
    assert main(["train", "--preset", "bp4d", "--out", str(tmp_path)]) == 2
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "config.yaml does not exist" in capsys.readouterr().err


def test_default_preset_is_said_and_refused_for_a_folder_of_real_faces(tmp_path, capsys):
    from auformer.cli.flags import implied_preset

    real = tmp_path / "my_faces"
    real.mkdir()
    assert main(["train", "--data", str(real), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --data {real} holds no synthetic.json") and "--preset bp4d" in err
    assert not (tmp_path / "run").exists()
    (real / "synthetic.json").write_text("{}")  # what `auformer synth` writes: the toy preset fits
    assert implied_preset("synthetic", str(real)) == "synthetic"
    assert implied_preset("bp4d-to-disfa", str(tmp_path)) == "bp4d-to-disfa"  # only the synthetic preset is refused
    assert capsys.readouterr().out.count("preset: ") == 2
