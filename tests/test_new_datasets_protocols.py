"""CK+ and Aff-Wild2 through the commands: `prepare ckplus|affwild2` flags, `cv --dry-run` on each fake
prepared tree, cross-domain on the AUs source and target share, data efficiency on CK+."""

from __future__ import annotations

import json

import pytest
import torch

from auformer.cli import main
from auformer.config import load_config
from auformer.data import read_folds, read_manifest
from auformer.data.converters.affwild2 import prepare_affwild2
from auformer.data.converters.bp4d import prepare_bp4d
from auformer.data.converters.ckplus import prepare_ckplus
from auformer.engine import protocols
from auformer.engine.build import shared_aus
from auformer.errors import AUFormerError
from fake_ckplus_affwild2 import make_fake_affwild2, make_fake_ckplus
from fake_raw import make_fake_bp4d
from test_protocols import _tiny_overrides

BP4D_TO_AFFWILD2 = ["AU01", "AU02", "AU04", "AU06", "AU07", "AU10", "AU12", "AU15", "AU23", "AU24"]
OFFLINE = ["--set", "model.backbone_weights=random"]  # --dry-run must not look for the hub's ViT-B


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict:
    """Fake CK+, Aff-Wild2 and BP4D releases prepared (32-pixel crops, no alignment)."""
    root = tmp_path_factory.mktemp("trees")
    prepare_ckplus(make_fake_ckplus(root / "ckraw"), root / "ck", 2, True, 2, 2, align="none", size=32, workers=1)
    prepare_affwild2(make_fake_affwild2(root / "awraw"), root / "aw", size=32, workers=1)
    make_fake_bp4d(root / "bp4draw", frames=2)
    prepare_bp4d(root / "bp4draw", root / "bp4d", align="none", size=32, workers=1)
    return {name: root / name for name in ("ck", "aw", "bp4d")}


def test_prepare_commands_pass_their_flags_to_the_converters(tmp_path):
    ck_raw, aw_raw = make_fake_ckplus(tmp_path / "ckraw"), make_fake_affwild2(tmp_path / "awraw")
    common = ["--size", "32", "--workers", "1"]
    assert main(["prepare", "ckplus", str(ck_raw), str(tmp_path / "ck"), "--align", "none", *common,
                 "--min-positives", "2", "--folds", "2", "--peak-frames", "2", "--neutral-first"]) == 0  # fmt: skip
    table = read_manifest(tmp_path / "ck")
    assert len(table) == 12 and table.aus == [1, 2, 12, 25]  # 4 sequences x (neutral + 2 peak frames)
    assert len(read_folds(tmp_path / "ck")[0]) == 2
    # affwild2's --align defaults to none (the crops are aligned already): no face detector is needed
    assert main(["prepare", "affwild2", str(aw_raw), str(tmp_path / "aw"), *common, "--folds", "2", "--drop-unannotated"]) == 0
    report = json.loads((tmp_path / "aw" / "prepare_report.json").read_text())
    assert (report["align"], report["unannotated_dropped"], report["written"]) == ("none", True, 7)
    assert len(read_folds(tmp_path / "aw")[0]) == 3  # the official split, then Train_Set in 2 parts
    assert main(["prepare", "ckplus", str(ck_raw), str(tmp_path / "ck40"), "--align", "none", *common]) == 2  # min 40


@pytest.mark.parametrize(
    ("preset", "tree", "extra", "runs"),
    [("ckplus", "ck", [], ["fold0", "fold1"]), ("affwild2", "aw", ["--set", "data.aus=[1,2]"], ["fold0"])],
)
def test_cv_dry_run_on_each_fake_prepared_tree(trees, tmp_path, capsys, preset, tree, extra, runs):
    command = ["cv", "--preset", preset, "--data", str(trees[tree]), "--out", str(tmp_path / "cv"), "--dry-run"]
    assert main([*command, *OFFLINE, *extra]) == 0
    out = capsys.readouterr().out
    assert "dry run passed" in out
    assert [line.split(":")[0].strip() for line in out.split("plan:\n")[1].splitlines()[:-1]] == runs
    assert not (tmp_path / "cv").exists()


def test_cross_domain_scores_the_aus_both_datasets_annotate(trees):
    bp4d, affwild2, ckplus = (read_manifest(trees[name]) for name in ("bp4d", "aw", "ck"))
    assert shared_aus(bp4d, affwild2) == [1, 2, 4, 6, 7, 10, 12, 15, 23, 24]
    assert shared_aus(affwild2, bp4d) == [1, 2, 4, 6, 7, 10, 12, 15, 23, 24]
    assert shared_aus(affwild2, ckplus) == [1, 2, 12, 25]
    with pytest.raises(AUFormerError, match="none in common"):
        shared_aus(bp4d.select_aus([14, 17]), affwild2)


@pytest.mark.slow
def test_cross_domain_bp4d_to_affwild2_names_and_scores_the_shared_aus(trees, tmp_path, capsys):
    torch.set_num_threads(1)
    config = load_config(
        "bp4d", _tiny_overrides(f"data.target_root={trees['aw']}", "data.cv_folds=[2]"), data_dir=str(trees["bp4d"])
    )
    mean = protocols.cross_validate(config, tmp_path / "cd")
    assert list(mean["per_au"]) == BP4D_TO_AFFWILD2
    assert f"scoring the AUs of both source and target: {', '.join(BP4D_TO_AFFWILD2)}" in capsys.readouterr().out
    assert len((tmp_path / "cd" / "fold2" / "predictions.csv").read_text().splitlines()) == 1 + 9  # all of Aff-Wild2


@pytest.mark.slow
def test_data_efficiency_on_ckplus(trees, tmp_path):
    torch.set_num_threads(1)
    overrides = _tiny_overrides("train.steps=null", "train.warmup_steps=null", "data.data_efficiency_rates=[0.5]")
    runs = protocols.data_efficiency(load_config("ckplus", overrides, data_dir=str(trees["ck"])), tmp_path / "de")
    assert list(runs) == ["rate50%"] and list(runs["rate50%"]["per_au"]) == ["AU01", "AU02", "AU12", "AU25"]
    for fold in (0, 1):
        extra = json.loads((tmp_path / "de" / "rate50%" / f"fold{fold}" / "best.json").read_text())["extra"]
        assert extra["train_samples"] == 3  # half of the 6 training frames
