"""The face pipeline: detect faces and 5 landmarks, align each to the model's crop, age the crops, paste them
back with a feathered mask; for video, track faces and overlap decode, model and encode.

    from pyagingrt.pipeline import FacePipeline, age_video
    aged = FacePipeline(engine).age(photo, target_age=70)       # uint8 RGB [H, W, 3] in and out
    age_video(engine, Path("in.mp4"), Path("out.mp4"), 70)     # what `agingrt video` runs

Modules: detect (interface), mtcnn (the detector), align (transforms), warp (device-side crop and paste),
faces (photos), crops (raw photos -> a model's training crops, ``agingrt align``), track (video face tracks),
video (the threaded video pipeline), media (safe reading, atomic writing), sheet (age-progression sheets).
OpenCV and PyAV are imported only when a detector or video is used.
"""

from __future__ import annotations

from .align import Alignment, alignment_for
from .detect import Face, FaceDetector, get_detector
from .faces import FacePipeline
from .video import VideoSettings, age_video

__all__ = [
    "Alignment",
    "Face",
    "FaceDetector",
    "FacePipeline",
    "VideoSettings",
    "age_video",
    "alignment_for",
    "get_detector",
]
