"""models/gallery_views.py: which views a gallery image is embedded as, and their mean."""
from __future__ import annotations

import numpy as np
import pytest

from models.gallery_views import gallery_views, mean_embedding


def _image(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)


@pytest.mark.parametrize(("shape", "augment", "views", "view_shape"), [
    ((300, 400), "none", 1, (300, 400)),    # PP-ShiTu: the image alone
    ((300, 400), "grid9", 10, (231, 308)),  # the image and nine crops keeping 0.77 of each side
    ((112, 200), "grid9", 10, (86, 154)),   # short side exactly at the minimum: still cropped
    ((78, 31), "grid9", 1, (78, 31)),       # a pedestrian's box: too small to crop, alone
])
def test_gallery_views(shape, augment, views, view_shape) -> None:
    image = _image(*shape)
    out = gallery_views(image, augment)
    assert len(out) == views
    assert out[0] is image
    assert all(v.shape[:2] == view_shape for v in out[1:]) or views == 1
    if views == 10:
        h, w = shape
        # corners first and last: the top-left crop starts at (0, 0), the bottom-right one ends at (h, w)
        assert np.array_equal(out[1][0, 0], image[0, 0])
        assert np.array_equal(out[-1][-1, -1], image[h - 1, w - 1])
    with pytest.raises(ValueError, match="gallery augment"):
        gallery_views(image, "flip")  # type: ignore[arg-type]


def test_mean_embedding_is_the_normalised_mean() -> None:
    views = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(mean_embedding(views), [np.sqrt(0.5), np.sqrt(0.5)], rtol=1e-6)
    with pytest.raises(ValueError, match="V >= 1"):
        mean_embedding(np.zeros((0, 4), np.float32))
