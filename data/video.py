"""Video and image IO shared by the whole project: decord (where installed) or PyAV for reading, PyAV for writing.

Readers accept a path, raw bytes or a binary file object (shards hand us mp4 bytes) and raise errors that name the file.
Writers are atomic (marionet.atomic: a temp file in the same folder, moved into place) and refuse to replace an
existing file unless told to.
"""
from __future__ import annotations

from collections import OrderedDict

import io
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np

from ..atomic import atomic_path


class VideoError(ValueError):
    """A video that cannot be used: missing, not a video, or without frames."""


def _describe(source, name: str | None = None) -> str:
    if name:
        return str(name)
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"<{type(source).__name__} video data>"


class Frames(np.ndarray):
    """A uint8 frame array that also answers decord's `.asnumpy()`, so code written against decord keeps working."""

    def asnumpy(self) -> np.ndarray:
        return np.asarray(self)


class VideoReader:
    """Random access to a video's frames: decord, with a PyAV fallback for the frame sizes decord mis-decodes and
    for machines without decord.

    decord 0.6 returns padded, 4-channel garbage for some widths (48 px, for example) and then fails in get_batch;
    such videos are detected on the first read and decoded with PyAV from then on (sequentially: slower, but correct).
    Mirrors the parts of decord.VideoReader the project uses: len(), [i], get_batch(indices), get_avg_fps().
    """

    def __init__(self, reader, data, label: str):
        self._reader, self._data, self.name = reader, data, label
        self._use_av = False  # switched on by the first decord batch that fails or comes back malformed
        self._shape = None

    @property
    def height(self) -> int:
        return self._frame_shape()[0]

    @property
    def width(self) -> int:
        return self._frame_shape()[1]

    def _frame_shape(self) -> tuple[int, int]:
        if self._shape is None:
            self._shape = tuple(self.get_batch([0]).shape[1:3])
        return self._shape

    def __len__(self) -> int:
        return len(self._reader)

    def get_avg_fps(self) -> float:
        return float(self._reader.get_avg_fps())

    def __getitem__(self, index: int) -> Frames:
        return self.get_batch([index])[0]

    def get_batch(self, indices) -> Frames:
        count = len(self)
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not -count <= i < count]
        if bad:
            raise VideoError(f"{self.name}: frame index {bad[0]} out of range for {count} frames")
        indices = [i % count for i in indices]
        if not indices:
            return np.zeros((0, self.height, self.width, 3), np.uint8).view(Frames)
        if not self._use_av:
            try:
                frames = self._reader.get_batch(indices).asnumpy()
                if frames.ndim == 4 and frames.shape[3] == 3:
                    return np.ascontiguousarray(frames, dtype=np.uint8).view(Frames)
            except Exception:
                pass
            self._use_av = True
        return self._decode_with_av(indices).view(Frames)

    def _decode_with_av(self, indices: list[int]) -> np.ndarray:
        import av

        wanted = set(indices)
        found = {}
        source = io.BytesIO(self._data) if isinstance(self._data, bytes) else str(self._data)
        try:
            with av.open(source) as container:
                for number, frame in enumerate(container.decode(video=0)):
                    if number in wanted:
                        found[number] = frame.to_ndarray(format="rgb24")
                    if len(found) == len(wanted):
                        break
        except Exception as error:
            raise VideoError(f"{self.name}: decoding failed ({str(error).splitlines()[0][:160]})") from None
        missing = wanted - set(found)
        if missing:
            raise VideoError(f"{self.name}: decoding failed, frame {min(missing)} could not be decoded")
        return np.stack([found[i] for i in indices])


