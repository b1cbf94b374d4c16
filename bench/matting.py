"""Benchmark of the classic engine's foreground matte on composites with exact masks.

    python bench/matting.py                      # IoU, time and memory (about a minute)
    python bench/matting.py --pictures docs/img  # also the side-by-side pictures

The composites (``bench/composites.py``) paste sharp subjects (scikit-image's logo, its horse
silhouette filled with photo texture, polygons and discs, some with holes) onto blurred photos
at 1024x1024. IoU is of alpha > 127 against the pasted mask, for three methods in the same
run: GrabCut (the classical fallback), the raw U²-Net-p (its probability > 0.5, scaled up)
and retouch's refined matte. Time is CPU time per image on ONE core (process pinned, OpenCV
and onnxruntime single-threaded), split into the refinement's steps. Memory is the peak RSS a
fresh process adds when it imports onnxruntime, loads the model and mattes one 1024x1024
image (three processes: it varies between them).
Needs scikit-image (a dev dependency).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "src")]

from bench.composites import Composite, build, photo  # noqa: E402

from retouch.engine.classic import matting  # noqa: E402
from retouch.engine.classic.segment import segmenter  # noqa: E402


def iou(alpha: np.ndarray, mask: np.ndarray) -> float:
    fg = alpha > 127
    return float((fg & mask).sum() / max(1, (fg | mask).sum()))


def _cpu(fn, *args):  # type: ignore[no-untyped-def]
    start = time.process_time()
    out = fn(*args)
    return out, time.process_time() - start


def run(composites: list[Composite]) -> dict[str, list[float]]:
    seg = segmenter()
    scores: dict[str, list[float]] = {"grabcut": [], "raw": [], "refined": []}
    steps: dict[str, list[float]] = {"trimap+GrabCut, no focus cue": [], "+ focus cue": []}
    times: dict[str, list[float]] = {k: [] for k in ("grabcut", "model", "focus+cut", "edge")}
    print(f"{'composite':40s} {'GrabCut':>8s} {'U2Net-p':>8s} {'retouch':>8s}")
    for c in composites:
        h, w = c.mask.shape
        old, t = _cpu(matting.grabcut_alpha, c.rgb)
        times["grabcut"].append(t)
        prob, t = _cpu(seg.probability, c.rgb)
        times["model"].append(t)
        raw = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR) * 255
        cut, t = _cpu(matting._cut, c.rgb, prob)
        times["focus+cut"].append(t)
        alpha, t = _cpu(matting._soft_edge, c.rgb, cut)
        times["edge"].append(t)
        assert np.array_equal(alpha, matting.refine(c.rgb, prob))
        no_focus = matting._cut(c.rgb, prob, focus_cue=False)
        for key, hard in zip(steps, (no_focus, cut), strict=True):
            up = cv2.resize(hard.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_LINEAR)
            steps[key].append(iou(up, c.mask))
        row = (iou(old, c.mask), iou(raw, c.mask), iou(alpha, c.mask))
        for key, value in zip(scores, row, strict=True):
            scores[key].append(value)
        print(f"{c.name:40s} {row[0]:8.3f} {row[1]:8.3f} {row[2]:8.3f}")
    print()
    print("| method | mean IoU | worst IoU |")
    print("|---|---|---|")
    for key, label in (("grabcut", "GrabCut (fallback)"), ("raw", "U²-Net-p, raw"),
                       ("refined", "**retouch (U²-Net-p + refinement)**")):  # fmt: skip
        print(f"| {label} | {np.mean(scores[key]):.3f} | {min(scores[key]):.3f} |")
    print()
    print("Step by step (each hard cut scaled up, before the soft edge):")
    for key, values in steps.items():
        print(f"  {key:30s} mean {np.mean(values):.3f} worst {min(values):.3f}")
    print(f"  {'+ soft edge (= retouch)':30s} mean {np.mean(scores['refined']):.3f} "
          f"worst {min(scores['refined']):.3f}")  # fmt: skip
    print()
    print("CPU time per 1024x1024 image, one core (mean):")
    for key, values in times.items():
        print(f"  {key:10s} {1000 * np.mean(values):7.1f} ms")
    total = np.mean(times["model"]) + np.mean(times["focus+cut"]) + np.mean(times["edge"])
    print(f"  retouch total {1000 * total:.1f} ms")
    return scores


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_probe() -> None:
    """Run in a fresh process: print the peak RSS (MB) that importing onnxruntime, loading the
    model and one matte of a 1024x1024 image add to a process that has the image, numpy and
    OpenCV loaded."""
    image = build(1024, count=1)[0].rgb
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = _status("VmRSS")
    matting.foreground_alpha(image, segmenter())
    print(f"{(_status('VmHWM') - before) / 1024:.1f}")


def _side_by_side(images: list[np.ndarray], path: Path, tile: int) -> None:
    """Rows of: input, GrabCut, retouch — each cut-out on a checkerboard."""
    from PIL import Image

    seg = segmenter()
    yy, xx = np.mgrid[0:tile, 0:tile]
    board = np.where(((yy // 16 + xx // 16) % 2)[:, :, None] == 0, 205, 250).astype(np.uint8)
    board = np.repeat(board, 3, axis=2)
    rows = []
    for image in images:
        small = cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA)
        cells = [small]
        for alpha in (matting.grabcut_alpha(image), matting.foreground_alpha(image, seg)):
            a = cv2.resize(alpha, (tile, tile), interpolation=cv2.INTER_AREA)[:, :, None] / 255.0
            cells.append((small * a + board * (1 - a)).astype(np.uint8))
        rows.append(np.hstack([np.pad(x, ((2, 2), (2, 2), (0, 0)), constant_values=255) for x in cells]))
    Image.fromarray(np.vstack(rows)).quantize(colors=255, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def pictures(composites: list[Composite], folder: Path, names: list[int]) -> None:
    """Composites (with exact masks) and, without ground truth, plain photographs."""
    folder.mkdir(parents=True, exist_ok=True)
    _side_by_side([composites[i].rgb for i in names], folder / "matting-comparison.png", 256)
    photos = [photo(n) for n in ("astronaut", "coffee", "motorcycle", "immunohistochemistry")]
    _side_by_side(photos, folder / "matting-photos.png", 200)


def seeds(composites: list[Composite], count: int) -> None:
    """How much the refined matte depends on the k-means start of GrabCut's colour models:
    the same composites with ``matting.GMM_SEED`` = 0 .. count-1 (every other seed gives its
    own deterministic start)."""
    seg = segmenter()
    probs = [seg.probability(c.rgb) for c in composites]
    default = matting.GMM_SEED
    print(f"\nGrabCut colour-model seed (default {default:#x}): mean / worst IoU, worst composite")
    for seed in [default, *range(count)]:
        matting.GMM_SEED = seed
        scores = [iou(matting.refine(c.rgb, p), c.mask) for c, p in zip(composites, probs, strict=True)]
        worst = int(np.argmin(scores))
        print(f"  seed {seed:#x}: {np.mean(scores):.3f} / {scores[worst]:.3f} ({composites[worst].name})")
    matting.GMM_SEED = default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=Path, default=None)
    parser.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=int, default=0, metavar="N",
                        help="also score the refined matte with N other k-means seeds")
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cv2.setNumThreads(1)
    if args.memory_probe:
        memory_probe()
        return
    composites = build(1024)
    run(composites)
    if args.seeds:
        seeds(composites, args.seeds)
    # The peak varies from one fresh process to the next (by up to ~40 MB: where onnxruntime's
    # arena and the allocator happen to place the buffers), so take three and report all.
    peaks = [
        float(subprocess.run(
            [sys.executable, __file__, "--memory-probe"], capture_output=True, text=True, check=True
        ).stdout)
        for _ in range(3)
    ]  # fmt: skip
    print(f"peak RSS added by the learned matte (3 fresh processes): "
          f"{' / '.join(f'{p:.0f}' for p in peaks)} MB, max {max(peaks):.0f} MB")  # fmt: skip
    if args.pictures is not None:
        pictures(composites, args.pictures, [1, 3, 7, 14])


if __name__ == "__main__":
    main()
