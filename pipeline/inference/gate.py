"""The input gate: is this a frontal chest radiograph the model may answer for?

Three layers, cheapest first:
1. the file itself: DICOM header (Modality, BodyPartExamined, ViewPosition, photometric layout,
   frames) and aspect ratio before decoding, colourfulness of colour-encoded JPEG/PNG on a reduced
   copy of the decoded image (pipeline.inference.upload runs them in that order). No model needed: old
   checkpoints without a fitted gate get these checks only.
2. the model input: how many grey levels it uses (drawings, text and logos use few).
3. learned, fitted at training time on the training X-rays:
   - the layout: the equalised image at 24x24 against the 10 main modes of the training films
     ("eigen-chests", PCA); a photo, a page or a scan of another body part leaves a residual no
     chest film leaves. Independent of the network, so it holds where the network's features do
     not (a grey photo of a flower sat close to the X-rays in feature space);
   - the texture ("scene statistics"): how the equalised image's detail is spread over five scales
     (a Laplacian pyramid: grain, edges, shapes), how its edges lean (vertical vs horizontal) and
     how bright its centre is against the whole; each against the training films (robust z: median
     and interquartile range), the largest |z| refused above validation's limit. A photograph of
     grass, gravel, bricks, a street or a room has the right overall layout often enough, but its
     detail sits at scales and in directions where a radiograph's never does;
   from the ResNet's pooled features of the very forward pass that makes the prediction
   (`model.logits_and_features`, so it costs one small matrix product):
   - a Mahalanobis distance to the training X-rays (mean + Ledoit-Wolf precision), refused above
     a threshold set on validation X-rays;
   - an orientation classifier (upright / rotated 90, 180, 270 / vertically flipped / inverted),
     a multinomial logistic regression trained on the training films transformed here.
   The thresholds are fitted at training time (`fit`) and travel in the checkpoint under "gate".

A refusal raises `NotAChestXray` (an `InvalidImage`): every caller already turns that into an
error row / a 422 / a message on the page. Lateral DICOM views are answered with a warning.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pipeline.data.dicom import DicomHeader
from pipeline.data.preprocess import InvalidImage
from pipeline.data.preprocess import equalize_arrays

PREFIX = "this does not look like a frontal chest radiograph: "
ACCEPTED_MODALITIES = {"CR", "DX"}  # computed / digital radiography
MODALITY_NAMES = {"CT": "a CT scan", "MR": "an MRI scan", "NM": "a nuclear-medicine image",
                  "PT": "a PET scan", "US": "an ultrasound image", "SEG": "a segmentation",
                  "MG": "a mammogram", "XA": "an angiogram", "RF": "a fluoroscopy image",
                  "OT": "an image of an unknown kind (modality OT)", "SC": "a secondary capture",
                  "ES": "an endoscopy image", "OP": "an ophthalmic photograph", "XC": "a photograph",
                  "IO": "an intra-oral radiograph", "PX": "a panoramic dental radiograph"}
CHEST_PARTS = {"CHEST", "THORAX", "LUNG", "LUNGS", "PORT CHEST", "TORSO"}
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"}
ORIENTATIONS = ("upright", "rotated 90 degrees", "upside down (rotated 180 degrees)",
                "rotated 270 degrees", "flipped top to bottom", "inverted (a negative: bone dark)")
COLOUR_MODES = ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr")
MAX_COLOURFULNESS = 15.0   # Hasler-Suesstrunk; RGB-encoded X-rays measure ~0-3, photos 20-100+
MAX_ASPECT = 4.0           # long side / short side; most films are 1-2:1, a real one is 3.2:1
MIN_GREY_ENTROPY = 4.0     # bits; X-rays use most of the 256 levels (>6 bits), drawings a few
LAYOUT_SIDE = 24           # the layout check compares 24x24 thumbnails...
LAYOUT_MODES = 10          # ...to the 10 principal modes of the training films (measured: 16-32 px
                           # and 5-16 modes all separate photos from films; 24/10 had the widest margin)
LAYOUT_SHARE = 0.1         # of the false-refusal budget; the two feature checks share the rest
LAYOUT_MARGIN = 1.2        # x validation's limit: the layout check is a net for what is no radiograph
                           # at all (grey photos, pages: >= 1.4x); new patients' films reach 1.3x
TEXTURE_SHARE = 0.1        # of the false-refusal budget, for the texture check
TEXTURE_MARGIN = 1.2       # x validation's limit, like the layout's (a net for photographs and scans)
TEXTURE_LEVELS = 5         # pyramid levels: at 160 px, detail of 1-2 px up to 16-32 px
TEXTURE_NAMES = tuple(f"detail at {2 ** k}-{2 ** (k + 1)} px" for k in range(TEXTURE_LEVELS)) + (
    "edge direction (vertical vs horizontal)", "centre brightness")
UNDO = (0, 3, 2, 1, 4, 5)  # transforms()[UNDO[k]] turns a film in ORIENTATIONS[k] back upright


class NotAChestXray(InvalidImage):
    """The file is readable but is not a frontal chest radiograph."""

    def __init__(self, why: str, score: float | None = None):
        super().__init__(PREFIX + why)
        self.why, self.score = why, score

    def __reduce__(self):  # crosses the decoder's process boundary (pipeline.inference.isolation) intact
        return type(self), (self.why, self.score)


@dataclass
class Verdict:
    """What the gate says about an accepted image."""
    score: float | None = None          # Mahalanobis distance (None: no learned gate)
    warnings: list[str] = field(default_factory=list)

    @property
    def warning(self) -> str:
        return "; ".join(self.warnings)


# --- 1. the file: its header, before any decoding (pipeline.inference.upload calls these in order) -------
def check_dicom_header(h: DicomHeader) -> list[str]:
    """The DICOM header's word on what the image is (read by the bounded parser, dicom.read_header).
    Returns warnings; raises NotAChestXray."""
    if h.modality and h.modality not in ACCEPTED_MODALITIES:
        what = MODALITY_NAMES.get(h.modality, f"a {h.modality} image")
        raise NotAChestXray(f"the DICOM file is {what} (modality {h.modality}); only radiographs (CR, DX) "
                            f"can be analysed")
    if not h.photometric.startswith("MONOCHROME"):
        raise NotAChestXray(f"the DICOM image is in colour ({h.photometric}); radiographs are MONOCHROME")
    if h.frames > 1:
        raise NotAChestXray(f"the DICOM file holds {h.frames} frames (a series or a cine), not one film")
    if h.body_part and h.body_part not in CHEST_PARTS:
        raise NotAChestXray(f"the DICOM header says the body part examined is {h.body_part}, not the chest")
    if h.rows and h.columns:
        check_aspect((h.columns, h.rows))
    warnings = []
    if h.view_position in LATERAL_VIEWS:
        warnings.append(f"lateral view ({h.view_position}): the model was trained on frontal (PA/AP) films "
                        f"only, read this answer with extra caution")
    if not h.modality:
        warnings.append("the DICOM header names no modality")
    return warnings


def check_aspect(size: tuple[int, int]) -> None:
    w, h = size
    if min(w, h) > 0 and max(w, h) / min(w, h) > MAX_ASPECT:
        raise NotAChestXray(f"its shape ({w}x{h}, {max(w, h) / min(w, h):.1f}:1) is far from a film's")


def check_colour(img: Image.Image) -> None:
    """A decoded colour-encoded JPEG/PNG: radiographs stored in RGB are grey in every pixel."""
    if img.mode in COLOUR_MODES:
        score = colourfulness(img)
        if score > MAX_COLOURFULNESS:
            raise NotAChestXray(f"it is a colour picture (colourfulness {score:.0f}; "
                                f"radiographs are grey, <= {MAX_COLOURFULNESS:.0f})")


def colourfulness(img: Image.Image, side: int = 128) -> float:
    """Hasler & Suesstrunk (2003) colourfulness, on a reduced copy (a palette image: on its palette,
    weighted by use), so it never costs a full-size colour copy of the upload."""
    if img.mode in ("P", "PA"):
        palette = np.asarray(img.getpalette("RGB") or [0] * 768, np.float32).reshape(-1, 3)
        counts = np.asarray(img.histogram()[:len(palette)], np.float64)  # PA: its first band, the index
        return _colourfulness(palette[:len(counts)], counts)
    small = img.reduce(max(1, min(img.size) // side)) if min(img.size) > 2 * side else img
    rgb = np.asarray(small.convert("RGB"), np.float32).reshape(-1, 3)
    return _colourfulness(rgb, np.ones(len(rgb)))


def _colourfulness(rgb: np.ndarray, weight: np.ndarray) -> float:
    w = weight / max(weight.sum(), 1e-12)
    rg = rgb[:, 0] - rgb[:, 1]
    yb = 0.5 * (rgb[:, 0] + rgb[:, 1]) - rgb[:, 2]
    m_rg, m_yb = float(w @ rg), float(w @ yb)
    s_rg, s_yb = np.sqrt(w @ (rg - m_rg) ** 2), np.sqrt(w @ (yb - m_yb) ** 2)
    return float(np.hypot(s_rg, s_yb) + 0.3 * np.hypot(m_rg, m_yb))


# --- 2. the model input -------------------------------------------------------------------------
def grey_entropy(arr: np.ndarray) -> float:
    counts = np.bincount(arr.ravel(), minlength=256).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def check_array(arr: np.ndarray) -> None:
    """uint8 [S, S] model input: drawings, text and logos use few grey levels."""
    entropy = grey_entropy(arr)
    if entropy < MIN_GREY_ENTROPY:
        raise NotAChestXray(f"it looks like a drawing or a graphic (it uses few grey levels: "
                            f"{entropy:.1f} bits of {MIN_GREY_ENTROPY:.0f} expected at least)")


# --- 3. learned: pooled features ----------------------------------------------------------------
class Gate:
    """The fitted gate of one model (or the cheap checks only when `state` is None)."""

    def __init__(self, state: dict | None = None):
        self.state = state
        if state:
            self.mean = np.asarray(state["mean"], np.float32)
            self.precision = np.asarray(state["precision"], np.float32)
            self.max_distance = float(state["max_distance"])
            self.coef = np.asarray(state["orient_coef"], np.float32)
            self.intercept = np.asarray(state["orient_intercept"], np.float32)
            self.scale_mean = np.asarray(state["orient_mean"], np.float32)
            self.scale_std = np.asarray(state["orient_std"], np.float32)
            self.min_upright = float(state["min_upright"])
            # checkpoints fitted before the layout check existed have no "layout": skipped
            layout = state.get("layout")
            self.layout_mean = np.asarray(layout["mean"], np.float32) if layout else None
            self.layout_basis = np.asarray(layout["basis"], np.float32) if layout else None
            self.max_layout = float(layout["max_residual"]) if layout else float("inf")
            # checkpoints fitted before the texture check existed have no "texture": skipped
            texture = state.get("texture")
            self.texture_center = np.asarray(texture["center"], np.float32) if texture else None
            self.texture_scale = np.asarray(texture["scale"], np.float32) if texture else None
            self.max_texture = float(texture["max_score"]) if texture else float("inf")

    @property
    def learned(self) -> bool:
        return bool(self.state)

    @property
    def description(self) -> str:
        if not self.learned:
            return "cheap checks only (this model was trained before the learned gate existed)"
        layout = f" + layout residual <= {self.max_layout:.2f}" if self.layout_basis is not None else ""
        if self.texture_center is not None:
            layout += f" + texture score <= {self.max_texture:.2f}"
        return (f"cheap checks{layout} + feature distance <= {self.max_distance:.1f} + orientation "
                f"P(upright) >= {self.min_upright:.2f}")

    def distance(self, feats: np.ndarray) -> np.ndarray:
        d = np.atleast_2d(feats) - self.mean
        return np.sqrt(np.maximum(((d @ self.precision) * d).sum(1), 0))  # Mahalanobis; BLAS, not einsum

    def layout_residual(self, arrays: np.ndarray, equalised=None) -> np.ndarray:
        """[N] distance of each image's thumbnail to the training films' principal modes."""
        if self.layout_basis is None:
            return np.zeros(len(arrays), np.float32)
        return pca_residual(layout_thumbnails(arrays, equalised), self.layout_mean, self.layout_basis)

    def texture_z(self, arrays: np.ndarray, equalised=None) -> np.ndarray:
        """[N, len(TEXTURE_NAMES)] signed robust z of each image's texture statistics."""
        return (texture_stats(arrays, equalised) - self.texture_center) / self.texture_scale

    def texture_score(self, arrays: np.ndarray) -> np.ndarray:
        """[N] the largest |z| of each image's texture statistics (0 where the check is not fitted)."""
        if self.texture_center is None:
            return np.zeros(len(arrays), np.float32)
        return np.abs(self.texture_z(arrays)).max(1)

    def orientation(self, feats: np.ndarray) -> np.ndarray:
        """[N, 6] probabilities over ORIENTATIONS."""
        z = (np.atleast_2d(feats) - self.scale_mean) / self.scale_std @ self.coef.T + self.intercept
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def refused(self, feats: np.ndarray) -> np.ndarray:
        """[N] bool: the feature checks' verdict on each image's features alone (assess also asks
        the layout to confirm an orientation refusal; the fast path's agreement check uses this)."""
        return (self.orientation(feats)[:, 0] < self.min_upright) | (self.distance(feats) > self.max_distance)

    def misoriented(self, arrays: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """[N] bool: the orientation classifier says "not upright" (P(upright) under its limit) and,
        where the layout is fitted, the film turned back by the classifier's best guess fits the
        layout better than as it came: two independent signals must agree. Alone, the classifier
        refused 0.9 % of new patients' upright films; with the layout's agreement none (every
        turned film is still caught: docs/benchmarks.md)."""
        low = probs[:, 0] < self.min_upright
        if self.layout_basis is None or not low.any():
            return low
        doubted = np.flatnonzero(low)
        films = arrays[doubted]
        views = transforms(films)
        guess = 1 + probs[doubted, 1:].argmax(1)
        turned_back = np.stack([views[UNDO[g]][j] for j, g in enumerate(guess)])
        low[doubted] = self.layout_residual(turned_back) < self.layout_residual(films)
        return low

    def assess(self, arr: np.ndarray, feats: np.ndarray | None, warnings=()) -> Verdict:
        """Raises NotAChestXray or returns the verdict for one accepted image."""
        check_array(arr)
        verdict = Verdict(warnings=list(warnings))
        if not self.learned:
            return verdict
        equalised = _equalised(arr[None])  # once, for the layout and the texture
        residual = float(self.layout_residual(arr[None], equalised)[0])
        if residual > self.max_layout:
            # a film turned the wrong way fits the layout once turned back: say that, it is the fix
            turned = [(float(self.layout_residual(view)[0]), k) for k, view in enumerate(transforms(arr[None]))][1:]
            fit, k = min(turned)
            if fit <= self.max_layout:  # transforms[k] turns it upright: it is a film turned the inverse way
                raise NotAChestXray(f"it is not an upright chest film (it has the layout of a film "
                                    f"{ORIENTATIONS[UNDO[k]]}); upload films upright, as read on a light box")
            raise NotAChestXray(f"its overall picture does not have a chest film's layout (residual {residual:.1f} "
                                f"against the training films; accepted up to {self.max_layout:.1f})")
        if self.texture_center is not None:
            z = self.texture_z(arr[None], equalised)[0]
            worst = int(np.abs(z).argmax())
            if abs(z[worst]) > self.max_texture:
                raise NotAChestXray(f"its detail and edges are those of a photograph or a scan, not of a radiograph "
                                    f"({TEXTURE_NAMES[worst]} {'above' if z[worst] > 0 else 'below'} any chest "
                                    f"film's: texture score {abs(z[worst]):.1f}; accepted up to {self.max_texture:.1f})")
        if feats is None or not len(feats):
            return verdict
        verdict.score = float(self.distance(feats)[0])
        probs = self.orientation(feats)
        if self.misoriented(arr[None], probs)[0]:
            probs = probs[0]
            worst = 1 + int(np.argmax(probs[1:]))
            raise NotAChestXray(f"it is not an upright chest film (closest match: a film {ORIENTATIONS[worst]}, "
                                f"{probs[worst]:.0%}); upload films upright, as read on a light box", verdict.score)
        if verdict.score > self.max_distance:
            raise NotAChestXray(f"the model has not seen images like it (distance {verdict.score:.0f} to "
                                f"the training X-rays; accepted up to {self.max_distance:.0f})", verdict.score)
        return verdict


def _equalised(arrays: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S] -> float32 [N, S, S] on 0..255, histogram-equalised."""
    return equalize_arrays(arrays)


def _mean_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] rows averaging torch's adaptive-pooling windows: floor(i n_in / n_out) up to
    ceil((i + 1) n_in / n_out)."""
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def layout_thumbnails(arrays: np.ndarray, equalised=None) -> np.ndarray:
    """uint8 [N, S, S] -> [N, LAYOUT_SIDE**2] equalised thumbnails on 0..1 (equalised whatever the
    model's intensity mode, so that the tone curve of a machine does not count as layout;
    `equalised`: the arrays' `_equalised`, when the caller has it already)."""
    x = _equalised(arrays) if equalised is None else equalised
    rows, cols = _mean_pool_matrix(x.shape[-2], LAYOUT_SIDE), _mean_pool_matrix(x.shape[-1], LAYOUT_SIDE)
    return (rows @ x @ cols.T).reshape(len(arrays), -1) / np.float32(255.0)


def _half(x: np.ndarray) -> np.ndarray:
    """2x2 mean pooling [N, H, W] -> [N, ceil(H/2), ceil(W/2)]; an odd edge averages what it has."""
    n, h, w = x.shape
    if not h % 2 and not w % 2:  # the usual case (160 px and its halves): no padding to build
        return x.reshape(n, h // 2, 2, w // 2, 2).sum((-3, -1)) / np.float32(4)
    padded = np.zeros((n, h + h % 2, w + w % 2), np.float32)
    padded[:, :h, :w] = x
    counts = np.zeros(padded.shape[1:], np.float32)
    counts[:h, :w] = 1
    pool = lambda a: a.reshape(*a.shape[:-2], a.shape[-2] // 2, 2, a.shape[-1] // 2, 2).sum((-3, -1))
    return pool(padded) / pool(counts)


def texture_stats(arrays: np.ndarray, equalised=None) -> np.ndarray:
    """uint8 [N, S, S] -> [N, len(TEXTURE_NAMES)] statistics of the equalised image (on 0..1, so the
    tone curve of a machine does not count): log energy of each level of a Laplacian pyramid,
    the balance of horizontal against vertical gradients, the centre's mean brightness against the
    whole image's. Cost: ~0.4 ms for one 160 px image (docs/benchmarks.md)."""
    x = (_equalised(arrays) if equalised is None else equalised) / np.float32(255.0)
    out = []
    level = x
    for _ in range(TEXTURE_LEVELS):
        low = _half(level)
        up = low.repeat(2, axis=1).repeat(2, axis=2)[:, :level.shape[1], :level.shape[2]]
        out.append(np.log(np.square(level - up).mean((1, 2)) + np.float32(1e-8)))
        level = low
    gx = np.abs(x[:, :, 1:] - x[:, :, :-1]).mean((1, 2))
    gy = np.abs(x[:, 1:, :] - x[:, :-1, :]).mean((1, 2))
    out.append((gx - gy) / (gx + gy + np.float32(1e-8)))
    s = x.shape[-1]
    out.append(x[:, s // 4: s - s // 4, s // 4: s - s // 4].mean((1, 2)) - x.mean((1, 2)))
    return np.stack(out, 1).astype(np.float32)


def pca_residual(x: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    d = x - mean
    return np.linalg.norm(d - (d @ basis.T) @ basis, axis=1)


def transforms(arr: np.ndarray) -> list[np.ndarray]:
    """The film in each of ORIENTATIONS (uint8 [N, S, S] -> 6 arrays)."""
    return [arr, np.rot90(arr, 1, axes=(1, 2)), np.rot90(arr, 2, axes=(1, 2)), np.rot90(arr, 3, axes=(1, 2)),
            arr[:, ::-1, :], 255 - arr]


def quantile_rank(value: float, quantiles) -> float:
    """Where a value falls in a stored decile table (0..1, linear inside a decile)."""
    q = np.asarray(quantiles, np.float64)
    if value <= q[0]:
        return 0.0
    if value >= q[-1]:
        return 1.0
    i = int(np.searchsorted(q, value)) - 1
    span = q[i + 1] - q[i]
    return (i + ((value - q[i]) / span if span > 0 else 0.0)) / (len(q) - 1)