class _AVIndex:
    """Frame count and frame rate of a video from PyAV, for machines without decord (its wheels are x86-64 only);
    `VideoReader` then decodes every batch with PyAV."""

    def __init__(self, source, label: str):
        import av

        try:
            with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
                if not container.streams.video:
                    raise VideoError(f"{label}: no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                self.fps = float(rate) if rate else 0.0
                self.count = sum(1 for packet in container.demux(stream) if packet.size > 0)
        except VideoError:
            raise
        except Exception as error:  # noqa: BLE001 - PyAV raises many kinds; all mean "not a readable video"
            raise VideoError(f"{label}: cannot be read as a video ({str(error).splitlines()[0][:160]})") from None

    def __len__(self) -> int:
        return self.count

    def get_avg_fps(self) -> float:
        return self.fps


def open_video(source, name: str | None = None) -> VideoReader:
    """A VideoReader (decord-like) for a path, bytes or binary file object, with errors that name the file."""
    label = _describe(source, name)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise VideoError(f"{label}: video file not found")
        if not path.is_file():
            raise VideoError(f"{label}: not a file")
        if path.stat().st_size == 0:
            raise VideoError(f"{label}: empty file, not a video")
        data, target = path, str(path)
    else:
        data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else source.read()
        if len(data) == 0:
            raise VideoError(f"{label}: empty data, not a video")
        target = io.BytesIO(data)
    try:
        import decord
    except ImportError:  # optional (no wheels off x86-64): PyAV reads everything, sequentially
        decord = None
    if decord is None:
        reader = VideoReader(_AVIndex(data, label), data, label)
        reader._use_av = True
    else:
        try:
            reader = VideoReader(decord.VideoReader(target, ctx=decord.cpu(0), num_threads=1), data, label)
        except Exception as error:  # decord raises DECORDError/RuntimeError with C++ noise in the message
            raise VideoError(f"{label}: cannot be read as a video ({str(error).splitlines()[0][:160]})") from None
    if len(reader) == 0:
        raise VideoError(f"{label}: video has zero frames")
    return reader


class DecodedVideo:
    """A whole decoded video held in memory, read like a `VideoReader` (len, get_batch, height, width)."""

    def __init__(self, frames: np.ndarray, name: str):
        self.frames, self.name = frames, name
        self.height, self.width = frames.shape[1:3]

    def __len__(self) -> int:
        return len(self.frames)

    def get_batch(self, indices) -> np.ndarray:
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not -len(self) <= i < len(self)]
        if bad:
            raise VideoError(f"{self.name}: frame index {bad[0]} out of range for {len(self)} frames")
        return self.frames[indices]


class DecodedCache:
    """Decoded videos kept in memory up to `megabytes` (least recently used out first; 0 keeps nothing).

    For data sets small enough to fit (the demo's synthetic puppets: ~20 MB): every sample otherwise opens and seeks
    its files again, which was a third of a stage-1 step on 64 px frames. The frames are the same either way.
    """

    def __init__(self, megabytes: float = 0):
        self.budget = int(megabytes * 2 ** 20)
        self.videos: OrderedDict = OrderedDict()
        self.bytes = 0

    def get(self, path):
        """A `DecodedVideo` of `path`, or `path` itself when caching is off or the video alone exceeds the budget."""
        if self.budget <= 0:
            return path
        key = str(path)
        if key in self.videos:
            self.videos.move_to_end(key)
            return self.videos[key]
        video = DecodedVideo(read_video(path), key)
        if video.frames.nbytes > self.budget:
            return video
        self.videos[key] = video
        self.bytes += video.frames.nbytes
        while self.bytes > self.budget:
            _, dropped = self.videos.popitem(last=False)
            self.bytes -= dropped.frames.nbytes
        return video


def read_video(source, indices=None, name: str | None = None) -> np.ndarray:
    """Decode frames as uint8 (F, H, W, 3); `indices` picks frames (random access), None reads them all."""
    reader = open_video(source, name)
    indices = range(len(reader)) if indices is None else indices
    return np.asarray(reader.get_batch(list(indices)))


def video_info(source, name: str | None = None) -> tuple[int, float, int, int]:
    """(num_frames, fps, width, height) of a video."""
    reader = open_video(source, name)
    return len(reader), reader.get_avg_fps(), int(reader.width), int(reader.height)


def _as_frame(frame, label: str) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"{label}: frames must be (H, W, 3) RGB arrays, got shape {frame.shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"{label}: frames must be uint8, got {frame.dtype}")
    return frame


