"""Fuzzing what users hand the CLI as descriptions: config values and checkpoint JSON (hypothesis).

Every example runs a real command in-process through `hostile.run_hostile`: it must succeed or
refuse with exit 2 and one ``error:`` line, and change nothing outside its output folder.
Generated: ``--set`` values over every config field (wrong types, out-of-range, huge, NaN/inf,
empty, nested, YAML tricks) for ``train --dry-run``, the same against the real command's
set-up, mutated checkpoint JSON for ``evaluate`` / ``detect`` / ``export``, and ``info``'s
model flags. `COUNTS` records how many examples each property ran (printed at the end of the module).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from auformer.config import FIELD_RULES, Config, field_spec
from auformer.engine import trainer
from hostile import run_hostile
from media import tiny_checkpoint
from test_killed import TINY_MODEL
from test_train import write_tiny_preset

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
FUZZ_PAIRS = settings(FUZZ, max_examples=30)  # two commands per example
COUNTS: Counter = Counter()  # examples run per property, and how they ended

FIELDS = sorted(name for name in FIELD_RULES if "." in name)  # every section field ("preset" is not a --set key)
HOSTILE_YAML = st.sampled_from(  # value texts as typed after --set KEY=
    ["", " ", "null", "~", "nan", ".nan", ".inf", "-.inf", "1e400", "-1", "0", "1", "2", "3", "7", "2147483648",
     "9223372036854775808", "1" + "0" * 400, "-0.5", "0.5", "1.5", "1e-12", "true", "false", "yes", "[]", "{}",
     "[1, 1]", "[1, 2]", "[0.5, 0.5]", "[-1, 2]", "[99]", "[AU1]", "[[1]]", "[.nan, 1]", "[1e300, 2]",
     "{embed_dim: 1048576}", "{depth: 100000}", "{num_heads: 3}", "{patch_size: 64}", "{foo: 1}", "{img_size: 64}",
     "{act_layer: foo}", "{embed_dim: 33, num_heads: 2}", "&a [*a]", "&a {x: *a}", "[1", "{a: 1", "!!binary AAAA",
     "!!python/object/apply:os.system ['true']", "abc", "random", "synthetic", "x.pt", "/nonexistent/w.safetensors",
     "../../etc/passwd", "é" * 300, "x" * 5000, "\t", "fused", "reference", "batch", "bf16", "cuda", "auto"]
)  # fmt: skip
HUGE_LISTS = st.sampled_from(["[" + ",".join(["1"] * n) + "]" for n in (57, 101, 1000)])
CHEAP_HIGH = 1000  # a valid bound above this (100,000 synthetic faces, 1024 px) is slow, not wrong: not generated


def edge_texts(name: str) -> list[str]:
    """Values at and just past the edges of a field's rule, so that valid configs reach the deeper checks."""
    rule, default = FIELD_RULES[name], getattr(getattr(Config(), name.split(".")[0]), name.split(".")[1])
    floats = "float" in str(field_spec(name)[0])
    texts = [json.dumps(default)]
    if rule is None:
        return texts + ["true", "false"]
    if rule.choices:
        return texts + [str(choice) for choice in rule.choices]
    for bound, step in ((rule.low, -1), (rule.high, 1)):
        if bound is None:
            continue
        outside = bound + step * (1e-9 if floats else 1)
        inside = bound if not (rule.open_low if step < 0 else rule.open_high) else bound - step * 1e-9
        texts += [repr(outside)] + ([repr(inside)] if abs(inside) <= CHEAP_HIGH else [])
        if rule.length:  # the same values as a list of the right length
            texts += [f"[{', '.join([repr(inside)] * rule.length[0])}]"]
    return texts


EDGES = st.sampled_from(FIELDS).flatmap(lambda name: st.tuples(st.just(name), st.sampled_from(edge_texts(name))))
OVERRIDES = st.lists(
    st.one_of(st.tuples(st.sampled_from(FIELDS), st.one_of(HOSTILE_YAML, HUGE_LISTS)), EDGES), min_size=1, max_size=3
)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Every input of the module's examples; each example writes only into its own output folder below."""
    folder = tmp_path_factory.mktemp("fuzz_cli")
    write_tiny_preset(folder / "tiny.yaml", train={"epochs": 1})
    yield folder
    print(f"\nfuzz examples: {dict(sorted(COUNTS.items()))}")


