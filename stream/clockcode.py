"""A wall-clock time written into the pixels of a frame, and read back after lossy compression.

The test RTSP server (``scripts/rtsp_server.py``) stamps the Unix time in milliseconds into the top rows of
every ``/clock`` frame just before the encoder gets it; a client that decodes the stamp from the pixels it
received measures end-to-end delay (encode + packetise + network + demux + decode) without trusting any
timestamp our own code attaches.

Layout: one row of ``CELLS`` equal cells spanning the full width, ``clock_rows(width)`` pixels tall, each cell
black (0) or white (255). Cells are wide (10 px at 640, 20 px at 1280) and only their centres are read, so
H.264 ringing at the edges does not matter; the layout is in fractions of the width, so a rescaled frame still
decodes. Bits, most significant first:

- 8 marker bits ``10110010``: four white and four black cells that also calibrate the threshold;
- 48 bits of milliseconds (good until the year 10889);
- 8 bits of CRC-8 (polynomial 0x07) over the 6 big-endian bytes of the milliseconds.

Pure numpy (the server runs it under Debian's Python, the client under the venv's).
"""
from __future__ import annotations

import numpy as np

CELLS = 64
MARKER_BITS = (1, 0, 1, 1, 0, 0, 1, 0)
MS_BITS = 48
CRC_BITS = 8
MIN_WIDTH = 2 * CELLS  # two pixels a cell at least; the stamps we draw use 640 or more

# A frame whose white and black marker cells differ by less than this (0..255) carries no stamp.
_MIN_CONTRAST = 96.0
# Every cell must sit at least this share of the contrast away from the threshold, else the read is unsure
# (a frame blended by the encoder between two stamps) and rejected rather than guessed.
_MIN_MARGIN_SHARE = 0.2


def clock_rows(width: int) -> int:
    """Height in pixels of the stamp drawn across a frame ``width`` pixels wide (even, so that it covers
    whole chroma rows of a 4:2:0 picture): 16 at 640, 32 at 1280."""
    return 2 * max(4, int(round(width / 80.0)))


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _bits(ms: int) -> list[int]:
    payload = ms.to_bytes(MS_BITS // 8, "big")
    crc = _crc8(payload)
    ms_bits = [(ms >> (MS_BITS - 1 - i)) & 1 for i in range(MS_BITS)]
    crc_bits = [(crc >> (CRC_BITS - 1 - i)) & 1 for i in range(CRC_BITS)]
    return list(MARKER_BITS) + ms_bits + crc_bits


def _cell_edges(width: int) -> np.ndarray:
    return np.round(np.arange(CELLS + 1) * (width / CELLS)).astype(int)


def encode_clock(ms: int, width: int) -> np.ndarray:
    """The stamp for ``ms`` (Unix milliseconds) as a grey ``(clock_rows(width), width)`` uint8 strip of 0/255,
    to be written over the top rows of a frame (the Y plane of a YUV frame, with neutral chroma below it)."""
    if not isinstance(ms, (int, np.integer)) or isinstance(ms, bool):
        raise TypeError(f"ms must be an int, got {type(ms).__name__}")
    ms = int(ms)
    if not 0 <= ms < 1 << MS_BITS:
        raise ValueError(f"ms must be in [0, 2**{MS_BITS}), got {ms}")
    if width < MIN_WIDTH:
        raise ValueError(f"width must be >= {MIN_WIDTH} pixels for {CELLS} cells, got {width}")
    row = np.zeros(width, dtype=np.uint8)
    edges = _cell_edges(width)
    for i, bit in enumerate(_bits(ms)):
        if bit:
            row[edges[i]:edges[i + 1]] = 255
    return np.repeat(row[np.newaxis, :], clock_rows(width), axis=0)


def decode_clock(image_bgr: np.ndarray) -> int | None:
    """The milliseconds stamped at the top of ``image_bgr`` (HxWx3 BGR or HxW grey, uint8), or None when the
    frame carries no readable stamp (no marker, too little contrast, an unsure cell or a bad checksum)."""
    image = np.asarray(image_bgr)
    if image.ndim not in (2, 3) or image.shape[1] < MIN_WIDTH:
        return None
    height, width = image.shape[:2]
    rows = clock_rows(width)
    if height < rows:
        return None
    band = image[rows // 4: rows - rows // 4].astype(np.float32)
    grey = band.mean(axis=2) if band.ndim == 3 else band
    edges = np.arange(CELLS + 1) * (width / CELLS)
    values = np.empty(CELLS, dtype=np.float32)
    for i in range(CELLS):
        # The middle half of each cell: away from the edges where compression rings.
        x0 = int(round(edges[i] + 0.25 * (edges[i + 1] - edges[i])))
        x1 = max(x0 + 1, int(round(edges[i] + 0.75 * (edges[i + 1] - edges[i]))))
        values[i] = grey[:, x0:x1].mean()
    marker = np.array(MARKER_BITS, dtype=bool)
    head = values[: len(MARKER_BITS)]
    white, black = head[marker], head[~marker]
    contrast = float(white.mean() - black.mean())
    if contrast < _MIN_CONTRAST or white.min() <= black.max():
        return None
    threshold = float(white.mean() + black.mean()) / 2.0
    if np.abs(values - threshold).min() < _MIN_MARGIN_SHARE * contrast:
        return None
    bits = (values > threshold).astype(int)
    if tuple(bits[: len(MARKER_BITS)]) != MARKER_BITS:
        return None
    ms = 0
    for bit in bits[len(MARKER_BITS): len(MARKER_BITS) + MS_BITS]:
        ms = (ms << 1) | int(bit)
    crc = 0
    for bit in bits[len(MARKER_BITS) + MS_BITS:]:
        crc = (crc << 1) | int(bit)
    if crc != _crc8(ms.to_bytes(MS_BITS // 8, "big")):
        return None
    return ms
