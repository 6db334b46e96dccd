"""Adapter checkpoints: round trips, what is (not) stored, moved backbones, mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from auformer import __version__, load_checkpoint, save_checkpoint
from auformer.errors import AUFormerError
from auformer.model import build_model
from auformer.model.auformer import AUFormer
from auformer.model.checkpoint import load_adapter_weights
from conftest import TINY_BACKBONE


def _trained_like(model):
    """Non-zero experts/heads, as after training, so a bad load would show in the outputs."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.learnable_parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    return model.eval()


def _backbone_file(tmp_path, tiny_backbone_kwargs) -> str:
    path = tmp_path / "backbone.safetensors"
    torch.manual_seed(5)
    save_file(timm.create_model(TINY_BACKBONE, num_classes=0, img_size=32, **tiny_backbone_kwargs).state_dict(), str(path))
    return str(path)


def test_round_trip_with_random_backbone_stores_the_backbone(tmp_path, tiny_model_kwargs):
    model = _trained_like(build_model(3, aus=[1, 2, 4], moke="fused", **tiny_model_kwargs))
    weights_path = save_checkpoint(model, tmp_path / "run" / "best", extra={"epoch": 3})
    assert weights_path == tmp_path / "run" / "best.safetensors"
    meta = json.loads((tmp_path / "run" / "best.json").read_text())
    assert meta["aus"] == [1, 2, 4] and meta["extra"] == {"epoch": 3} and meta["auformer_version"] == __version__
    assert meta["backbone"] == {"name": TINY_BACKBONE, "weights": "random", "sha256": None, "included": True}
    with safe_open(str(weights_path), framework="pt") as file:
        assert any(k.startswith("backbone.") for k in file.keys())
        assert json.loads(file.metadata()["auformer"]) == meta  # self-describing without the JSON
    loaded = load_checkpoint(tmp_path / "run" / "best.safetensors")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, actual = model(images), loaded(images)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(actual.aux_logits, expected.aux_logits, rtol=0, atol=0)
    assert loaded.config == model.config and loaded.aus == [1, 2, 4]
    assert not list(tmp_path.glob("run/*.tmp")) and not list(tmp_path.glob("run/.*"))  # no temp files left


def test_checkpoint_from_before_random_was_named_still_loads(tmp_path, tiny_model_kwargs):
    """Wave-1 checkpoints recorded a random (stored) backbone as null; they load as 'random'."""
    model = _trained_like(build_model(3, aus=[1, 2, 4], **tiny_model_kwargs)).eval()
    save_checkpoint(model, tmp_path / "old")
    meta = json.loads((tmp_path / "old.json").read_text())
    meta["config"]["backbone_weights"] = meta["backbone"]["weights"] = None
    (tmp_path / "old.json").write_text(json.dumps(meta))
    loaded = load_checkpoint(tmp_path / "old")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).logits, model(images).logits, rtol=0, atol=0)
    assert loaded.config["backbone_weights"] == "random"


def test_backbone_file_is_referenced_not_copied(tmp_path, tiny_model_kwargs, tiny_backbone_kwargs):
    backbone_path = _backbone_file(tmp_path, tiny_backbone_kwargs)
    model = _trained_like(build_model(2, **(tiny_model_kwargs | {"backbone_weights": backbone_path})))
    weights_path = save_checkpoint(model, tmp_path / "adapters")
    with safe_open(str(weights_path), framework="pt") as file:
        assert set(file.keys()) == set(model.learnable_state_dict())
    meta = json.loads((tmp_path / "adapters.json").read_text())
    assert meta["backbone"]["weights"] == backbone_path and len(meta["backbone"]["sha256"]) == 64
    assert not meta["backbone"]["included"]
    loaded = load_checkpoint(tmp_path / "adapters")
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).logits, model(images).logits, rtol=0, atol=0)


