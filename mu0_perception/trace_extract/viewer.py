"""Pictures of TraceExtract output: traces over frames as PNG (one sample / frame) or MP4.

`python -m mu0_perception.trace_extract.viewer DATASET_DIR --out out.mp4 [--samples 0:50]`
draws each stored sample's future traces (moving points bold) on its image.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from mu0_core.query_geometry import normalized_to_pixels
from mu0_core.trace_dataset import DatasetReader

_PALETTE = np.array([(255, 205, 0), (0, 200, 124), (0, 92, 180), (226, 26, 91), (150, 111, 51),
                     (255, 110, 36), (124, 0, 160), (128, 128, 128), (0, 180, 216), (144, 238, 144),
                     (255, 69, 0), (147, 112, 219)], np.uint8)


def entity_color(e: int) -> tuple:
    return tuple(int(c) for c in _PALETTE[int(e) % len(_PALETTE)])


def draw_traces(image: np.ndarray, traces_px: np.ndarray, valid: np.ndarray, entity_id=None,
                moving=None, scale: int = 2, points: np.ndarray | None = None) -> np.ndarray:
    """Polylines of traces (N, T, 2) pixels over an RGB image (upscaled by `scale` for legibility).
    The first sample of each trace gets a dot; moving traces are drawn thicker."""
    img = cv2.resize(image, (image.shape[1] * scale, image.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    img = np.ascontiguousarray(img)
    N = len(traces_px)
    ent = np.zeros(N, int) if entity_id is None else np.asarray(entity_id)
    mov = np.ones(N, bool) if moving is None else np.asarray(moving, bool)
    for n in np.argsort(mov):  # moving on top
        ok = valid[n] & np.isfinite(traces_px[n]).all(-1)
        if not ok.any():
            continue
        pts = ((traces_px[n][ok] + 0.5) * scale - 0.5).round().astype(np.int32)
        col = entity_color(ent[n]) if mov[n] else (200, 200, 200)
        if len(pts) > 1:
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, col, 2 if mov[n] else 1, cv2.LINE_AA)
        cv2.circle(img, tuple(int(x) for x in pts[0]), 3 if mov[n] else 2, col, -1, cv2.LINE_AA)
    if points is not None:  # e.g. ground truth projected
        for p in np.asarray(points).reshape(-1, 2):
            if np.isfinite(p).all():
                q = ((p + 0.5) * scale - 0.5).round().astype(int)
                cv2.drawMarker(img, (int(q[0]), int(q[1])), (255, 0, 255), cv2.MARKER_CROSS, 12, 2)
    return img


def render_tracks_video(colors: np.ndarray, uv: np.ndarray, valid: np.ndarray, entity_id, moving,
                        tail: int = 8, scale: int = 2) -> list:
    """Frames with each track's last `tail` positions; colors (T,H,W,3), uv (T,N,2), valid (T,N)."""
    out = []
    for t in range(len(colors)):
        a = max(0, t - tail)
        tr = np.moveaxis(uv[a:t + 1], 0, 1)[:, ::-1]
        vv = valid[a:t + 1].T[:, ::-1]
        show = valid[t]
        out.append(draw_traces(colors[t], tr[show], vv[show], np.asarray(entity_id)[show],
                               np.asarray(moving)[show], scale))
    return out


def write_video(frames: list, path, fps: float = 10.0) -> Path:
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".png":
        imageio.imwrite(path, frames[0])
    else:
        imageio.mimwrite(path, frames, fps=fps, macro_block_size=1)
    return path


def dataset_sample_images(dataset_dir, samples=None, scale: int = 2) -> list:
    """One picture per dataset sample: its image with the future traces (reference camera)."""
    ds = DatasetReader(dataset_dir)
    idx = range(len(ds)) if samples is None else samples
    frames = []
    for i in idx:
        s = ds[i]
        H, W = s["color"].shape[:2]
        m = s["query_mask"]
        fut = s["future_uvz"][m]
        px = normalized_to_pixels(fut[..., :2], W, H)
        img = draw_traces(s["color"], px, s["future_valid"][m], s["entity_id"][m], s["moving"][m], scale)
        cv2.putText(img, ds.captions(i)[-1][:80], (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                    cv2.LINE_AA)
        frames.append(img)
    return frames


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mu0 view-dataset", description="Draw a TraceExtract dataset's traces over its images.")
    ap.add_argument("dataset", help="dataset directory (index.json + shards)")
    ap.add_argument("--out", required=True, help="output .mp4 (all chosen samples) or .png (first)")
    ap.add_argument("--samples", default=None, help="range a:b of sample indices")
    ap.add_argument("--fps", type=float, default=5.0)
    args = ap.parse_args(argv)
    sel = None
    if args.samples:
        a, b = (int(x) for x in args.samples.split(":"))
        sel = range(a, b)
    frames = dataset_sample_images(args.dataset, sel)
    if not frames:
        print("no samples")
        return 1
    print(write_video(frames, args.out, args.fps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