def _fresh(root: Path, kind: str) -> Path:
    COUNTS[kind] += 1
    return root / f"{kind}{COUNTS[kind]}"


def _set_args(overrides: list[tuple[str, str]]) -> list[str]:
    return [arg for name, text in overrides for arg in ("--set", f"{name}={text}")]


def _ended(kind: str, code: int, text: str) -> str:
    """Count how an example ended; return its error line ('' on success)."""
    COUNTS[f"{kind}: exit {code}"] += 1
    return next((line for line in text.splitlines() if line.startswith("error: ")), "")


@FUZZ
@given(overrides=OVERRIDES)
def test_train_dry_run_on_hostile_config_values(root, overrides):
    out = _fresh(root, "dry")
    code, text = run_hostile(["train", "--preset", root / "tiny.yaml", "--out", out, "--dry-run", *_set_args(overrides)],
                             root, out)  # fmt: skip
    _ended("dry-run", code, text)


def _setup_only(self) -> dict:
    """`Trainer.train` after a completed setup: the real command's checks ran, the epochs are skipped."""
    return {}


@pytest.mark.slow
@FUZZ_PAIRS
@given(overrides=OVERRIDES)
def test_dry_run_and_the_real_command_refuse_the_same_configs(root, overrides, monkeypatch):
    """Whatever --dry-run passes, the real command's set-up passes too, and whatever the set-up refuses
    --dry-run refuses with the same first error (its data-quality warnings, e.g. an AU with no positive,
    are stricter than the run and are left out of the comparison)."""
    monkeypatch.setattr(trainer.Trainer, "train", _setup_only)
    dry_out, real_out = _fresh(root, "cmp-dry"), _fresh(root, "cmp-real")
    argv = ["train", "--preset", root / "tiny.yaml", *_set_args(overrides)]
    dry_code, dry_text = run_hostile([*argv, "--out", dry_out, "--dry-run"], root, dry_out)
    real_code, real_text = run_hostile([*argv, "--out", real_out], root, real_out)
    dry_error, real_error = _ended("compare dry-run", dry_code, dry_text), _ended("compare real", real_code, real_text)
    if dry_code == 0:
        assert real_code == 0, f"--dry-run passed, the run refused: {real_error}"
    elif real_code == 2:
        first = dry_error.split("; first: ", 1)[-1]
        assert real_error.removeprefix("error: ") in first or first.endswith(real_error.split(": ", 2)[-1]), (
            f"different first errors:\n  dry run: {dry_error}\n  real:    {real_error}"
        )
    else:
        assert "no positive of" in dry_error, f"--dry-run refused what the run accepts: {dry_error}"


# ---------------------------------------------------------------- checkpoint JSON


@pytest.fixture(scope="module")
def checkpoint(root) -> tuple[Path, dict]:
    """A tiny checkpoint (weights file + JSON) and a face crop to run it on."""
    path = tiny_checkpoint(root / "ckpt" / "tiny", [1, 2, 4])
    Image.new("RGB", (32, 32), (120, 90, 60)).save(root / "face.png")
    return path, json.loads(path.with_suffix(".json").read_text())