def test_moved_backbone_needs_the_override(tmp_path, tiny_model_kwargs, tiny_backbone_kwargs):
    backbone_path = _backbone_file(tmp_path, tiny_backbone_kwargs)
    model = _trained_like(build_model(2, **(tiny_model_kwargs | {"backbone_weights": backbone_path})))
    save_checkpoint(model, tmp_path / "adapters")
    moved = tmp_path / "moved.safetensors"
    (tmp_path / "backbone.safetensors").rename(moved)
    with pytest.raises(FileNotFoundError, match="backbone weights .* not found"):
        load_checkpoint(tmp_path / "adapters")
    loaded = load_checkpoint(tmp_path / "adapters.json", backbone_weights=str(moved))
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).logits, model(images).logits, rtol=0, atol=0)
    save_file({k: v + 1 for k, v in loaded.backbone.state_dict().items()}, str(moved))  # other weights
    with pytest.warns(UserWarning, match="differ from the ones the checkpoint was trained with"):
        load_checkpoint(tmp_path / "adapters", backbone_weights=str(moved))


def test_reference_and_fused_share_checkpoints(tmp_path, tiny_model_kwargs):
    fused = _trained_like(build_model(3, moke="fused", dropout=0.0, **tiny_model_kwargs))
    save_checkpoint(fused, tmp_path / "ckpt")
    reference = build_model(3, moke="reference", dropout=0.0, **tiny_model_kwargs).eval()
    load_adapter_weights(reference, tmp_path / "ckpt")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reference(images).logits, fused(images).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(num_aus=3, aus=[1, 2, 6]), r"adapters are for 3 AUs \[1, 2, 4\]"),
        (dict(num_aus=2, aus=[1, 2]), "adapters are for 3 AUs"),
        (dict(num_aus=3, aus=[1, 2, 4], d=2), "does not fit the model: shape mismatch"),
        (dict(num_aus=3, aus=[1, 2, 4], use_ca=False), "does not fit the model: unexpected"),
        (dict(num_aus=3, aus=[1, 2, 4], backbone="vit_small_patch16_224"), "adapters are for backbone"),
    ],
)
def test_loading_into_another_model_fails_with_one_line(tmp_path, tiny_model_kwargs, options, message):
    save_checkpoint(build_model(3, aus=[1, 2, 4], **tiny_model_kwargs), tmp_path / "ckpt")
    other = build_model(**{**tiny_model_kwargs, **options})
    with pytest.raises(ValueError, match=message) as error:
        load_adapter_weights(other, tmp_path / "ckpt")
    assert "\n" not in str(error.value)


def test_missing_or_foreign_checkpoint_files(tmp_path, tiny_model_kwargs):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "foreign.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not an auformer checkpoint"):
        load_checkpoint(tmp_path / "foreign")
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        save_checkpoint(build_model(2, **tiny_model_kwargs), tmp_path / "x", extra={"tensor": torch.zeros(1)})


def test_vit_base_adapter_file_size_is_about_9_mb():
    """2.21 M float32 learnable values: an adapter file of ~8.9 MB, not the 350 MB of ViT-B."""
    with torch.device("meta"):
        model = build_model(12, backbone_weights="random")
    size_mb = sum(p.numel() * p.element_size() for p in model.learnable_parameters()) / 1e6
    assert 8.5 < size_mb < 9.5


def test_checkpoint_files_get_the_normal_file_mode(tmp_path, tiny_model_kwargs):
    # safetensors' save_file writes private 0600 files; checkpoints must be shareable like any file.
    import os

    from auformer.files import FILE_MODE

    weights = save_checkpoint(build_model(2, aus=[1, 2], **tiny_model_kwargs), tmp_path / "ckpt")
    assert os.stat(weights).st_mode & 0o777 == FILE_MODE
    assert os.stat(weights.with_suffix(".json")).st_mode & 0o777 == FILE_MODE


# ---------------------------------------------------------------- hostile descriptions (issue 18)


def _edited(tmp_path, tiny_model_kwargs, edit, name="crafted"):
    """A checkpoint whose JSON went through ``edit(meta)`` (the weights file stays the real one)."""
    save_checkpoint(build_model(3, aus=[1, 2, 4], **tiny_model_kwargs), tmp_path / name)
    meta = json.loads((tmp_path / f"{name}.json").read_text())
    edit(meta)
    (tmp_path / f"{name}.json").write_text(json.dumps(meta))
    return tmp_path / name


def _set(*path_and_value):
    *path, value = path_and_value

    def edit(meta):
        for key in path[:-1]:
            meta = meta[key]
        if value is _DELETE:
            del meta[path[-1]]
        else:
            meta[path[-1]] = value

    return edit


