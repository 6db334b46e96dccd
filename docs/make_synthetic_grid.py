"""Draw docs/images/synthetic_grid.png: one upright face with each AU alone, then generated samples.

Run from the repository root: ``python docs/make_synthetic_grid.py``.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from auformer.data.synthetic import generate_synthetic
from auformer.data.synthetic_appearance import SYNTHETIC_AUS
from auformer.data.synthetic_drawing import LATENT_NAMES, render_faces

data = generate_synthetic(num_images=39, size=64, seed=0)
upright = data.latents[:1].repeat(len(SYNTHETIC_AUS) + 1, 0)  # (13, L): one identity, neutral pose
for name, value in {"yaw": 0.0, "rotation": 0.0, "scale": 1.0, "shift_x": 0.0, "shift_y": 0.0, "blur": 0.0, "noise": 0.0}.items():
    upright[:, LATENT_NAMES.index(name)] = value
intensities = np.vstack([np.zeros(len(SYNTHETIC_AUS)), np.eye(len(SYNTHETIC_AUS))]).astype(np.float32)  # neutral, then each AU
single, _ = render_faces(upright, intensities, size=64)

columns = len(SYNTHETIC_AUS) + 1
fig, axes = plt.subplots(4, columns, figsize=(columns * 1.2, 4 * 1.45))
titles = ["neutral"] + [f"AU{au} only" for au in SYNTHETIC_AUS]
for ax, image, title in zip(axes[0], single, titles):
    ax.imshow(image)
    ax.set_title(title, fontsize=7)
for ax, image, labels, subject in zip(axes[1:].flat, data.images, data.labels, data.subjects):
    ax.imshow(image)
    present = "+".join(str(au) for au, on in zip(SYNTHETIC_AUS, labels) if on) or "none"
    ax.set_title(f"{subject}\n{present}", fontsize=6)
for ax in axes.flat:
    ax.axis("off")
fig.suptitle(
    "auformer synthetic faces (64 px). Row 1: each AU alone; rows 2-4: generate_synthetic(seed=0), labels = AUs present",
    fontsize=9,
)
fig.tight_layout()
fig.savefig("docs/images/synthetic_grid.png", dpi=110)
print("wrote docs/images/synthetic_grid.png")
