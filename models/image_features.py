"""Visual layout features of a scanned page: one function shared by training and serving.

`image_features(png_bytes | PIL.Image) -> float32 vector` (names in IMAGE_FEATURES). The page,
less 3% at each edge, is reduced to 288x384 gray; the paper level is estimated per 24x24 block
(its bright percentile) so uneven illumination does not read as ink. The features describe
layout: an ink-density grid, header/body/footer ink, text-line counts in narrow vertical strips
(robust to a few degrees of skew), margins and alignment, long horizontal/vertical rules (tables,
forms; counted per page quarter), solid dark areas (logos, photos, shaded headers), the page's
aspect ratio and its paper level. About 6 ms per page on one core.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

WIDTH, HEIGHT, BLOCK = 288, 384, 24
GRID_COLS, GRID_ROWS = 6, 8
STRIPS = 8
TRIM = 0.03  # share of each edge ignored

IMAGE_FEATURES: tuple[str, ...] = (
    *(f"ink_grid_r{r}_c{c}" for r in range(GRID_ROWS) for c in range(GRID_COLS)),
    "aspect_ratio", "ink_share", "darkness_mean", "paper_level", "paper_unevenness",
    "ink_header", "ink_body", "ink_footer", "ink_left_half", "ink_rows_share", "ink_cols_share",
    "text_lines_max", "text_lines_mean", "line_pitch_mean", "line_pitch_std",
    "left_edge_mean", "left_edge_std", "right_edge_mean", "right_edge_std", "row_center_offset",
    "hrules", "hrule_rows_share", "vrules", "vrule_cols_share", "solid_share", "column_gaps",
)


def load_gray(image: bytes | Image.Image) -> Image.Image:
    """PNG (or any Pillow-readable) bytes or an image, as 8-bit grayscale."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        image = Image.open(io.BytesIO(image))
    return image if image.mode == "L" else image.convert("L")


def image_features(image: bytes | Image.Image) -> np.ndarray:
    """The IMAGE_FEATURES vector (float32) of one page."""
    page = load_gray(image)
    aspect = page.height / max(page.width, 1)
    trim_x, trim_y = page.width * TRIM, page.height * TRIM  # scanner edges and lid shadows
    inner = (trim_x, trim_y, page.width - trim_x, page.height - trim_y)
    gray = np.asarray(page.resize((WIDTH, HEIGHT), Image.Resampling.BOX, box=inner), dtype=np.float32) / 255.0
    blocks = gray.reshape(HEIGHT // BLOCK, BLOCK, WIDTH // BLOCK, BLOCK).transpose(0, 2, 1, 3).reshape(HEIGHT // BLOCK, WIDTH // BLOCK, -1)
    paper_blocks = np.maximum(np.percentile(blocks, 90, axis=2), 0.2)
    paper = np.repeat(np.repeat(paper_blocks, BLOCK, axis=0), BLOCK, axis=1)
    dark = np.clip((paper - gray) / paper, 0.0, 1.0)
    ink = dark > 0.25

    grid = dark.reshape(GRID_ROWS, HEIGHT // GRID_ROWS, GRID_COLS, WIDTH // GRID_COLS).mean(axis=(1, 3)).ravel()
    rows, cols = ink.mean(axis=1), ink.mean(axis=0)
    band = HEIGHT // 8

    profile = ink.reshape(HEIGHT, STRIPS, WIDTH // STRIPS).mean(axis=2)  # (HEIGHT, STRIPS)
    strip_rows = profile > np.maximum(0.04, 0.5 * np.percentile(profile, 90, axis=0))  # relative: thick, bleeding lines stay apart
    starts = strip_rows[1:] & ~strip_rows[:-1]
    lines_per_strip = starts.sum(axis=0)
    pitches = [np.diff(np.flatnonzero(starts[:, s])) for s in range(STRIPS)]
    pitch = np.concatenate(pitches) / HEIGHT if any(len(p) for p in pitches) else np.zeros(1)

    inked_rows = np.flatnonzero(rows > 0.01)
    if len(inked_rows):
        row_ink = ink[inked_rows]
        left = row_ink.argmax(axis=1) / WIDTH
        right = (WIDTH - 1 - row_ink[:, ::-1].argmax(axis=1)) / WIDTH
        center = np.abs((left + right) / 2 - 0.5).mean()
    else:
        left = right = np.zeros(1)
        center = 0.0

    quarter_w, quarter_h = WIDTH // 4, HEIGHT // 4  # rules are found per quarter, where skew moves them < 4 px
    hrule_rows = [_long_runs(ink[:, i * quarter_w:(i + 1) * quarter_w], WIDTH // 8, axis=1) for i in range(4)]
    vrule_cols = [_long_runs(ink[i * quarter_h:(i + 1) * quarter_h], HEIGHT // 8, axis=0) for i in range(4)]
    solid = dark.reshape(HEIGHT // 8, 8, WIDTH // 8, 8).mean(axis=(1, 3)) > 0.45
    text_cols = cols[int(WIDTH * 0.1):int(WIDTH * 0.9)] < 0.01
    column_gaps = int((text_cols[1:] & ~text_cols[:-1]).sum())

    return np.array([
        *grid,
        aspect, ink.mean(), dark.mean(), float(np.median(paper_blocks)), float(paper_blocks.std()),
        ink[:band].mean(), ink[band:-band].mean(), ink[-band:].mean(), ink[:, :WIDTH // 2].mean(), (rows > 0.01).mean(), (cols > 0.01).mean(),
        lines_per_strip.max() / 100, lines_per_strip.mean() / 100, pitch.mean(), pitch.std(),
        left.mean(), left.std(), right.mean(), right.std(), center,
        max(map(_count_runs, hrule_rows)) / 10, np.mean(hrule_rows), max(map(_count_runs, vrule_cols)) / 10, np.mean(vrule_cols),
        solid.mean(), column_gaps / 10,
    ], dtype=np.float32)


def image_feature_matrix(images) -> np.ndarray:
    """image_features for many pages, stacked (n, len(IMAGE_FEATURES))."""
    return np.stack([image_features(image) for image in images]) if len(images) else np.zeros((0, len(IMAGE_FEATURES)), np.float32)


def _long_runs(ink: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Per row (axis=1) or column (axis=0): does it hold an unbroken ink run of `length`?
    Ink is first spread by 2 pixels across the run direction, so a skewed rule still counts."""
    across = 0 if axis == 1 else 1
    ink = np.maximum.reduce([np.roll(ink, shift, axis=across) for shift in (-2, -1, 0, 1, 2)])
    padded = np.concatenate([np.zeros_like(ink[:1] if axis == 0 else ink[:, :1], dtype=np.int32), np.cumsum(ink, axis=axis, dtype=np.int32)], axis=axis)
    if axis == 1:
        window = padded[:, length:] - padded[:, :-length]
        return (window >= length).any(axis=1)
    window = padded[length:] - padded[:-length]
    return (window >= length).any(axis=0)


def _count_runs(flags: np.ndarray) -> int:
    """Number of runs of True."""
    return int(flags[0]) + int((flags[1:] & ~flags[:-1]).sum()) if len(flags) else 0
