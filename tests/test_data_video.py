"""data.video: reading, writing and image loading, including the bad-input cases."""
import io

import numpy as np
import pytest
from PIL import Image

from marionet.data.video import VideoError, load_image_rgb, read_video, video_info, write_gif, write_video


def ramp_frames(count=6, height=32, width=48):
    frames = np.zeros((count, height, width, 3), np.uint8)
    for i in range(count):
        frames[i] = 20 + 35 * i
    return frames


def test_roundtrip_info_and_random_access(tmp_path):
    frames = ramp_frames()
    path = write_video(tmp_path / "v.mp4", frames, fps=10)
    assert video_info(path) == (6, 10.0, 48, 32)
    video = read_video(path)
    assert video.shape == (6, 32, 48, 3) and video.dtype == np.uint8
    assert np.abs(video.astype(int) - frames).max() <= 3
    picked = read_video(path, [4, 1])
    assert np.abs(picked[0].astype(int) - frames[4]).max() <= 3 and np.abs(picked[1].astype(int) - frames[1]).max() <= 3
    from_bytes = read_video(path.read_bytes(), [2])
    np.testing.assert_array_equal(from_bytes[0], video[2])
    np.testing.assert_array_equal(read_video(io.BytesIO(path.read_bytes()), [3])[0], video[3])


def test_odd_size_is_padded_and_generators_stream(tmp_path):
    path = write_video(tmp_path / "odd.mp4", (f for f in ramp_frames(3, 33, 45)), fps=8)
    count, fps, width, height = video_info(path)
    assert (count, width, height) == (3, 46, 34)


def test_never_overwrites_silently_and_no_temp_left(tmp_path):
    path = write_video(tmp_path / "v.mp4", ramp_frames(2), fps=5)
    with pytest.raises(FileExistsError, match="v.mp4"):
        write_video(path, ramp_frames(2), fps=5)
    write_video(path, ramp_frames(3), fps=5, overwrite=True)
    assert video_info(path)[0] == 3
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "empty.mp4", [], fps=5)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "float.mp4", ramp_frames(2).astype(np.float32), fps=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(VideoError, match="nope.mp4.*not found"):
        read_video(tmp_path / "nope.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    with pytest.raises(VideoError, match="notes.mp4.*cannot be read"):
        video_info(text)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="empty.mp4"):
        read_video(empty)
    # A container that FFmpeg wrote without any frame (a video stream with nothing in it).
    import av
    zero = tmp_path / "zero.mp4"
    with av.open(str(zero), mode="w") as container:
        stream = container.add_stream("libx264", rate=5)
        stream.width = stream.height = 16
    with pytest.raises(VideoError, match="zero.mp4"):
        read_video(zero)
    good = write_video(tmp_path / "good.mp4", ramp_frames(3), fps=5)
    with pytest.raises(VideoError, match="out of range"):
        read_video(good, [5])


def test_gif(tmp_path):
    path = write_gif(tmp_path / "a.gif", ramp_frames(4), fps=4)
    with Image.open(path) as image:
        assert image.n_frames == 4 and image.info["duration"] == 250


def test_load_image_modes(tmp_path):
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (5, 1))
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    out = load_image_rgb(tmp_path / "gray.png")
    assert out.shape == (5, 25, 3) and (out[..., 0] == gray).all() and (out[..., 2] == gray).all()

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top opaque red, bottom fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = load_image_rgb(tmp_path / "rgba.png")
    assert out.shape == (4, 4, 3) and tuple(out[0, 0]) == (200, 0, 0) and tuple(out[3, 3]) == (255, 255, 255)

    deep = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4096)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = load_image_rgb(tmp_path / "deep.png")
    assert out.dtype == np.uint8 and out[3, 3, 0] == round(15 * 4096 / 257) and out[0, 0, 0] == 0

    palette = Image.fromarray(np.full((6, 6, 3), (10, 120, 240), np.uint8)).convert("P", palette=Image.ADAPTIVE)
    palette.save(tmp_path / "pal.png")
    assert tuple(load_image_rgb(tmp_path / "pal.png")[2, 2]) == (10, 120, 240)


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image_rgb(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="junk.png.*cannot be read"):
        load_image_rgb(tmp_path / "junk.png")


def test_reading_without_decord_falls_back_to_pyav(tmp_path, monkeypatch):
    """decord has no wheels off x86-64: without it every read goes through PyAV, with the same frames."""
    import sys

    from marionet.data.video import open_video

    frames = ramp_frames(7)
    path = write_video(tmp_path / "v.mp4", frames, fps=5)
    with_decord = read_video(path, [6, 0, 3])
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` now fails
    reader = open_video(path)
    assert len(reader) == 7 and reader.get_avg_fps() == 5.0 and reader._use_av
    assert np.array_equal(read_video(path, [6, 0, 3]), with_decord)
    assert video_info(path) == (7, 5.0, frames.shape[2], frames.shape[1])
    (tmp_path / "bad.mp4").write_text("not a video")
    with pytest.raises(VideoError, match="bad.mp4.*cannot be read"):
        read_video(tmp_path / "bad.mp4")


def test_exact_videos_decode_to_the_written_rgb_frames_with_and_without_decord(tmp_path, monkeypatch):
    """exact=True (what the synthetic data sets use) keeps every pixel, where lossless yuv420p must lose colour."""
    import sys

    frames = np.random.default_rng(0).integers(0, 256, (5, 16, 24, 3), dtype=np.uint8)  # noise: nothing to smooth
    exact = write_video(tmp_path / "exact.mp4", frames, fps=5, exact=True)
    yuv = write_video(tmp_path / "yuv.mp4", frames, fps=5, lossless=True)
    np.testing.assert_array_equal(read_video(exact), frames)
    np.testing.assert_array_equal(read_video(exact, [4, 1]), frames[[4, 1]])
    assert np.abs(read_video(yuv).astype(int) - frames).max() > 10  # chroma subsampling
    monkeypatch.setitem(sys.modules, "decord", None)
    np.testing.assert_array_equal(read_video(exact), frames)
