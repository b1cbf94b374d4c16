"""Foreground/background separation: a learned model's probabilities, refined at full size.

With the learned segmenter (``segment``, U²-Net-p by default):

1. **Probabilities** from the model at its own resolution (320x320), scaled to the image.
2. **Depth of field**: in a photo whose subject is in focus and whose background is not (a
   product shot, a portrait), the model can also mark a salient but blurred background object.
   Edges are found at ``ANALYSIS_SIZE`` and classed sharp or blurred by the ratio of gradient
   magnitudes before and after a re-blur by one pixel (Zhuo and Sim's defocus estimate: a
   step edge blurred by sigma gives sqrt(sigma^2 + 1) / sigma, near 1 when sigma is large).
   Only when the model's foreground is mostly sharp-edged and the rest mostly blurred,
   everything that is connected to the background without crossing a sharp edge becomes
   background, unless that would take most of the model's foreground (a gap in the outline).
   A large region enclosed by sharp edges that the model leaves undecided (a ring's hole
   showing the background) is doubted: GrabCut starts it as background.
3. **Trimap and cut**: confident regions of the model (eroded) become certain foreground and
   background, the rest (the uncertain band, plus anything step 2 doubts) is decided by
   OpenCV's GrabCut at ``CUT_SIZE`` from colour models of the certain regions; so holes that
   show the background stay holes. GrabCut's colour models start from k-means of a regular
   sample of each side's pixels, seeded (``cv2.setRNGSeed``) on the calling thread, so the
   result is the same in every thread. How much the cut depends on that start:
   ``bench/matting.py --seeds N``.
4. **Soft edge at full resolution**: a colour guided filter (He et al.) of the cut, run on the
   full-size image in a band a few pixels wide around the edge only; elsewhere the alpha is
   0 or 255.

Without onnxruntime (``GrabCutSegmenter``) the classical matte is used: GrabCut seeded from the
image border on a small copy, small islands dropped, a fast guided filter for the edge.
``bench/matting.py`` measures every step.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from retouch.engine.classic.arrays import f32, u8
from retouch.engine.classic.segment import Segmenter, default_segmenter
from retouch.engine.types import Pixels

BoolMask = npt.NDArray[np.bool_]
FloatImage = npt.NDArray[np.float32]

WORK_SIZE = 96
"""Long side of the copy the fallback GrabCut runs on (its cost grows with the pixel count)."""
ITERATIONS = 2
ANALYSIS_SIZE = 512
"""Long side at which edges are found and classed sharp or blurred."""
CUT_SIZE = 384
"""Long side at which GrabCut decides the uncertain pixels (cost grows with the pixel count:
about 100 ms at 384 on one core)."""
CUT_ITERATIONS = 1
"""GrabCut iterations of step 3. The trimap already fixes all but a few percent of the pixels,
so the first cut decides: a second one (re-learning the colour models from it) cost 60 ms
per image and moved the composites' mean IoU by 0.001 (``bench/matting.py``: 0.963 / worst
0.890 with two, 0.962 / 0.890 with one)."""
SURE = 0.9
"""Model probability below 1 - SURE: confident background (before erosion)."""
SURE_FG = 0.75
"""Model probability above which a pixel is confident foreground (before erosion). Lower than
the background's: at 0.9 GrabCut's colour models cut thin parts the model had right (a
motorcycle's chrome fork), at 0.75 the composites score the same (``bench/matting.py``)."""
ERODE_FG = 2
SHARP_RATIO = 1.2
BLURRED_RATIO = 1.12
"""Gradient ratios (before / after a 1-pixel re-blur) above which an edge is sharp, below
which it is blurred (sharp edges measure 1.4-2.5, a background blurred by 3+ pixels at the
analysis size 1.02-1.1)."""


def foreground_alpha(rgb: Pixels, segmenter: Segmenter | None = None) -> Pixels:
    """Alpha (H x W uint8, 255 = foreground) of the main subject of ``rgb``."""
    seg = segmenter if segmenter is not None else default_segmenter()
    rgb = np.ascontiguousarray(rgb[:, :, :3])
    if not seg.learned:
        return grabcut_alpha(rgb)
    return refine(rgb, seg.probability(rgb))


def refine(rgb: Pixels, probability: FloatImage) -> Pixels:
    """Steps 2-4 above: the full-size alpha from the model's probabilities."""
    h, w = rgb.shape[:2]
    cut = _cut(rgb, probability)
    if not cut.any():
        return np.zeros((h, w), np.uint8)
    return _soft_edge(rgb, cut)


def _size(shape: tuple[int, ...], long_side: int) -> tuple[int, int]:
    h, w = shape[:2]
    s = min(1.0, long_side / max(h, w))
    return max(8, round(w * s)), max(8, round(h * s))


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _gradient(image: FloatImage) -> FloatImage:
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1)
    return f32(cv2.magnitude(gx, gy)).reshape(image.shape)


