"""The paper's ablation grids (Tables 4 and 5) as data, run with the cross-validation protocol.

A table is a list of rows; a row is a label, the config overrides that make it (on
top of the preset and ``--set``) and the paper's mean F1 on BP4D. ``run_ablation``
cross-validates every row into ``OUT/<row>/`` and writes ``OUT/table<id>.md`` and
``.csv`` with our mean F1 beside the paper's. Rows and folds resume through
`protocols.train_once`: rerun into the same ``OUT`` and finished folds are read back,
a killed fold continues, so every row is trained once.

Table 4 of the paper lost its check marks in text extraction; the rows below are
rebuilt from the paper's discussion of them (which row adds what), see docs/ablations.md.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pandas as pd

from auformer.config import Config, apply_values, validate
from auformer.engine import distributed, protocols
from auformer.errors import AUFormerError
from auformer.files import atomic_write_text
from auformer.model.petl import COMPARISON_SETTINGS

TABLE4_COLUMNS = ("Baseline", "PETL", "Collab.", "MRF", "CA", "γ", "m")  # the check-mark columns of Table 4


@dataclasses.dataclass(frozen=True)
class Row:
    label: str  # the row as the paper names it
    overrides: dict[str, dict[str, Any]]  # {section: {key: value}} applied to the base config
    paper_f1: float | None  # mean F1 (%) the paper reports on BP4D; None where it has no such row
    marks: tuple[str, ...] = ()  # Table 4 only: the TABLE4_COLUMNS ticked for this row


def _model(method: str = "auformer", loss: str = "wa", **model: Any) -> dict[str, dict[str, Any]]:
    overrides = {"model": {"method": method, **model}, "loss": {"name": loss}}
    if method == "full-finetune":  # a whole pre-trained ViT at the adapters' lr would be wrecked: ME-GraphAU's 1e-4,
        overrides["train"] = {"lr": 1e-4, "head_lr": 1e-3}  # the fresh linear head 10x (our choice, docs/ablations.md)
    return overrides


def _compared(method: str) -> dict[str, dict[str, Any]]:
    """A Table 5a row: ``method`` with the settings of the work the paper cites (Convpass d=8, LoRA on q and k)."""
    return _model(method, **COMPARISON_SETTINGS.get(method, {}))


def _no_collaboration(overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The paper's no-collaboration rows: one shared expert per group, hence no per-AU aux heads or aux loss."""
    return {
        **overrides,
        "model": {**overrides["model"], "collaborate": False, "aux_head": False},
        "loss": {**overrides["loss"], "aux_weight": 0.0},
    }


NO_MOKE = {"use_mrf": False, "use_ca": False}  # one Convpass-like expert per AU: collaboration without MRF/CA
BASE, PETL, COLLAB = ("Baseline",), ("Baseline", "PETL"), ("Baseline", "PETL", "Collab.")

# Baseline = full fine-tuning with WA + WDI; "PETL" = Convpass; every row keeps the WDI term.
TABLES: dict[str, list[Row]] = {
    "4": [
        Row("full fine-tuning, WA", _model("full-finetune"), 61.9, BASE),
        Row("full fine-tuning, MDWA", _model("full-finetune", "mdwa"), 63.4, BASE + ("γ", "m")),
        Row("PETL (Convpass), WA", _model("convpass"), 63.6, PETL),
        Row("+ Collab.", _model(**NO_MOKE), 64.3, COLLAB),
        Row("+ Collab. + MDWA", _model(loss="mdwa", **NO_MOKE), 65.2, COLLAB + ("γ", "m")),
        Row("MRF + CA, no Collab.", _no_collaboration(_model()), 64.5, PETL + ("MRF", "CA")),
        Row("+ Collab. + MRF", _model(use_ca=False), 64.8, COLLAB + ("MRF",)),
        Row("+ Collab. + CA", _model(use_mrf=False), 64.7, COLLAB + ("CA",)),
        Row("+ Collab. + MRF + CA", _model(), 65.1, COLLAB + ("MRF", "CA")),
        Row("+ γ (DWA)", _model(loss="dwa"), 65.6, COLLAB + ("MRF", "CA", "γ")),
        Row("+ m only (MWA)", _model(loss="mwa"), None, COLLAB + ("MRF", "CA", "m")),
        Row("+ γ + m (MDWA): AUFormer", _model(loss="mdwa"), 66.2, COLLAB + ("MRF", "CA", "γ", "m")),
    ],
    "5a": [  # type of adaptation module as the paper cites it (COMPARISON_SETTINGS), PETL setting of Table 4 (WA + WDI)
        Row("Adapter", _compared("adapter"), 63.1),
        Row("LoRA", _compared("lora"), 63.0),
        Row("VPT", _compared("vpt"), 62.6),
        Row("Convpass", _compared("convpass"), 63.6),
        Row("AdaptFormer", _compared("adaptformer"), None),
    ],
    "5b": [  # dilation rates of MRF, full model
        Row(f"{rates}".strip("[]"), {"model": {"dilations": rates}}, f1)
        for rates, f1 in (([1, 3, 5], 66.2), ([1, 3], 65.9), ([1], 65.6), ([1, 2, 3], 65.9))
    ],
    "5c": [  # CA neighbourhood S x S
        Row(f"{size}×{size}", {"model": {"ca_size": size}}, f1) for size, f1 in ((3, 66.2), (5, 65.9), (7, 66.0))
    ],
    "5d": [  # MDWA truncation margin m
        Row(f"{margin}", {"loss": {"margin": margin}}, f1)
        for margin, f1 in ((0.01, 65.6), (0.05, 65.9), (0.1, 66.2), (0.2, 65.4))
    ],
}
FIRST_COLUMN = {"5a": "Type", "5b": "Dilated rates", "5c": "S×S", "5d": "m"}