_DELETE = object()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _set("config", "backbone_kwargs", "embed_dim", 1048576),
            r"config.backbone_kwargs: embed_dim: 1048576 must be in \[1, 8192\]",
        ),
        (_set("config", "img_size", 1e6), "config.img_size: 1000000.0 is not a valid int"),
        (_set("config", "img_size", 1000000), r"config.img_size: 1000000 must be in \[1, 4096\]"),
        (_set("config", "backbone_kwargs", "depth", 100000), r"depth: 100000 must be in \[1, 128\]"),
        (_set("config", _DELETE), "config: must be a JSON object, got nothing"),
        (_set("config", "num_aus", _DELETE), "config.num_aus: missing"),
        (_set("config", "d", "four"), "config.d: 'four' is not a valid int"),
        (_set("config", "d", -1), r"config.d: -1 must be in \[1, 256\]"),
        (_set("config", "dropout", float("nan")), r"config.dropout: nan must be in \[0, 1\)"),
        (_set("config", "ca_size", 4), "config.ca_size: 4 must be odd"),
        (_set("config", "dilations", list(range(1, 100))), "config.dilations: .* has 99 values; 1 to 8 allowed"),
        (_set("config", "moke", "fast"), "config.moke: 'fast' is not one of fused, reference"),
        (_set("config", "surprise", 1), "config.surprise: not a model setting"),
        (_set("aus", [1, 2, 99]), "aus: .*99 is not a FACS action unit"),
        (_set("aus", [1, 1, 2]), "aus: .*the values must differ"),
        (_set("aus", [1, 2]), "aus: 2 AUs but config.num_aus is 3"),
        (_set("backbone", "name", "vit_small_patch16_224"), "backbone.name: .* differs from config.backbone"),
        (_set("backbone", "sha256", "abc"), "backbone.sha256: not a sha256 hex digest"),
        (_set("extra", "resize_size", 10**9), r"extra.resize_size: 1000000000 must be in \[1, 8192\]"),
        (_set("extra", "resize_size", 16), r"extra.resize_size: 16 must be >= config.img_size \(32\)"),
        (_set("config", "img_size", 36), "img_size 36 is not a multiple of vit_tiny_patch16_224's patch size 8"),
        (_set("config", "backbone_kwargs", "num_heads", 3), "dim should be divisible by num_heads"),
        (_set("config", "backbone_kwargs", "class_token", False), "Token pooling needs the class token"),
        (_set("config", "d", 2), "does not fit the model: shape mismatch: .*"),
    ],
)
def test_crafted_checkpoint_json_is_refused_before_anything_is_built(tmp_path, tiny_model_kwargs, monkeypatch, edit, message):
    path = _edited(tmp_path, tiny_model_kwargs, edit)
    built, read = [], []
    build = AUFormer.__init__
    monkeypatch.setattr(AUFormer, "__init__", lambda *args, **kwargs: built.append(1) or build(*args, **kwargs))
    monkeypatch.setattr("auformer.model.checkpoint.load_file", lambda *args, **kwargs: read.append(1) or _never())
    with pytest.raises(ValueError, match=message) as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value) and str(error.value).startswith(str(path))
    assert not read  # no tensor was read
    assert not built or "does not fit the model" in str(error.value)  # only a valid description is built


def _never():
    raise AssertionError("reached past the checks")


def test_checkpoint_description_limits(tmp_path, tiny_model_kwargs):
    deep = _edited(tmp_path, tiny_model_kwargs, lambda meta: None, "deep")
    deep.with_suffix(".json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="invalid checkpoint JSON: nested too deeply"):
        load_checkpoint(deep)
    big = _edited(tmp_path, tiny_model_kwargs, lambda meta: meta["extra"].update(notes="x" * 2_000_000), "big")
    with pytest.raises(ValueError, match="checkpoint description larger than 1024 kB"):
        load_checkpoint(big)
    with pytest.raises(ValueError, match="names no file"):
        load_checkpoint("")


def test_non_float_tensors_in_the_header_are_refused(tmp_path, tiny_model_kwargs):
    path = _edited(tmp_path, tiny_model_kwargs, lambda meta: None)
    meta_text = (tmp_path / "crafted.json").read_text()
    from safetensors.torch import load_file

    tensors = load_file(str(path.with_suffix(".safetensors")))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].to(torch.int64)
    save_file(tensors, str(path.with_suffix(".safetensors")), metadata={"auformer": meta_text})
    with pytest.raises(ValueError, match=f"tensor {name} is I64, not floating point"):
        load_checkpoint(path)


