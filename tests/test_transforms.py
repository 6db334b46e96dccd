"""Train/test transforms and the torch datasets (disk and in-memory)."""

import numpy as np
import pytest
import torch
from PIL import Image

from auformer.data import ArrayAUDataset, AUDataset, AUTable, build_transform
from auformer.data.transforms import default_resize_size

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _ramp(height: int = 64, width: int = 64) -> np.ndarray:
    """uint8 (H, W, 3) image whose red channel grows left to right: flips are visible."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    image[..., 1] = 128
    return image


def test_test_transform_is_resize_centre_crop_and_normalise():
    image = _ramp()
    out = build_transform(False, 32, MEAN, STD)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    # green is constant 128 -> (128/255 - 0.5) / 0.25
    torch.testing.assert_close(out[1], torch.full((32, 32), (128 / 255 - 0.5) / 0.25), atol=1e-5, rtol=0)
    # PIL input gives the same tensor as the uint8 array
    torch.testing.assert_close(build_transform(False, 32, MEAN, STD)(Image.fromarray(image)), out, atol=2e-2, rtol=0)
    # centre crop of a 37-px resize: the left edge is not the image's darkest column
    assert out[0, :, 0].mean() > (0 - 0.5) / 0.25 + 0.1
    assert default_resize_size(224) == 256 and default_resize_size(32) == 37


def test_train_transform_flips_and_crops_randomly():
    image = _ramp()
    transform = build_transform(True, 32, MEAN, STD, color_jitter=0.0)
    torch.manual_seed(0)
    outs = [transform(image) for _ in range(40)]
    slopes = [float(o[0, :, -1].mean() - o[0, :, 0].mean()) for o in outs]
    assert any(s > 0 for s in slopes) and any(s < 0 for s in slopes)  # both orientations seen
    assert len({round(float(o[0].mean()), 4) for o in outs}) > 2  # crop positions vary
    no_flip = build_transform(True, 32, MEAN, STD, color_jitter=0.0, hflip=False)
    assert all(float(o[0, :, -1].mean() - o[0, :, 0].mean()) > 0 for o in (no_flip(image) for _ in range(10)))


def test_colour_jitter_changes_colours_only_in_training():
    image = _ramp()
    torch.manual_seed(0)
    jitter = build_transform(True, 64, MEAN, STD, resize_size=64, color_jitter=0.4, hflip=False)
    assert any(not torch.allclose(jitter(image)[1], jitter(image)[1]) for _ in range(5))
    test = build_transform(False, 64, MEAN, STD, resize_size=64, color_jitter=0.4)
    torch.testing.assert_close(test(image), test(image))
    with pytest.raises(ValueError, match="resize_size"):
        build_transform(True, 64, MEAN, STD, resize_size=32)


def test_datasets_read_images_and_labels(tmp_path):
    images = np.stack([_ramp(40, 40), 255 - _ramp(40, 40)])
    labels = np.array([[1, 0, -1], [0, 1, 1]], dtype=np.float32)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    table = AUTable(tmp_path, ["0.png", "1.png"], ["s", "s"], labels, [1, 2, 4])
    transform = build_transform(False, 32, MEAN, STD)
    disk, memory = AUDataset(table, transform), ArrayAUDataset(images, labels, transform)
    assert len(disk) == len(memory) == 2
    for (x_disk, y_disk), (x_mem, y_mem) in zip(disk, memory):
        torch.testing.assert_close(x_disk, x_mem)
        torch.testing.assert_close(y_disk, y_mem)
        assert y_disk.dtype == torch.float32
    assert disk[0][1].tolist() == [1, 0, -1]
    batch_images, batch_labels = next(iter(torch.utils.data.DataLoader(disk, batch_size=2)))
    assert batch_images.shape == (2, 3, 32, 32) and batch_labels.shape == (2, 3)


def test_dataset_errors_name_the_file(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    table = AUTable(tmp_path, ["bad.jpg", "gone.jpg"], ["s", "s"], np.zeros((2, 1)), [1])
    dataset = AUDataset(table, build_transform(False, 32, MEAN, STD))
    with pytest.raises(ValueError, match=r"bad.jpg: not an image"):
        dataset[0]
    with pytest.raises(FileNotFoundError, match=r"gone.jpg: image file not found"):
        dataset[1]
    with pytest.raises(ValueError, match=r"uint8 \(M, H, W, 3\)"):
        ArrayAUDataset(np.zeros((2, 8, 8), np.uint8), np.zeros((2, 1)), None)
