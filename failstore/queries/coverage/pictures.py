"""Pictures of coverage cases: an image with its saliency region and ground truth drawn on it.

For people, not for scores: the image's part the map covers (its window) is drawn at
``scale`` x the map's size, the saliency region S tinted red, the ground-truth region G
outlined in green, their overlap in yellow; beside it, the map itself (|value|, grey scale).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from failstore.queries.coverage.scores import saliency_region
from failstore.queries.saliency.geometry import Frame, truth_region
from failstore.store import Store, equals, literal


def draw_case(
    image_path: str,
    saliency: np.ndarray,
    truth: np.ndarray,
    frame: Frame,
    out: Path,
    *,
    rule: str = "std",
    top_percent: float = 10.0,
    scale: int = 4,
) -> Path:
    """Write ``out`` (PNG): the window of the image with S, G and S∩G drawn, and the map."""
    from PIL import Image

    h, w = saliency.shape
    size = (w * scale, h * scale)
    with Image.open(image_path) as im:
        window = (
            im.convert("RGB")
            .crop((round(frame.x0), round(frame.y0), round(frame.x1), round(frame.y1)))
            .resize(size)
        )
    base = np.asarray(window, dtype=np.float32)
    s = saliency_region(saliency[None].astype(np.float32), rule=rule, top_percent=top_percent)[0]
    up = np.kron
    s_big = up(s, np.ones((scale, scale))).astype(bool)
    g_big = up(truth, np.ones((scale, scale))).astype(bool)
    edge = g_big & ~(
        np.roll(g_big, 1, 0) & np.roll(g_big, -1, 0) & np.roll(g_big, 1, 1) & np.roll(g_big, -1, 1)
    )
    tint = base.copy()
    tint[s_big] = 0.5 * tint[s_big] + 0.5 * np.array([230, 40, 40])
    tint[s_big & g_big] = 0.5 * base[s_big & g_big] + 0.5 * np.array([240, 220, 40])
    tint[edge] = [40, 220, 60]
    mag = np.abs(saliency)
    mag = mag / mag.max() if mag.max() > 0 else mag
    heat = np.repeat(up(mag, np.ones((scale, scale)))[:, :, None] * 255, 3, axis=2)
    canvas = np.concatenate([tint, np.full((size[1], 4, 3), 255.0), heat], axis=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(out)
    return out


def case_pictures(
    store: Store, rows: pa.Table, directory: Path, *, rule: str = "std", top_percent: float = 10.0
) -> list[dict[str, Any]]:
    """One picture per case present in ``rows`` (coverage rows of one run), of the case's image
    with the highest soft SC for the aligned cases and the lowest otherwise (the clearest
    example), written as ``directory/<case>.png``; returns (case, image_id, path) rows."""


    out = []
    data = rows.to_pylist()
    cases = sorted({r["case"] for r in data if r["case"] != "undefined"})
    for case in cases:
        members = [r for r in data if r["case"] == case and r["soft_sc"] == r["soft_sc"]]
        if not members:
            continue
        high = case in ("human aligned", "confuser", "sufficient subset", "insufficient subset")
        pick = sorted(
            members, key=lambda r: (-r["soft_sc"] if high else r["soft_sc"], r["image_id"])
        )[0]
        where = " AND ".join(
            [
                equals("model", pick["model"]),
                equals("method", pick["method"]),
                f"settings = {literal(pick['settings'])}",
                equals("explain", pick["explain"]),
                equals("image_id", pick["image_id"]),
            ]
        )
        m = store.read(
            "saliency_maps", ["height", "width", "map", "x0", "y0", "x1", "y1"], filter=where
        ).to_pylist()[0]
        img = store.read(
            "images", ["uri", "boxes", "mask"], filter=equals("image_id", pick["image_id"])
        ).to_pylist()[0]
        frame = Frame(m["x0"], m["y0"], m["x1"], m["y1"], m["height"], m["width"])
        truth, _ = truth_region(img["mask"], img["boxes"], frame)
        sal = np.asarray(m["map"], dtype=np.float32).reshape(m["height"], m["width"])
        path = draw_case(
            img["uri"],
            sal,
            truth,
            frame,
            directory / f"{case.replace(' ', '_')}.png",
            rule=rule,
            top_percent=top_percent,
        )
        out.append({"case": case, "image_id": pick["image_id"], "path": str(path)})
    return out
