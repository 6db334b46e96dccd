"""The ablation grid: every row a valid config, the paper's layout, and resume after a kill mid-grid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from auformer.config import apply_values, load_config, save_config, validate
from auformer.engine import protocols
from auformer.engine.ablation import TABLES, ablation_frame, ablation_markdown, row_folder
from auformer.model.petl import METHODS
from test_train import TINY


@pytest.mark.parametrize("table", list(TABLES))
def test_every_row_is_a_valid_config(table):
    base = load_config("synthetic")
    for row in TABLES[table]:
        config = validate(apply_values(row.overrides, base))
        assert config.model.method in METHODS


def test_table5a_rows_use_the_cited_settings_and_table4_keeps_auformers_width():
    base = load_config("synthetic")
    rows = {row.label: validate(apply_values(row.overrides, base)).model for row in TABLES["5a"]}
    assert {label: model.method for label, model in rows.items()} == {
        "Adapter": "adapter",  # Houlsby's, as the paper cites
        "LoRA": "lora",
        "VPT": "vpt",
        "Convpass": "convpass",
        "AdaptFormer": "adaptformer",  # not in the paper's table
    }
    assert rows["LoRA"].lora_targets == ["q", "k"]  # the AUFormer paper's text: queries and keys
    assert (rows["Convpass"].d, rows["Convpass"].scale, rows["Convpass"].dropout) == (8, 1.0, 0.1)  # Convpass's code
    adaptformer = rows["AdaptFormer"]
    assert (adaptformer.adapter_bottleneck, adaptformer.adapter_scale, adaptformer.dropout) == (64, 0.1, 0.1)
    assert base.model.dropout == 0.0  # the synthetic preset's, which the published forms above override
    petl_row = validate(apply_values(TABLES["4"][2].overrides, base)).model
    assert (petl_row.method, petl_row.d) == ("convpass", 4)  # Table 4's step from row 3 to row 4 changes one thing


def test_table4_layout_has_ticks_and_both_averages():
    rows = TABLES["4"][:3]
    results = [{"mean_f1": f1, "per_au": {"AU12": {"f1": f1}}} for f1 in (0.5, 0.61234, 0.7)]
    frame = ablation_frame("4", rows, results)
    assert list(frame.columns) == ["row", "Baseline", "PETL", "Collab.", "MRF", "CA", "γ", "m", "ours_f1", "paper_f1", "AU12"]
    lines = ablation_markdown("4", frame).splitlines()
    assert lines[0] == "| row | Baseline | PETL | Collab. | MRF | CA | γ | m | Avg. (ours) | Avg. (paper, BP4D) |"
    assert lines[3] == "| full fine-tuning, MDWA | ✓ |  |  |  |  | ✓ | ✓ | 61.2 | 63.4 |"
    assert lines[4] == "| PETL (Convpass), WA | ✓ | ✓ |  |  |  |  |  | 70.0 | 63.6 |"
    assert row_folder(3, rows[2]) == "03-petl-convpass-wa"


def test_a_folder_holding_another_configs_run_is_refused(tmp_path):
    save_config(load_config("synthetic", ["train.lr=0.1"]), tmp_path / "config.yaml")
    with pytest.raises(ValueError, match="holds a run of another config"):
        protocols.train_once(load_config("synthetic"), tmp_path)


@pytest.mark.slow
def test_grid_killed_mid_row_resumes_and_trains_every_row_once(tmp_path):
    """Kill `auformer ablation` while row 2 trains, rerun: row 1 is reused untouched, every row has each epoch once."""
    sets = [
        f"{section}.{key}={json.dumps(value)}" for section in ("data", "model", "train") for key, value in TINY[section].items()
    ]
    sets += [
        "model.backbone_weights=random",
        "data.synthetic_images=60",
        "data.synthetic_subjects=6",
        "data.cv_folds=[0]",
        "train.checkpoint_every=1",
        "train.epochs=2",
    ]
    command = [sys.executable, "-m", "auformer", "ablation", "--preset", "synthetic", "--table", "5c", "--out", str(tmp_path)]
    command += [arg for item in sets for arg in ("--set", item)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = [tmp_path / row_folder(index, row) / "fold0" for index, row in enumerate(TABLES["5c"], start=1)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 300
        while not (rows[1] / "config.yaml").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "the grid finished before it could be killed"
    finally:
        process.kill()
        process.wait()
    assert (rows[0] / "metrics.json").is_file() and not (rows[1] / "metrics.json").exists()
    first_row_mtime = (rows[0] / "metrics.json").stat().st_mtime_ns

    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{rows[0]}: finished before, reusing its metrics.json" in rerun.stdout
    assert (rows[0] / "metrics.json").stat().st_mtime_ns == first_row_mtime
    for row in rows:
        epochs = [json.loads(line)["epoch"] for line in (row / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2], row
    table = pd.read_csv(tmp_path / "table5c.csv")
    assert list(table["row"]) == ["3×3", "5×5", "7×7"] and list(table["paper_f1"]) == [66.2, 65.9, 66.0]
    assert "| S×S | Avg. (ours) | Avg. (paper, BP4D) |" in (tmp_path / "table5c.md").read_text()