def _paths(meta: dict, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a JSON object (``("config", "backbone_kwargs", "depth")``, ...)."""
    found = []
    for key, value in meta.items():
        found.append((*prefix, key))
        if isinstance(value, dict):
            found += _paths(value, (*prefix, key))
    return found


HOSTILE_JSON = st.sampled_from(
    [None, True, False, 0, -1, 1, 2, 3, 7, 33, 1e6, -1e300, 2**63, 10**30, float("nan"), float("inf"), 0.5, "", "x", "four",
     "random", [], [1], [1, 1], [99], [1, 2, 99], ["AU1"], [1, 2, 6], [1, 2, 4, 6], {}, {"a": 1}, [[1]], "é" * 500,
     list(range(10_000)), {"depth": 100000}, {"embed_dim": 1048576}, {"patch_size": 3}, {"num_heads": 5}]
)  # fmt: skip
DELETE = object()


@st.composite
def mutations(draw, meta: dict) -> list[tuple[tuple, object]]:
    """1-3 (key path, new value or DELETE) edits of a checkpoint JSON."""
    paths = _paths(meta)
    edits = st.tuples(st.sampled_from(paths), st.one_of(st.just(DELETE), HOSTILE_JSON))
    # Fields stored twice, edited alike (an edit of one alone is refused as inconsistent at once).
    twins = HOSTILE_JSON.map(lambda value: [(("aus",), value), (("config", "aus"), value)])
    twins |= HOSTILE_JSON.map(lambda value: [(("backbone", "name"), value), (("config", "backbone"), value)])
    return draw(st.one_of(st.lists(edits, min_size=1, max_size=3), twins))


def _mutated(meta: dict, edits: list[tuple[tuple, object]]) -> dict:
    meta = copy.deepcopy(meta)
    for path, value in edits:
        parent = meta
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue  # an earlier edit replaced the parent
        if value is DELETE:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = copy.deepcopy(value)
    return meta


COMMANDS = ("export", "detect", "evaluate")


@pytest.mark.slow
@FUZZ
@given(st.data(), st.sampled_from(COMMANDS))
def test_commands_on_mutated_checkpoint_json(root, checkpoint, data, command):
    path, meta = checkpoint
    edits = data.draw(mutations(meta))
    folder = _fresh(root, "ckpt")  # the mutated checkpoint's own folder, an input of the run
    folder.mkdir()
    shutil.copy(path.with_suffix(".safetensors"), folder / "tiny.safetensors")
    (folder / "tiny.json").write_text(json.dumps(_mutated(meta, edits)))  # NaN and inf as JSON's NaN/Infinity
    out = folder / "out"
    argv = {
        "export": ["export", folder / "tiny", "--out", out],
        "detect": ["detect", root / "face.png", "--checkpoint", folder / "tiny", "--out", out, "--face-detector", "none"],
        "evaluate": ["evaluate", folder / "tiny", "--preset", root / "tiny.yaml", "--out", out],
    }[command]
    code, text = run_hostile(argv, root, out)
    _ended(f"{command} on mutated JSON", code, text)


def test_deeply_nested_and_oversized_checkpoint_json_is_one_line(root, checkpoint, capsys):
    path, meta = checkpoint
    for name, text in (("deep", "[" * 100_000 + "]" * 100_000), ("big", json.dumps({**meta, "extra": {"x": "y" * 2_000_000}}))):
        folder = root / f"special-{name}"
        folder.mkdir()
        shutil.copy(path.with_suffix(".safetensors"), folder / "tiny.safetensors")
        (folder / "tiny.json").write_text(text)
        code, err = run_hostile(["export", folder / "tiny", "--out", folder / "out"], root, folder / "out")
        assert code == 2 and ("nested too deeply" in err or "larger than 1024 kB" in err), err


TINY_KWARGS = TINY_MODEL["backbone_kwargs"]
KWARG_EDITS = st.dictionaries(st.sampled_from(["depth", "embed_dim", "num_heads", "patch_size", "mlp_ratio", "foo"]),
                              HOSTILE_JSON, max_size=2)  # fmt: skip


@FUZZ
@given(
    st.sampled_from([-1, 0, 1, 3, 3, 12, 56, 57, 10**9]),
    st.sampled_from([0, 7, 8, 16, 32, 32, 33, 4096, 10**6]),
    st.one_of(HOSTILE_JSON, KWARG_EDITS.map(lambda edits: {**TINY_KWARGS, **edits})),
)
def test_info_on_hostile_model_flags(root, num_aus, img_size, kwargs):
    out = _fresh(root, "info")
    # --flag=VALUE: argparse reads a separate value that starts with '-' (-1e+300) as a flag (found by this test)
    argv = ["info", "--backbone", "vit_tiny_patch16_224", f"--num-aus={num_aus}", f"--img-size={img_size}",
            f"--backbone-kwargs={json.dumps(kwargs)}", "--json", "--out", out]  # fmt: skip
    code, text = run_hostile(argv, root, out)
    _ended("info", code, text)


def test_every_config_field_is_generated():
    """The fuzzed names are every field of every section, so a new field is fuzzed the day it is added."""
    sections = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "preset"}
    expected = {f"{name}.{field.name}" for name in sections for field in dataclasses.fields(getattr(Config(), name))}
    assert set(FIELDS) == expected
