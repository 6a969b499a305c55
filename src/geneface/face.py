"""Face tracking (MediaPipe face mesh, 478 points) and the mesh's landmark groups."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NUM_MESH_POINTS = 478

# iBUG 68-point layout picked from the mesh (subject's right side first, as iBUG):
# jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, outer lips 48-59, inner lips 60-67.
LANDMARKS_68 = np.array([
    234, 93, 132, 58, 172, 136, 150, 176, 152, 400, 379, 365, 397, 288, 361, 323, 454,  # jaw
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,  # brows
    168, 197, 5, 4, 75, 97, 2, 326, 305,  # nose
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,  # eyes
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,  # outer lips
    78, 81, 13, 311, 308, 402, 14, 178,  # inner lips
])

# Closed contours (in order) of the mesh, as indices into the 478 points.
FACE_OVAL = np.array([10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
                      400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21,
                      54, 103, 67, 109])
LIPS_OUTER = np.array([61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291,
                       375, 321, 405, 314, 17, 84, 181, 91, 146])
LIPS_INNER = np.array([78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308,
                       324, 318, 402, 317, 14, 87, 178, 88, 95])
RIGHT_EYE = np.array([33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7])
LEFT_EYE = np.array([263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249])
RIGHT_EYE_CORNERS = (33, 133)
LEFT_EYE_CORNERS = (263, 362)
UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
CHIN = 152
NOSE_TIP = 1
FOREHEAD = 10


def eye_centers(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the right and left eye, each ``[..., D]``, from mesh points ``[..., 478, D]``."""
    right = points[..., list(RIGHT_EYE_CORNERS), :].mean(-2)
    left = points[..., list(LEFT_EYE_CORNERS), :].mean(-2)
    return right, left


def interocular(points: np.ndarray) -> np.ndarray:
    """Distance between the eye centres ``[...]`` of mesh points ``[..., 478, D]``."""
    right, left = eye_centers(points)
    return np.linalg.norm(left - right, axis=-1)


def mouth_opening(points: np.ndarray) -> np.ndarray:
    """Inner-lip gap over inter-ocular distance ``[...]`` from mesh points ``[..., 478, D]``."""
    gap = np.linalg.norm(points[..., LOWER_INNER_LIP, :] - points[..., UPPER_INNER_LIP, :], axis=-1)
    return gap / interocular(points)


def mesh_triangles() -> np.ndarray:
    """Triangles ``[F, 3]`` of MediaPipe's face tessellation (3-cycles of its edge list)."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    adjacency: dict[int, set[int]] = {}
    for a, b in FACEMESH_TESSELATION:
        adjacency.setdefault(a, set()).add(b)
        adjacency.setdefault(b, set()).add(a)
    triangles = set()
    for a, neighbours in adjacency.items():
        for b in neighbours:
            for c in neighbours & adjacency[b]:
                triangles.add(tuple(sorted((a, b, c))))
    return np.array(sorted(triangles), dtype=np.int64)


@contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence MediaPipe's C++ start-up warnings (written to fd 2 before its logging is configured)."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _start(factory):
    """Build a MediaPipe graph and run it once on a blank image, with its native start-up noise silenced."""
    with _quiet_native_stderr():
        graph = factory()
        graph.process(np.zeros((64, 64, 3), np.uint8))
    return graph


class FaceMesh:
    """MediaPipe face mesh returning pixel-unit points ``[478, 3]`` (x, y in pixels; z scaled like x).

    ``video=True`` tracks across consecutive frames (faster, steadier); ``video=False`` detects anew
    on every image. Use as a context manager to free the graph.
    """

    def __init__(self, video: bool = True, max_faces: int = 1, min_confidence: float = 0.5) -> None:
        import mediapipe as mp

        self._seen_face = False
        self._mesh = _start(lambda: mp.solutions.face_mesh.FaceMesh(
            static_image_mode=not video, max_num_faces=max_faces, refine_landmarks=True,
            min_detection_confidence=min_confidence, min_tracking_confidence=min_confidence))

    def __call__(self, rgb: np.ndarray) -> list[np.ndarray]:
        """All faces found in an RGB image ``[H, W, 3] uint8``, each ``[478, 3]`` float32."""
        h, w = rgb.shape[:2]
        if self._seen_face:
            result = self._mesh.process(np.ascontiguousarray(rgb))
        else:  # the first landmark pass prints a native warning
            with _quiet_native_stderr():
                result = self._mesh.process(np.ascontiguousarray(rgb))
            self._seen_face = bool(result.multi_face_landmarks)
        faces = []
        for face in result.multi_face_landmarks or []:
            pts = np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float32)
            faces.append(pts * np.array([w, h, w], dtype=np.float32))
        return faces

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> "FaceMesh":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FaceDetector:
    """MediaPipe face detector: boxes ``[N, 4]`` (x0, y0, x1, y1 in pixels) and scores ``[N]``."""

    def __init__(self, min_confidence: float = 0.5, full_range: bool = True) -> None:
        import mediapipe as mp

        self._det = _start(lambda: mp.solutions.face_detection.FaceDetection(
            model_selection=1 if full_range else 0, min_detection_confidence=min_confidence))

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = rgb.shape[:2]
        result = self._det.process(np.ascontiguousarray(rgb))
        boxes, scores = [], []
        for d in result.detections or []:
            b = d.location_data.relative_bounding_box
            boxes.append((b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h))
            scores.append(d.score[0])
        return np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(scores, dtype=np.float32)

    def close(self) -> None:
        self._det.close()

    def __enter__(self) -> "FaceDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def selfie_segmenter() -> Iterator:
    """Yield a function mapping an RGB image ``[H, W, 3]`` to a soft person mask ``[H, W]`` in [0, 1]."""
    import mediapipe as mp

    seg = _start(lambda: mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0))
    try:
        yield lambda rgb: seg.process(np.ascontiguousarray(rgb)).segmentation_mask.astype(np.float32)
    finally:
        seg.close()
