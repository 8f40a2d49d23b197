"""Independent references shared by the model tests."""

import math


def bilinear_reference(img, x, y):
    """Value of the (H, W) map at normalized (x, y), pixel centers at (j + 0.5) / W, zeros outside."""
    h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    total = 0.0
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                total += wy * wx * float(img[yy, xx])
    return total