def test_older_checkpoints_without_newer_fields_still_load(tmp_path, tiny_model_kwargs):
    """Checkpoints written before task/method/recompute existed name fewer fields; build_model's defaults fill them."""
    path = _edited(tmp_path, tiny_model_kwargs, lambda meta: [meta["config"].pop(k) for k in ("task", "method", "recompute")])
    assert load_checkpoint(path).task == "occurrence"


def test_hub_checkpoint_with_a_crafted_json_is_one_line(tmp_path, tiny_model_kwargs, monkeypatch, capsys):
    import huggingface_hub

    from auformer.cli import main
    from test_hub import put_in_cache

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    path = _edited(tmp_path, tiny_model_kwargs, _set("config", "backbone_kwargs", "embed_dim", 1048576))
    put_in_cache(cache, "someone/evil", {"adapter.json": path.with_suffix(".json").read_bytes(),
                                         "adapter.safetensors": path.with_suffix(".safetensors").read_bytes()})  # fmt: skip
    assert main(["export", "someone/evil", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "adapter.json: config.backbone_kwargs: embed_dim" in err


@pytest.mark.parametrize("method", ["auformer", "convpass", "linear", "adapter", "adaptformer", "lora", "vpt", "full-finetune"])
@pytest.mark.parametrize("options", [dict(num_aus=1, d=1, dilations=[1]), dict(num_aus=5, d=6, dilations=[1, 2, 3, 4])])
def test_learnable_bound_is_above_every_method(tiny_model_kwargs, method, options):
    """`learnable_bound`, what build_model checks before building, is more than any method builds."""
    from auformer.model.auformer import learnable_bound
    from auformer.model.backbone import backbone_geometry

    kwargs = tiny_model_kwargs | dict(
        method=method, adapter_bottleneck=5, lora_rank=3, vpt_prompts=4, lora_targets=["q", "k", "v"]
    )
    model = build_model(**kwargs, **options)
    geometry = backbone_geometry(TINY_BACKBONE, tiny_model_kwargs["img_size"], tiny_model_kwargs["backbone_kwargs"])
    learnable = sum(p.numel() for name, p in model.named_parameters() if p.requires_grad and not name.startswith("backbone."))
    method_options = dict(adapter_bottleneck=5, lora_rank=3, vpt_prompts=4)
    assert learnable <= learnable_bound(geometry, options["num_aus"], options["d"], options["dilations"], method_options)


def test_model_size_is_checked_before_anything_is_allocated(tiny_model_kwargs):
    big = tiny_model_kwargs | dict(backbone_kwargs=dict(patch_size=8, embed_dim=8192, depth=128, num_heads=8))
    with pytest.raises(ValueError, match=r"has [\d,]+ parameters; at most 2,000,000,000"):
        build_model(3, **big)
    with pytest.raises(ValueError, match=r"make up to [\d,]+ learnable values; at most 500,000,000"):
        build_model(
            56, **(tiny_model_kwargs | dict(backbone_kwargs=dict(patch_size=8, embed_dim=1024, depth=64, num_heads=8))), d=256
        )
    with pytest.raises(ValueError, match="img_size 4096 gives 262144 patches of 8 px; at most 16384"):
        build_model(3, **(tiny_model_kwargs | dict(img_size=4096)))


def test_a_backbone_without_cls_token_is_refused(tiny_model_kwargs):
    kwargs = tiny_model_kwargs["backbone_kwargs"] | dict(class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="has no CLS token; AUFormer's heads read it"):
        build_model(3, **(tiny_model_kwargs | dict(backbone_kwargs=kwargs)))


def test_commands_refuse_a_checkpoint_without_au_list(tmp_path, tiny_model_kwargs, capsys):
    """Python may save a model built without ``aus`` (it loads); the commands name their outputs by AU."""
    from auformer.cli import main
    from test_train import write_tiny_preset

    save_checkpoint(build_model(3, **tiny_model_kwargs), tmp_path / "unnamed")
    assert load_checkpoint(tmp_path / "unnamed").aus is None
    preset = write_tiny_preset(tmp_path / "tiny.yaml")
    for argv in (["export", str(tmp_path / "unnamed"), "--out", str(tmp_path / "export")],
                 ["evaluate", str(tmp_path / "unnamed"), "--preset", preset, "--out", str(tmp_path / "eval")]):  # fmt: skip
        assert main(argv) == 2
        assert (
            capsys.readouterr().err.strip()
            == f"error: {tmp_path / 'unnamed'}: checkpoint has no AU list; cannot name the output columns"
        )
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("load", ["load_checkpoint", "Detector", "export_model"])
def test_a_checkpoint_description_is_read_once_per_load(tmp_path, tiny_model_kwargs, monkeypatch, load):
    """Every entry point that loads a checkpoint opens its JSON once (it used to be up to three times)."""
    import builtins

    from auformer.detect import Detector
    from auformer.export import export_model

    save_checkpoint(build_model(2, aus=[1, 2], **tiny_model_kwargs), tmp_path / "ckpt")
    json_path = (tmp_path / "ckpt.json").resolve()
    opened = []

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, bytes, type(json_path))) and str(file) and Path(file).resolve() == json_path:
            opened.append(file)
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr("auformer.model.checkpoint.open", counting_open, raising=False)
    loaders = {
        "load_checkpoint": lambda: load_checkpoint(tmp_path / "ckpt"),
        "Detector": lambda: Detector(tmp_path / "ckpt", face_detector="none"),
        "export_model": lambda: export_model(tmp_path / "ckpt", tmp_path / "out", format="torchscript"),
    }
    loaders[load]()
    assert len(opened) == 1


