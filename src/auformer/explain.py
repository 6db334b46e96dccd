"""What the experts look at: Grad-CAM per expert (paper Fig. 6) and t-SNE of expert CLS tokens (Fig. 5).

Grad-CAM (Selvaraju et al.) here: the target is expert i's auxiliary logit (its own
AU's projector on its CLS output; the main head's logit i for models without aux
head); the feature map is the patch tokens entering the last block (the output of
``blocks[-1].norm1``, reshaped to the patch grid); channel weights are the gradients
averaged over the grid, and the map is ``ReLU(sum_c w_c A_c)``, upsampled to the
input. This is the layer pytorch-grad-cam recommends for ViTs; it is written with
one forward hook instead of that package because the target is one entry of a
NamedTuple output and the prefix/prompt tokens must be dropped, which would need a
wrapper model, a reshape transform and a new dependency for some twenty lines.

t-SNE: scikit-learn's ``TSNE`` on the last MoKE group's per-expert CLS outputs
(``AUFormerOutput.expert_features``, ``(B, N, D)``), one point per (image, expert),
coloured by expert.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from auformer.detect import Detector, expand_inputs, read_image
from auformer.errors import AUFormerError
from auformer.files import UniqueNames, check_apart
from auformer.model.auformer import AUFormer
from auformer.model.checkpoint import load_checkpoint


def grad_cam(model: AUFormer, image: torch.Tensor, targets: list[int]) -> np.ndarray:
    """Grad-CAM maps ``(K, H, W)`` in [0, 1] of one normalised image ``(1, 3, H, W)`` for AU indices ``targets``.

    Target of AU i: the aux logit i (expert i) when the model has aux heads, else the main logit i.
    """
    captured = {}
    handle = model.backbone.blocks[-1].norm1.register_forward_hook(lambda module, inputs, output: captured.update(tokens=output))
    try:
        with torch.enable_grad():
            output = model(image.requires_grad_(True))  # grad on the input: the frozen ViT's tokens join the graph
    finally:
        handle.remove()
    logits = output.aux_logits if output.aux_logits is not None else output.logits  # (1, N)
    grid = tuple(model.backbone.patch_embed.grid_size)
    patch_tokens = slice(-grid[0] * grid[1], None)  # prefix and prompt tokens dropped
    tokens = captured["tokens"]  # (1, T, D)
    patches = tokens[0, patch_tokens].detach()  # (H'W', D)
    maps = []
    for index in targets:
        (gradient,) = torch.autograd.grad(logits[0, index], tokens, retain_graph=True)  # (1, T, D)
        cam = torch.relu(patches @ gradient[0, patch_tokens].mean(0)).view(1, 1, *grid)  # (1, 1, H', W')
        cam = F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]  # (H, W)
        maps.append((cam / cam.max().clamp(min=1e-12)).numpy())
    return np.stack(maps) if maps else np.zeros((0, *image.shape[-2:]), dtype=np.float32)


@torch.no_grad()
def expert_tokens(model: AUFormer, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """The last group's per-expert CLS outputs ``(M, E, D)`` of normalised images ``(M, 3, H, W)``."""
    chunks = []
    for begin in range(0, len(images), batch_size):
        features = model(images[begin : begin + batch_size]).expert_features
        if features is None:
            raise AUFormerError(f"method {model.method!r} has no experts: t-SNE of expert tokens needs an auformer checkpoint")
        chunks.append(features.float().numpy())
    return np.concatenate(chunks)


def tsne_points(tokens: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE ``(M*E, 2)`` of tokens ``(M, E, D)``, rows image-major (row m*E + e is image m, expert e)."""
    from sklearn.manifold import TSNE

    flat = tokens.reshape(-1, tokens.shape[-1])  # (M*E, D)
    if not flat.std(axis=0).max() > 0:  # sklearn's Barnes-Hut t-SNE divides by this spread (and crashes)
        raise AUFormerError("the expert tokens are all equal (an untrained model?): nothing for t-SNE to embed")
    perplexity = float(min(30.0, (len(flat) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(flat)


def _display(image: torch.Tensor, mean: list[float], std: list[float]) -> np.ndarray:
    """Normalised ``(3, H, W)`` -> the uint8 ``(H, W, 3)`` face the network saw (same crop as the maps)."""
    pixels = image * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (pixels.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _load(paths: list[Path], detector: Detector) -> tuple[list[Path], torch.Tensor, int]:
    """Readable images as one normalised batch; unreadable ones reported on stderr and counted."""
    kept, tensors, skipped = [], [], 0
    for path in paths:
        try:
            tensors.append(detector.transform(read_image(path)))
            kept.append(path)
        except ValueError as error:
            print(f"skipped: {error}", file=sys.stderr)
            skipped += 1
    if not tensors:
        raise AUFormerError("no readable image among the inputs")
    return kept, torch.stack(tensors), skipped


def run_explain(args: argparse.Namespace) -> None:
    """``auformer explain``: OUT/gradcam/<image>.png for the first --gradcam-images inputs and OUT/tsne.png."""
    from auformer.viz import plot_gradcam, plot_tsne

    out = Path(args.out)
    check_apart(out, args.images, inside_ok=True)
    detector = Detector(
        args.checkpoint,
        face_detector="none",
        threshold=args.threshold,
        backbone_weights=args.backbone_weights,
        batch_size=args.batch_size,
    )
    model, mean, std = detector.model, detector.model.data_config["mean"], detector.model.data_config["std"]
    paths, videos, ignored = expand_inputs(args.images, exclude=out)
    paths, images, skipped = _load(paths, detector)
    probs = detector._predict(images)["probs"]  # (M, N), batched without autograd
    names = detector.au_columns
    target = "expert (aux head)" if model.aux_head is not None else "main head"
    figure_names = UniqueNames()  # a/x.png and b/x.png: gradcam/x.png and gradcam/x_2.png
    for path, image, prob in list(zip(paths, images, probs))[: args.gradcam_images]:
        present = [i for i in np.argsort(-prob) if prob[i] >= detector.thresholds[i]]
        maps = grad_cam(model, image[None].clone(), present)
        labels = [f"{names[i]} p={prob[i]:.2f}" for i in present]
        written = plot_gradcam(
            _display(image, mean, std),
            maps,
            labels,
            out / "gradcam" / figure_names.claim(f"{path.stem}.png"),
            title=f"{path.name}: Grad-CAM per {target}, AUs predicted present",
        )
        print(f"wrote {written}")
    checkpoints = [args.checkpoint] + ([args.compare_checkpoint] if args.compare_checkpoint else [])
    titles = args.titles or checkpoints
    if len(titles) != len(checkpoints):
        raise AUFormerError(f"--titles names {len(titles)} panels but there are {len(checkpoints)} checkpoints")
    models = [model] + [load_checkpoint(path, backbone_weights=args.backbone_weights) for path in checkpoints[1:]]
    tokens = [expert_tokens(each, images, args.batch_size) for each in models]  # each (M, E, D)
    count = tokens[0].shape[1]
    legend = names if count == len(names) else [f"expert {e}" for e in range(count)]
    panels = {title: tsne_points(each) for title, each in zip(titles, tokens)}
    written = plot_tsne(panels, legend, out / "tsne.png")
    print(f"wrote {written} ({len(images)} images x {count} experts)")
    if skipped or videos or ignored:
        print(f"skipped {skipped} unreadable images, {len(videos)} videos, {ignored} other files", file=sys.stderr)