def _channel_max(image: FloatImage) -> FloatImage:
    """The largest of an H x W x 3 image's channels: ``image.max(axis=2)``, but numpy's
    reduction over a 3-long last axis costs 13 ms at 512² where this takes 1 ms."""
    return np.maximum(np.maximum(image[:, :, 0], image[:, :, 1]), image[:, :, 2])


def edges(rgb: Pixels) -> tuple[BoolMask, BoolMask]:
    """Sharp and blurred edge pixels of ``rgb`` (colour Canny, then the re-blur ratio)."""
    colour = rgb.astype(np.float32)
    before = _channel_max(_gradient(colour))
    after = _channel_max(_gradient(f32(cv2.GaussianBlur(colour, (0, 0), 1.0))))
    ratio = before / (after + 1e-3)
    found = cv2.Canny(rgb, 20, 50) > 0
    return found & (ratio > SHARP_RATIO), found & (ratio < BLURRED_RATIO)


def depth_of_field(rgb: Pixels, probability: FloatImage) -> tuple[BoolMask, BoolMask] | None:
    """At ``ANALYSIS_SIZE``: (certain background, doubtful) from the focus cue, or None when
    the photo does not have an in-focus subject on an out-of-focus background."""
    size = _size(rgb.shape, ANALYSIS_SIZE)
    small = u8(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
    p = f32(cv2.resize(probability, size, interpolation=cv2.INTER_LINEAR))
    sharp, blurred = edges(small)
    found = sharp | blurred
    fg = p > 0.5
    inside, outside = int((found & fg).sum()), int((found & ~fg).sum())
    if not inside or not outside:
        return None
    if (sharp & fg).sum() < 0.3 * inside or (blurred & ~fg).sum() < 0.6 * outside:
        return None
    r = max(2, round(max(size) / 128))
    sure_bg = cv2.erode((p < 1 - SURE).astype(np.uint8), _disk(2)) > 0
    walls = cv2.dilate(sharp.astype(np.uint8), _disk(1))
    count, labels = cv2.connectedComponents((walls == 0).astype(np.uint8), connectivity=4)
    votes = np.bincount(labels[sure_bg], minlength=count)
    votes[0] = 0
    background = labels == int(votes.argmax())
    near_sharp = cv2.dilate(sharp.astype(np.uint8), _disk(r)) > 0
    certain = np.zeros_like(fg)
    doubtful = np.zeros_like(fg)
    # A gap in the subject's sharp outline joins it to the background: then the component
    # holds most of the model's foreground, and the cue is not used.
    if (background & fg).sum() < 0.8 * fg.sum():
        certain |= background & ~near_sharp
        doubtful |= background & near_sharp
    far_from_sharp = cv2.dilate(sharp.astype(np.uint8), _disk(2 * r)) == 0
    certain |= (cv2.dilate(blurred.astype(np.uint8), _disk(r)) > 0) & far_from_sharp
    doubtful |= _undecided_holes(labels, count, int(votes.argmax()), p)
    return certain, doubtful


HOLE_AREA = 0.002
"""Smallest enclosed region (fraction of the image) that ``_undecided_holes`` considers."""
HOLE_UNDECIDED = 0.8
"""Fraction of an enclosed region's pixels the model must leave undecided to doubt it."""


def _undecided_holes(
    labels: npt.NDArray[np.int32], count: int, background: int, p: FloatImage
) -> BoolMask:
    """Regions enclosed by sharp edges (``labels``, but not the ``background`` label) that are
    large, hold no sharp edge of their own, and that the model leaves undecided: in a photo
    with a sharp subject on a blurred background, a hole of the subject that shows the
    background (a ring's hole). Texture inside the subject is cut into small regions by its own sharp
    edges, and the model is sure of the subject's smooth parts, so neither is doubted. A
    doubted region starts as background in GrabCut, whose colour models then decide it;
    undecided, it went to whichever side the models' start favoured."""
    undecided = (p > 1 - SURE) & (p < SURE_FG)
    area = np.bincount(labels.reshape(-1), minlength=count)
    unsure = np.bincount(labels.reshape(-1), weights=undecided.reshape(-1), minlength=count)
    holes = (area >= HOLE_AREA * labels.size) & (unsure >= HOLE_UNDECIDED * np.maximum(area, 1))
    holes[0] = False  # the walls themselves
    holes[background] = False  # the background's own region
    result: BoolMask = holes[labels]
    return result


def _cut(rgb: Pixels, probability: FloatImage, *, focus_cue: bool = True) -> BoolMask:
    """Steps 2-3: the hard foreground at ``CUT_SIZE`` (``focus_cue=False`` skips step 2, for
    the benchmark's step-by-step figures)."""
    size = _size(rgb.shape, CUT_SIZE)
    small = u8(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
    p = f32(cv2.resize(probability, size, interpolation=cv2.INTER_LINEAR))
    mask = np.where(p > 0.5, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    sure_fg = cv2.erode((p > SURE_FG).astype(np.uint8), _disk(ERODE_FG)) > 0
    sure_bg = cv2.erode((p < 1 - SURE).astype(np.uint8), _disk(2)) > 0
    focus = depth_of_field(rgb, probability) if focus_cue else None
    if focus is not None:
        certain, doubtful = (
            cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
            for m in focus
        )
        mask[doubtful] = cv2.GC_PR_BGD
        sure_bg |= certain
        sure_fg &= ~(certain | doubtful)
    mask[sure_fg] = cv2.GC_FGD
    mask[sure_bg] = cv2.GC_BGD
    fg_labels = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    if not fg_labels.any():
        return np.zeros(size[::-1], bool)
    _grabcut_undecided(small, mask, CUT_ITERATIONS)
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    return _drop_islands(fg, 0.02)


CUT_MARGIN = 16
"""Pixels of decided surroundings kept around the undecided ones for GrabCut (at ``CUT_SIZE``)."""


def _grabcut_undecided(small: Pixels, mask: np.ndarray, iterations: int) -> None:
    """GrabCut on the bounding box of the undecided pixels and ``CUT_MARGIN`` around them,
    written back into ``mask``. OpenCV builds its graph over every pixel it is given, fixed
    or not, and the trimap leaves only 2-4 % undecided: on the box the cut took 71-76 ms per
    image instead of 96-126 (its colour models then come from the decided pixels near the
    undecided ones), and no composite's IoU moved by more than 0.012 (``bench/matting.py``)."""
    undecided = (mask == cv2.GC_PR_FGD) | (mask == cv2.GC_PR_BGD)
    rows, cols = np.flatnonzero(undecided.any(axis=1)), np.flatnonzero(undecided.any(axis=0))
    if not len(rows):
        return
    y0, y1 = max(0, rows[0] - CUT_MARGIN), min(mask.shape[0], rows[-1] + CUT_MARGIN + 1)
    x0, x1 = max(0, cols[0] - CUT_MARGIN), min(mask.shape[1], cols[-1] + CUT_MARGIN + 1)
    box = np.ascontiguousarray(mask[y0:y1, x0:x1])
    _grabcut(np.ascontiguousarray(small[y0:y1, x0:x1]), box, iterations)
    mask[y0:y1, x0:x1] = box


def _grabcut(small: Pixels, mask: np.ndarray, iterations: int) -> None:
    """GrabCut from colour models that start from k-means of a sample of each side's pixels.

    ``GC_INIT_WITH_MASK`` starts them with k-means over every pixel of each side: at
    ``CUT_SIZE`` that was 47 ms of the cut's 80. Cluster centres of a regular sample of
    ``GMM_SAMPLES`` pixels per side are as good a start (the first iteration re-learns the
    models from every pixel), so here the models are fitted to the sample and GrabCut resumes
    from them (``GC_EVAL``). A side with too few pixels to model (none, in a box that holds
    one side only) leaves ``mask`` as it is: there is nothing to tell apart."""
    pixels = small.reshape(-1, 3)
    labels = mask.reshape(-1)
    background = (labels == cv2.GC_BGD) | (labels == cv2.GC_PR_BGD)
    bgd, fgd = _gmm(pixels[background]), _gmm(pixels[~background])
    if bgd is None or fgd is None:
        return
    cv2.grabCut(small, mask, (0, 0, 0, 0), bgd, fgd, iterations, cv2.GC_EVAL)


def _grabcut_from_mask(small: Pixels, mask: np.ndarray, iterations: int) -> None:
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    # GrabCut starts its colour models with k-means from the thread's random generator:
    # seed it here so that every thread gives the same cut.
    cv2.setRNGSeed(0x5EED)
    cv2.grabCut(small, mask, (0, 0, 0, 0), bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)


GMM_COMPONENTS = 5
"""OpenCV's GrabCut models each side with 5 Gaussians (its model arrays are 1 x 65)."""
GMM_SAMPLES = 4096
"""Pixels per side the start of the colour models is fitted to."""
GMM_ATTEMPTS = 1
"""k-means runs per side (the most compact is kept): three changed no composite's IoU, for
any of four seeds, and cost 7 ms per image."""
GMM_SEED = 0x5EED


def _gmm(samples: Pixels) -> npt.NDArray[np.float64] | None:
    """A GrabCut colour model (OpenCV's layout: 5 weights, 5 RGB means, 5 3x3 covariances)
    fitted by k-means (k-means++ start, 10 rounds, as OpenCV's own start) to a regular sample
    of ``samples``; None when there are too few pixels."""
    if len(samples) < GMM_COMPONENTS * 4:
        return None
    step = max(1, len(samples) // GMM_SAMPLES)
    data = np.ascontiguousarray(samples[::step], np.float32)
    cv2.setRNGSeed(GMM_SEED)  # k-means++ draws from the thread's generator: same start everywhere
    criteria = (cv2.TERM_CRITERIA_MAX_ITER, 10, 0.0)
    labels = np.zeros((len(data), 1), np.int32)  # output only (no KMEANS_USE_INITIAL_LABELS)
    _, assigned, _ = cv2.kmeans(data, GMM_COMPONENTS, labels, criteria, GMM_ATTEMPTS, cv2.KMEANS_PP_CENTERS)
    assigned = assigned.reshape(-1)
    model = np.zeros((1, 65), np.float64)
    weights, means, covs = model[0, :5], model[0, 5:20].reshape(5, 3), model[0, 20:].reshape(5, 9)
    values = data.astype(np.float64)
    for k in range(GMM_COMPONENTS):
        members = values[assigned == k]
        if len(members) == 0:
            continue  # weight 0: OpenCV skips the component
        weights[k] = len(members) / len(values)
        means[k] = members.mean(axis=0)
        centred = members - means[k]
        cov = centred.T @ centred / len(members)
        if np.linalg.det(cov) <= np.finfo(np.float64).eps:  # OpenCV's fix for a flat colour
            cov += np.eye(3) * 0.01
        covs[k] = cov.reshape(9)
    return model


def _soft_edge(rgb: Pixels, cut: BoolMask, radius: int = 2, eps: float = 1e-4) -> Pixels:
    """Step 4: the cut scaled to full size, its edge band replaced by a colour guided filter."""
    h, w = rgb.shape[:2]
    up = f32(cv2.resize(cut.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR))
    alpha = u8(np.where(up >= 0.5, np.uint8(255), np.uint8(0)))
    band = (up > 0.01) & (up < 0.99)
    # The band's bounding box from its rows and columns (np.nonzero of the whole band lists
    # every pixel: 3 ms at 1024², this 0.5 ms).
    ys, xs = np.flatnonzero(band.any(axis=1)), np.flatnonzero(band.any(axis=0))
    if not len(ys):
        return alpha
    grow = max(2, round(max(h, w) / cut.shape[1]) + radius)
    y0, y1 = max(0, int(ys[0]) - grow - radius), min(h, int(ys[-1]) + grow + radius + 1)
    x0, x1 = max(0, int(xs[0]) - grow - radius), min(w, int(xs[-1]) + grow + radius + 1)
    guide = rgb[y0:y1, x0:x1]
    soft = f32(cv2.ximgproc.guidedFilter(guide, up[y0:y1, x0:x1], radius, eps * 255 * 255))
    region = cv2.dilate(band[y0:y1, x0:x1].astype(np.uint8), _disk(grow)) > 0
    out = alpha[y0:y1, x0:x1]
    out[region] = u8(np.clip(soft[region] * 255.0 + 0.5, 0, 255))
    return alpha


def grabcut_alpha(
    rgb: Pixels, *, work_size: int = WORK_SIZE, iterations: int = ITERATIONS
) -> Pixels:
    """The classical matte (no model): GrabCut seeded from the image border."""
    h, w = rgb.shape[:2]
    small = u8(cv2.resize(rgb, _size(rgb.shape, work_size), interpolation=cv2.INTER_AREA))
    mask = np.full(small.shape[:2], cv2.GC_PR_FGD, np.uint8)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = cv2.GC_BGD
    _grabcut_from_mask(small, mask, iterations)  # 96 px: OpenCV's own start costs nothing
    hard = _drop_islands(((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8))
    if not hard.any() or hard.all():
        # GrabCut found no separation (a flat image, or a subject that fills the frame):
        # say so with a fully opaque matte rather than inventing an outline.
        return np.full((h, w), 255, np.uint8)
    return _guided_upsample(rgb, hard)


def _drop_islands(fg: np.ndarray, keep_frac: float = 0.05) -> BoolMask:
    """Keep foreground components of at least ``keep_frac`` of the largest one."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if count <= 2:
        return fg.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= keep_frac * areas.max()) + 1
    return np.isin(labels, keep)


def _guided_upsample(rgb: Pixels, hard: BoolMask, radius_frac: float = 0.012) -> Pixels:
    """He and Sun's fast guided filter: coefficients at <= 256 px, applied at full size."""
    h, w = rgb.shape[:2]
    gs = _size(rgb.shape, 256)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    guide = f32(cv2.resize(gray, gs, interpolation=cv2.INTER_AREA)) / 255.0
    src = f32(cv2.resize(hard.astype(np.float32), gs, interpolation=cv2.INTER_LINEAR))
    r = max(1, round(max(gs) * radius_frac * 4))
    a, b = _guided_coefficients(guide, src, r, 1e-3)
    a_full = cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)
    b_full = cv2.resize(b, (w, h), interpolation=cv2.INTER_LINEAR)
    alpha = a_full * (f32(gray) / 255.0) + b_full
    return u8(np.clip(alpha * 255.0 + 0.5, 0, 255))


def _guided_coefficients(
    guide: FloatImage, src: FloatImage, radius: int, eps: float
) -> tuple[FloatImage, FloatImage]:
    k = (2 * radius + 1, 2 * radius + 1)
    mean_i = cv2.boxFilter(guide, -1, k)
    mean_p = cv2.boxFilter(src, -1, k)
    cov = cv2.boxFilter(guide * src, -1, k) - mean_i * mean_p
    var = cv2.boxFilter(guide * guide, -1, k) - mean_i * mean_i
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    return f32(cv2.boxFilter(a, -1, k)), f32(cv2.boxFilter(b, -1, k))


def extract_foreground(rgb: Pixels, segmenter: Segmenter | None = None) -> Pixels:
    """RGBA: ``rgb`` with the alpha of its main subject (used by the generative engines for
    ``background=transparent``)."""
    colour = rgb[:, :, :3]
    return np.dstack([colour, foreground_alpha(colour, segmenter)])