def test_a_random_backbone_stripped_from_the_file_is_refused(tmp_path, tiny_model_kwargs):
    """It loaded: the model then ran on a freshly initialised backbone (probabilities off by 0.43), as the
    description says the backbone is in the file (``included``) but only present tensors were checked."""
    tensors, metadata = _saved_tensors(tmp_path, tiny_model_kwargs)
    save_file({k: v for k, v in tensors.items() if not k.startswith("backbone.")}, str(tmp_path / "ckpt.safetensors"), metadata)
    with pytest.raises(AUFormerError, match=r"ckpt\.safetensors does not fit the model: missing: blocks\.0\.attn"):
        load_checkpoint(tmp_path / "ckpt")


def _saved_tensors(folder: Path, tiny_model_kwargs: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata of a freshly saved tiny checkpoint ``folder/ckpt`` (random backbone, stored)."""
    save_checkpoint(_trained_like(build_model(3, aus=[1, 2, 4], **tiny_model_kwargs)), folder / "ckpt")
    with safe_open(str(folder / "ckpt.safetensors"), framework="pt") as file:
        return {name: file.get_tensor(name) for name in file.keys()}, file.metadata()


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_edited_tensors_are_refused_in_one_line_or_load_exactly(tmp_path_factory, tiny_model_kwargs, data):
    """Whatever tensors the safetensors file holds (some or all of a part dropped, one added or reshaped), loading
    refuses it naming the file, or gives back exactly the model that was saved."""
    folder = tmp_path_factory.mktemp("edited")
    tensors, metadata = _saved_tensors(folder, tiny_model_kwargs)
    original = {name: value.clone() for name, value in tensors.items()}
    names = sorted(tensors)
    parts = [{n for n in names if n.startswith("backbone.")}, {n for n in names if not n.startswith("backbone.")}]
    for name in data.draw(st.one_of(st.sets(st.sampled_from(names), max_size=3), st.sampled_from(parts))):
        del tensors[name]
    if data.draw(st.booleans()):
        tensors[data.draw(st.sampled_from(["backbone.extra", "head.extra", names[0]]))] = torch.zeros(2)
    save_file(tensors, str(folder / "ckpt.safetensors"), metadata)
    try:
        loaded = load_checkpoint(folder / "ckpt")
    except AUFormerError as error:
        assert str(error).startswith(f"{folder / 'ckpt.safetensors'}") and "\n" not in str(error)
        return
    state = {**loaded.learnable_state_dict(), **{f"backbone.{k}": v for k, v in loaded.backbone.state_dict().items()}}
    assert sorted(state) == sorted(original) and all(torch.equal(state[k], original[k]) for k in original)