def write_video(path, frames: Iterable[np.ndarray], fps: float, crf: int = 18, overwrite: bool = False,
                keyframe_interval: int | None = None, preset: str = "medium", lossless: bool = False,
                exact: bool = False) -> Path:
    """Write uint8 (H, W, 3) frames (an array or any iterable, streamed) as an H.264 yuv420p mp4, atomically.

    Encoded by PyAV's bundled FFmpeg (libx264), so no separate ffmpeg binary is needed. Keyframes come every
    `keyframe_interval` frames (default: 2 s of video): training reads random frames, and decoding one costs up to a
    whole keyframe interval, so this is ~3x faster to sample than x264's default of 250 for ~25% more bytes.

    `preset` is x264's speed/size trade-off ("veryfast" encodes several times faster, for larger files).
    lossless=True encodes with x264's lossless mode (qp 0; several times larger): the decoded frames are then the
    written ones after the yuv420p conversion, exactly, on every run. Lossy encodes of identical frames are not
    always byte-identical from run to run (x264's decisions vary; seen on tiny frames here), so a lossless file is
    what to compare bit for bit.
    exact=True stores the RGB frames themselves (libx264rgb, qp 0: no colour conversion, no chroma subsampling), so
    every reader decodes exactly the given frames on any machine; for data sets (the synthetic puppets), not for
    viewing: browsers and many players only play yuv420p.
    yuv420p needs even sizes: an odd width or height is padded by repeating the last column/row, so the file is
    one pixel larger on that side. Refuses to replace an existing file unless overwrite=True. Returns the path.
    """
    import av

    path = Path(path)
    rate = Fraction(float(fps)).limit_denominator(1001)
    gop = keyframe_interval or max(1, round(2 * float(fps)))
    with atomic_path(path, overwrite) as temp:
        container, stream, size, count = av.open(temp, mode="w", format="mp4"), None, None, 0
        try:
            for frame in frames:
                frame = _as_frame(frame, str(path))
                pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
                if pad_h or pad_w:
                    frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
                if stream is None:
                    size = (frame.shape[1], frame.shape[0])
                    stream = container.add_stream("libx264rgb" if exact else "libx264", rate=rate)
                    stream.width, stream.height = size
                    stream.pix_fmt = "rgb24" if exact else "yuv420p"
                    stream.codec_context.gop_size = int(gop)
                    stream.options = {"qp": "0", "preset": preset} if lossless or exact else {"crf": str(int(crf)),
                                                                                             "preset": preset}
                elif (frame.shape[1], frame.shape[0]) != size:
                    raise ValueError(f"{path}: frame {count} has size {frame.shape[1]}x{frame.shape[0]}, "
                                     f"expected {size[0]}x{size[1]}")
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                picture.pts = count
                container.mux(stream.encode(picture))
                count += 1
            if stream is None:
                raise ValueError(f"{path}: no frames to write")
            container.mux(stream.encode())  # flush the encoder
        finally:
            container.close()
    return path


def write_gif(path, frames: Iterable[np.ndarray], fps: float, overwrite: bool = False) -> Path:
    """Write uint8 (H, W, 3) frames as a looping GIF, atomically."""
    from PIL import Image

    path = Path(path)
    images = [Image.fromarray(_as_frame(frame, str(path))) for frame in frames]
    if not images:
        raise ValueError(f"{path}: no frames to write")
    with atomic_path(path, overwrite) as temp:
        images[0].save(temp, format="GIF", save_all=True, append_images=images[1:],
                       duration=max(1, round(1000 / float(fps))), loop=0)
    return path


def load_image_rgb(path) -> np.ndarray:
    """Load any common image as uint8 (H, W, 3) RGB.

    Grayscale is replicated to three channels; 16-bit and float images are rescaled to 8 bits by their type's range
    (16-bit: /257; float: assumed in [0, 1]); palette images are expanded; alpha (RGBA, LA, transparent palette) is
    composited on white, so transparent backgrounds become white rather than black. EXIF rotation is applied.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: image file not found")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"{path}: cannot be read as an image ({error})") from None

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image)
        if image.mode == "F":
            array = np.clip(array, 0.0, 1.0) * 255.0
        elif image.mode.startswith("I;16") or array.max(initial=0) > 255:
            array = array.astype(np.float64) / 257.0
        array = np.clip(np.round(array), 0, 255).astype(np.uint8)
        return np.repeat(array[:, :, None], 3, axis=2)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
