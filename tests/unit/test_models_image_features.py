"""models/image_features.py: one shared function, fast, responsive to layout, robust to scan defects."""

import io
import random
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

from models.image_features import IMAGE_FEATURES, image_feature_matrix, image_features
from models.scans import degrade


def page(lines=0, table_rows=0, size=(600, 850)):
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    y = 60
    for i in range(lines):
        draw.text((50, y), "Lorem ipsum dolor sit amet, consectetur adipiscing elit " * 2, fill=0)
        y += 18
    for i in range(table_rows + 1 if table_rows else 0):
        draw.line((40, y, 560, y), fill=0, width=2)
        y += 24
    return image


def named(vector):
    return dict(zip(IMAGE_FEATURES, vector))


def png(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_bytes_pil_and_rgb_give_the_same_float32_vector():
    image = page(lines=10)
    from_bytes, from_pil, from_rgb = image_features(png(image)), image_features(image), image_features(image.convert("RGB"))
    assert from_bytes.dtype == np.float32 and from_bytes.shape == (len(IMAGE_FEATURES),)
    np.testing.assert_array_equal(from_bytes, from_pil)
    np.testing.assert_allclose(from_rgb, from_pil, atol=1e-6)
    assert image_feature_matrix([image, image]).shape == (2, len(IMAGE_FEATURES))


def test_blank_page_has_no_ink_even_with_uneven_light():
    gradient = np.tile(np.linspace(150, 250, 600, dtype=np.float32), (850, 1)).astype(np.uint8)
    for blank in (page(), Image.fromarray(gradient)):
        f = named(image_features(blank))
        assert f["ink_share"] < 0.01 and f["text_lines_max"] == 0 and f["hrules"] == 0


def test_text_lines_and_ruled_lines_are_counted():
    few, many = named(image_features(page(lines=8))), named(image_features(page(lines=30)))
    assert 0.05 <= few["text_lines_max"] * 100 <= 12 < many["text_lines_max"] * 100
    table = named(image_features(page(lines=3, table_rows=8)))
    assert table["hrules"] * 10 >= 7 and few["hrules"] == 0


@pytest.mark.parametrize("seed", range(4))
def test_features_survive_scan_defects(seed):
    clean = page(lines=20, table_rows=5)
    scanned = Image.open(io.BytesIO(degrade(random.Random(seed), clean)))  # skew, blur, noise, light, JPEG
    a, b = named(image_features(clean)), named(image_features(scanned))
    assert a["hrules"] * 10 == pytest.approx(6)
    assert abs(a["hrules"] - b["hrules"]) * 10 <= 1
    assert abs(a["text_lines_max"] - b["text_lines_max"]) * 100 <= 6
    assert abs(a["ink_header"] - b["ink_header"]) < 0.05


def test_fast_enough_for_streaming():
    data = png(page(lines=25, table_rows=6))
    image_features(data)
    start = time.perf_counter()
    for _ in range(20):
        image_features(data)
    per_image_ms = (time.perf_counter() - start) / 20 * 1000
    assert per_image_ms < 30, f"{per_image_ms:.1f} ms per page"  # about 6 ms when the machine is idle


def test_unreadable_bytes_raise():
    with pytest.raises(Exception):
        image_features(b"not an image")