def row_folder(index: int, row: Row) -> str:
    """``03-petl-convpass-wa``: the row's folder under OUT (index keeps the paper's order)."""
    slug = re.sub(r"[^a-z0-9]+", "-", row.label.lower().replace("γ", "gamma").replace("×", "x")).strip("-")
    return f"{index:02d}-{slug}"


def run_ablation(config: Config, table: str, out_dir: str | Path, verbose: bool = True) -> pd.DataFrame:
    """Cross-validate every row of ``TABLES[table]`` on ``config``; write ``table<id>.md``/``.csv``; return the frame."""
    if table not in TABLES:
        raise AUFormerError(f"unknown table {table!r}; choose from {', '.join(TABLES)}")
    out_dir = Path(out_dir)
    rows = TABLES[table]
    results = []
    for index, row in enumerate(rows, start=1):
        if verbose:
            print(f"=== table {table}, row {index}/{len(rows)}: {row.label} ===", flush=True)
        row_config = validate(apply_values(row.overrides, config))
        mean = protocols.cross_validate(row_config, out_dir / row_folder(index, row), verbose=verbose)
        results.append(mean)
    frame = ablation_frame(table, rows, results)
    if distributed.setup(config.train.device).is_main:
        atomic_write_text(out_dir / f"table{table}.csv", frame.to_csv(index=False))
        atomic_write_text(out_dir / f"table{table}.md", ablation_markdown(table, frame) + "\n")
        if verbose:
            print(f"{ablation_markdown(table, frame)}\n\noutputs written to {out_dir}", flush=True)
    return frame


def ablation_frame(table: str, rows: list[Row], results: list[dict[str, Any]]) -> pd.DataFrame:
    """One line per row: label, (Table 4) check marks, our mean F1 (%), the paper's, and per-AU F1 (%)."""
    lines = []
    for row, mean in zip(rows, results):
        line: dict[str, Any] = {"row": row.label}
        if table == "4":
            line.update({column: column in row.marks for column in TABLE4_COLUMNS})
        line["ours_f1"] = round(100 * mean["mean_f1"], 2)
        line["paper_f1"] = row.paper_f1
        line.update({au: round(100 * values["f1"], 2) for au, values in mean["per_au"].items()})
        lines.append(line)
    return pd.DataFrame(lines)


def ablation_markdown(table: str, frame: pd.DataFrame) -> str:
    """The paper's layout (check marks for Table 4, the setting for Table 5) with our Avg. beside the paper's."""
    paper = ["-" if pd.isna(value) else f"{value:.1f}" for value in frame["paper_f1"]]
    ours = [f"{value:.1f}" for value in frame["ours_f1"]]
    if table == "4":
        head = ["row", *TABLE4_COLUMNS]
        cells = [
            [label, *("✓" if tick else "" for tick in ticks)]
            for label, *ticks in frame[["row", *TABLE4_COLUMNS]].itertuples(index=False)
        ]
    else:
        head, cells = [FIRST_COLUMN[table]], [[label] for label in frame["row"]]
    head += ["Avg. (ours)", "Avg. (paper, BP4D)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([*cell, mine, theirs]) + " |" for cell, mine, theirs in zip(cells, ours, paper)]
    return "\n".join(lines)
