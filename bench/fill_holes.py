"""Fill quality on many random holes: retouch's classical fill against OpenCV's Telea and
Navier-Stokes, hole by hole.

    python bench/fill_holes.py               # 60 holes, about 2-3 minutes on one core
    python bench/fill_holes.py --holes 120 --seed 1

Holes: random position, size (1-8 % of the photo) and shape (ellipse, rotated rectangle,
random polygon, thick stroke), spread evenly over all of scikit-image's colour photographs
(long side capped at 768 px). Two holes in three are centred on a strong edge, so they cut
through structure. Hole pixels are zeroed before filling. SSIM is the mean of the SSIM map
(7x7, per channel) over hole pixels, PSNR is over hole pixels; both are reported as means and
as the fraction of holes on which each method is the best of the three. One core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "src")]

from bench.composites import PHOTOS, photo  # noqa: E402

from retouch.engine.classic.fill import fill  # noqa: E402

MAX_SIDE = 768


def _photos() -> dict[str, np.ndarray]:
    out = {}
    for name in PHOTOS:
        image = photo(name)
        h, w = image.shape[:2]
        s = min(1.0, MAX_SIDE / max(h, w))
        if s < 1:
            image = cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        out[name] = np.ascontiguousarray(image)
    return out


def random_hole(image: np.ndarray, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    h, w = image.shape[:2]
    area = rng.uniform(0.01, 0.08) * h * w
    edges = cv2.Canny(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 60, 160)
    ys, xs = np.nonzero(edges[h // 8 : -h // 8, w // 8 : -w // 8])
    if rng.random() < 2 / 3 and len(xs):
        i = int(rng.integers(len(xs)))
        cx, cy = int(xs[i]) + w // 8, int(ys[i]) + h // 8
    else:
        cx, cy = int(rng.integers(w // 8, w - w // 8)), int(rng.integers(h // 8, h - h // 8))
    mask = np.zeros((h, w), np.uint8)
    shape = str(rng.choice(["ellipse", "rectangle", "polygon", "stroke"]))
    aspect = rng.uniform(0.4, 2.5)
    angle = rng.uniform(0, 180)
    if shape == "ellipse":
        a = np.sqrt(area / np.pi * aspect)
        cv2.ellipse(mask, ((cx, cy), (2 * a, 2 * a / aspect), angle), 1, -1)
    elif shape == "rectangle":
        a = np.sqrt(area * aspect)
        box = cv2.boxPoints(((cx, cy), (a, a / aspect), angle))
        cv2.fillPoly(mask, [box.astype(np.int32)], 1)
    elif shape == "polygon":
        n = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = np.sqrt(area / np.pi) * rng.uniform(0.6, 1.4, n)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
        cv2.fillPoly(mask, [pts.astype(np.int32)], 1)
    else:
        width = max(4, round(np.sqrt(area) / 6))
        length = area / width
        dx, dy = np.cos(np.radians(angle)) * length / 2, np.sin(np.radians(angle)) * length / 2
        cv2.line(mask, (round(cx - dx), round(cy - dy)), (round(cx + dx), round(cy + dy)), 1, width)
    return shape, mask > 0


def main() -> None:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holes", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cv2.setNumThreads(1)
    methods: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "classic": lambda img, hole: fill(img, hole),
        "telea": lambda img, hole: cv2.inpaint(img, hole.astype(np.uint8), 3, cv2.INPAINT_TELEA),
        "ns": lambda img, hole: cv2.inpaint(img, hole.astype(np.uint8), 3, cv2.INPAINT_NS),
    }
    rng = np.random.default_rng(args.seed)
    images = _photos()
    names = list(images)
    rows: list[dict[str, tuple[float, float, float]]] = []
    for k in range(args.holes):
        name = names[k % len(names)]
        image = images[name]
        shape, hole = random_hole(image, rng)
        damaged = image.copy()
        damaged[hole] = 0  # no method may see the truth inside the hole
        row = {}
        for method, run in methods.items():
            start = time.process_time()
            out = np.where(hole[..., None], run(damaged, hole), image)
            seconds = time.process_time() - start
            _, ssim_map = structural_similarity(image, out, channel_axis=2, full=True, data_range=255)
            psnr = peak_signal_noise_ratio(image[hole], out[hole], data_range=255)
            row[method] = (float(ssim_map[hole].mean()), float(psnr), seconds)
        rows.append(row)
        best = max(row, key=lambda m: row[m][0])
        print(f"{k:3d} {name:22s} {shape:9s} {100 * hole.mean():4.1f}%  "
              + "  ".join(f"{m} {v[0]:.3f}/{v[1]:5.2f}" for m, v in row.items())
              + f"  best SSIM: {best}", flush=True)  # fmt: skip
    print(f"\n{len(rows)} holes in {len(names)} photos (seed {args.seed})\n")
    print("| method | mean SSIM in hole | mean PSNR in hole | best SSIM on | best PSNR on | mean CPU time |")
    print("|---|---|---|---|---|---|")
    for method in methods:
        ssim = statistics.fmean(r[method][0] for r in rows)
        psnr = statistics.fmean(r[method][1] for r in rows)
        secs = statistics.fmean(r[method][2] for r in rows)
        best_ssim = sum(max(r, key=lambda m: r[m][0]) == method for r in rows) / len(rows)
        best_psnr = sum(max(r, key=lambda m: r[m][1]) == method for r in rows) / len(rows)
        print(f"| {method} | {ssim:.4f} | {psnr:.2f} dB | {100 * best_ssim:.0f} % | "
              f"{100 * best_psnr:.0f} % | {secs:.2f} s |")  # fmt: skip
    for rival in ("telea", "ns"):
        ssim_wins = sum(r["classic"][0] > r[rival][0] for r in rows) / len(rows)
        psnr_wins = sum(r["classic"][1] > r[rival][1] for r in rows) / len(rows)
        print(f"classic beats {rival} on {100 * ssim_wins:.0f} % of holes (SSIM), "
              f"{100 * psnr_wins:.0f} % (PSNR)")  # fmt: skip


if __name__ == "__main__":
    main()
