"""A look at the MNI152-anatomy synthetic patients (unet.synthetic.anatomy), and their render time.

    python benchmarks/synthetic_grid.py [--seed 0] [--patients 0 1 2 3] [--size 256]
                                        [--out reports/synthetic_grid.png] [--time 10]

The picture: one row a patient, four axial FLAIR slices (inferior to superior, one of them the
slice with the most tumour) with the mask outlined in red, then one row with that patient's
three channels (pre-contrast, FLAIR, post-contrast) and the mask on its tumour slice. Titles give
the slice, the drawn lesion volume, the margin irregularity and a missing sequence.

--time N renders patients 0..N-1 of --seed at --size with the real set's 20..88 slices, once for
the anatomy and once for the phantom (unet.synthetic.phantom, the baseline), and prints wall and
CPU time a patient and a slice, and both extrapolated to the 110 patients of a full set (their
slice counts summed; the template's one-off load added).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unet.synthetic import anatomy, phantom  # noqa: E402
from unet.synthetic import generate as synthetic  # noqa: E402

CHANNELS = ("pre-contrast", "FLAIR", "post-contrast")


def outline(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels (4-neighbourhood)."""
    inside = mask > 0
    edge = np.zeros_like(inside)
    edge[1:-1, 1:-1] = inside[1:-1, 1:-1] & ~(inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2]
                                               & inside[1:-1, 2:])
    return edge


def overlay(gray: np.ndarray, mask: np.ndarray) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32) / 255
    rgb[outline(mask)] = (1.0, 0.15, 0.1)
    return rgb


def pick_slices(masks: np.ndarray) -> list[int]:
    """Four slices from low to high, one of them the one with the largest tumour area."""
    n = len(masks)
    tumour = int(np.argmax(masks.reshape(n, -1).sum(axis=1)))
    picks = {int(n * 0.2), int(n * 0.45), tumour, int(n * 0.8)}
    for extra in (int(n * 0.65), int(n * 0.3), int(n * 0.9)):
        if len(picks) < 4:
            picks.add(extra)
    return sorted(picks)[:4]


def draw(seed: int, patients: list[int], size: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(patients) + 1, 4, figsize=(12, 3.1 * (len(patients) + 1)), facecolor="black")
    first = None
    for row, index in enumerate(patients):
        spec = anatomy.patient_spec(seed, index)
        images, masks = anatomy.render_volume(spec, size)
        picks = pick_slices(masks)
        if first is None and spec.missing_channel is None:  # the channel row: all three sequences
            first = (index, images, masks, picks[int(np.argmax([masks[k].sum() for k in picks]))])
        missing = {None: "", anatomy.PRE: ", no pre (FLAIR)", anatomy.POST: ", no post (FLAIR)"}[spec.missing_channel]
        for col, k in enumerate(picks):
            ax = axes[row, col]
            ax.imshow(overlay(images[k, :, :, anatomy.FLAIR], masks[k]), interpolation="nearest")
            title = f"patient {index}, slice {k + 1}/{len(images)}"
            if col == 0:
                title += f"\n{spec.lesion.volume_ml:.0f} mL, irregularity {spec.lesion.irregularity:.2f}{missing}"
            ax.set_title(title, color="white", fontsize=8)
    index, images, masks, k = first
    for col in range(3):
        axes[-1, col].imshow(images[k, :, :, col], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[-1, col].set_title(f"patient {index}, slice {k + 1}: {CHANNELS[col]}", color="white", fontsize=8)
    axes[-1, 3].imshow(masks[k], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    axes[-1, 3].set_title("mask (0/255)", color="white", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"unet.synthetic.anatomy: MNI152 2009a anatomy, seed {seed}, {size} px (FLAIR, mask in red)",
                 color="white", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, facecolor="black")
    print(f"wrote {out}")


def clock(render, specs, size) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for spec in specs:
        render(spec, size)
    return time.perf_counter() - wall, time.process_time() - cpu


def timing(seed: int, n: int, size: int) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    anatomy.load_template()
    load = (time.perf_counter() - wall, time.process_time() - cpu)
    specs = [anatomy.patient_spec(seed, i) for i in range(n)]
    phantoms = [synthetic.patient_spec(seed, i, 20, 88) for i in range(n)]
    slices = sum(s.n_slices for s in specs)
    full = sum(anatomy.patient_spec(seed, i).n_slices for i in range(synthetic.N_LGG_PATIENTS))
    print(f"template load (once a process): {load[0]:.2f} s wall, {load[1]:.2f} s CPU")
    print(f"{n} patients at {size} px, {slices} slices ({slices / n:.1f} a patient); full set: 110 patients, {full} slices")
    print(f"{'renderer':<10} {'s/patient wall':>15} {'CPU':>7} {'ms/slice CPU':>13} {'110 patients wall':>18} {'CPU':>7}")
    for name, render, drawn in (("anatomy", anatomy.render_volume, specs), ("phantom", phantom.render_volume, phantoms)):
        w, c = clock(render, drawn, size)
        count = sum(s.n_slices for s in drawn)
        extra = load if name == "anatomy" else (0.0, 0.0)
        print(f"{name:<10} {w / n:>15.3f} {c / n:>7.3f} {1000 * c / count:>13.2f} "
              f"{w / count * full + extra[0]:>17.1f}s {c / count * full + extra[1]:>6.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patients", type=int, nargs="+", default=[0, 1, 4, 10])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("reports/synthetic_grid.png"))
    parser.add_argument("--time", type=int, default=0, metavar="N", help="time N patients (0: no timing)")
    parser.add_argument("--no-picture", action="store_true")
    args = parser.parse_args()
    if not args.no_picture:
        draw(args.seed, args.patients, args.size, args.out)
    if args.time:
        timing(args.seed, args.time, args.size)


if __name__ == "__main__":
    main()
