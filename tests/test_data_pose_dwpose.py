"""DWPose backend (data/dwpose.py) and video extraction (data/pose_extract.py, `marionet pose extract`).

The real ONNX files are never needed: the tests build tiny ONNX models with the same input/output signatures
- a detector that ignores its input and returns fixed raw YOLOX predictions encoding known boxes, and
- a "pose model" that finds the brightest spot of its crop and reports it as the SimCC peak of every keypoint,
so the whole chain (letterbox, YOLOX decoding, NMS, crop warp, normalisation, SimCC decoding, mapping back) has to
recover the known image position of a bright blob.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from marionet.data import dwpose  # noqa: E402

IMAGE_W, IMAGE_H = 160, 120  # letterbox ratio into 640x640: 4.0
BLOB = (100.0, 50.0)  # (x, y) image pixels
PERSON_BOX = (80.0, 20.0, 120.0, 80.0)  # xyxy image pixels (around the blob)
LOW_KEYPOINTS = (5, 100)  # COCO-WholeBody indices given a low score (l_shoulder; a left-hand point)


# ---------------------------------------------------------------- tiny ONNX models
def _yolox_raw(boxes_letterbox, input_size=(640, 640)) -> np.ndarray:
    """Raw (1, N, 85) YOLOX predictions: each (cx, cy, w, h, obj, cls, score) placed in the grid cell holding its
    centre, at stride 32 (or 16 when that cell is taken)."""
    grids, strides = dwpose.yolox_grids(input_size)
    raw = np.zeros((1, len(grids), 85), np.float32)
    raw[0, :, 2:4] = -5.0
    for cx, cy, w, h, obj, cls, score in boxes_letterbox:
        for stride in (32, 16):
            offset = int((strides[:, 0] < stride).sum())
            gx, gy = int(cx // stride), int(cy // stride)
            index = offset + gy * (input_size[1] // stride) + gx
            if raw[0, index, 4] == 0:
                break
        assert raw[0, index, 4] == 0 and tuple(grids[index]) == (gx, gy) and strides[index, 0] == stride
        raw[0, index, :4] = [cx / stride - gx, cy / stride - gy, np.log(w / stride), np.log(h / stride)]
        raw[0, index, 4] = obj
        raw[0, index, 5 + cls] = score
    return raw


def _letterbox_box(box, ratio=4.0):
    x1, y1, x2, y2 = (v * ratio for v in box)
    return (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1


def make_detector(path: Path, boxes=None) -> Path:
    """A YOLOX-shaped ONNX model: images (1,3,640,640) -> output (1, 8400, 85) = fixed predictions (+0 * max(input))."""
    if boxes is None:
        boxes = [
            (*_letterbox_box(PERSON_BOX), 0.95, 0, 0.95),  # the person: score 0.9025
            (*_letterbox_box((82, 22, 121, 81)), 0.9, 0, 0.9),  # duplicate of it, lower score: suppressed by NMS
            (*_letterbox_box((0, 0, 40, 60)), 0.8, 0, 0.8),  # another person, lower score (0.64)
            (*_letterbox_box((120, 90, 150, 118)), 0.99, 3, 0.99),  # a motorbike with the best score: not a person
        ]
    constant = numpy_helper.from_array(_yolox_raw(boxes), "raw")
    nodes = [
        helper.make_node("ReduceMax", ["images"], ["peak"], keepdims=0),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.float32))),
        helper.make_node("Mul", ["peak", "zero"], ["nothing"]),
        helper.make_node("Add", ["raw", "nothing"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_yolox", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8400, 85])], initializer=[constant])
    return _save(graph, path)


def make_pose_model(path: Path, low=LOW_KEYPOINTS) -> Path:
    """An RTMPose-shaped ONNX model: input (1,3,384,288) -> simcc_x (1,133,576), simcc_y (1,133,768), every
    keypoint peaking at the crop's brightest row/column (duplicated x2: split ratio 2); scores ~0.9 for a white
    spot, x0.2 for the `low` keypoints."""
    weights = np.full((1, 133, 1), 0.4, np.float32)
    weights[0, list(low), 0] = 0.08
    inits = [
        numpy_helper.from_array(weights, "weights"),
        numpy_helper.from_array(np.array([1, 1, 288, 1], np.int64), "col_shape"),
        numpy_helper.from_array(np.array([1, 1, 384, 1], np.int64), "row_shape"),
        numpy_helper.from_array(np.array([1, 1, 576], np.int64), "x_shape"),
        numpy_helper.from_array(np.array([1, 1, 768], np.int64), "y_shape"),
        numpy_helper.from_array(np.array([1, 133, 576], np.int64), "x_full"),
        numpy_helper.from_array(np.array([1, 133, 768], np.int64), "y_full"),
    ]
    nodes = [
        helper.make_node("ReduceMax", ["input"], ["gray"], axes=[1], keepdims=1),  # (1,1,384,288)
        helper.make_node("ReduceMax", ["gray"], ["col"], axes=[2], keepdims=0),  # (1,1,288)
        helper.make_node("ReduceMax", ["gray"], ["row"], axes=[3], keepdims=0),  # (1,1,384)
    ]
    for axis, shape, flat, full in (("col", "col_shape", "x_shape", "x_full"), ("row", "row_shape", "y_shape", "y_full")):
        nodes += [
            helper.make_node("Reshape", [axis, shape], [f"{axis}4"]),
            helper.make_node("Concat", [f"{axis}4", f"{axis}4"], [f"{axis}2"], axis=3),
            helper.make_node("Reshape", [f"{axis}2", flat], [f"{axis}_up"]),
            helper.make_node("Expand", [f"{axis}_up", full], [f"{axis}_all"]),
        ]
    nodes += [helper.make_node("Mul", ["col_all", "weights"], ["simcc_x"]),
              helper.make_node("Mul", ["row_all", "weights"], ["simcc_y"])]
    graph = helper.make_graph(
        nodes, "tiny_rtmpose", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 384, 288])],
        [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, 133, 576]),
         helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [1, 133, 768])], initializer=inits)
    return _save(graph, path)


def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return make_detector(folder / dwpose.DET_FILENAME), make_pose_model(folder / dwpose.POSE_FILENAME)


def blob_image(x=BLOB[0], y=BLOB[1], width=IMAGE_W, height=IMAGE_H, sigma=2.5) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    value = 255 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
    return np.repeat(np.round(value).astype(np.uint8)[:, :, None], 3, axis=2)


# ---------------------------------------------------------------- pure functions
def test_letterbox_round_trip_keeps_aspect_and_pads_with_114():
    image = np.zeros((100, 50, 3), np.uint8)
    image[40, 20] = 255
    canvas, ratio = dwpose.letterbox(image, (640, 640))
    assert canvas.shape == (640, 640, 3) and ratio == pytest.approx(6.4)
    assert (canvas[:, 320:] == 114).all()  # padding right of the 320-wide resized image
    assert (canvas[:, :320] != 114).all()
    peak = np.unravel_index(np.argmax(canvas[:, :320, 0]), (640, 320))
    # a point's letterbox position / ratio gives back its image position (within a pixel)
    assert abs(peak[0] / ratio - 40) < 1 and abs(peak[1] / ratio - 20) < 1


def test_yolox_decoding_nms_and_person_filter():
    raw = _yolox_raw([
        (*_letterbox_box(PERSON_BOX), 0.95, 0, 0.95),
        (*_letterbox_box((82, 22, 121, 81)), 0.9, 0, 0.9),
        (*_letterbox_box((0, 0, 40, 60)), 0.8, 0, 0.8),
        (*_letterbox_box((120, 90, 150, 118)), 0.99, 3, 0.99),
        (*_letterbox_box((130, 0, 150, 20)), 0.5, 0, 0.5),  # score 0.25 < 0.3
    ])
    boxes, scores = dwpose.detect_people(raw, ratio=4.0)
    assert len(boxes) == 2
    np.testing.assert_allclose(boxes[0], PERSON_BOX, atol=1e-3)
    np.testing.assert_allclose(boxes[1], (0, 0, 40, 60), atol=1e-3)
    np.testing.assert_allclose(scores, [0.95 * 0.95, 0.8 * 0.8], atol=1e-5)


def test_nms_keeps_best_and_disjoint():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    keep = dwpose.nms(boxes, np.array([0.5, 0.9, 0.4]), 0.45)
    assert keep.tolist() == [1, 2]


def test_box_to_center_scale_pads_and_fixes_aspect():
    center, scale = dwpose.box_to_center_scale((10, 20, 50, 100), (288, 384))  # 40 x 80 box
    np.testing.assert_allclose(center, (30, 60))
    np.testing.assert_allclose(scale, (75, 100))  # h = 80 * 1.25 = 100, w widened to 100 * 0.75
    center, scale = dwpose.box_to_center_scale((0, 0, 100, 10), (288, 384))  # wide box: height grows
    np.testing.assert_allclose(scale, (125, 125 / 0.75))


def test_warp_crop_and_mapping_are_inverse():
    image = blob_image(sigma=1.5)
    center, scale = dwpose.box_to_center_scale(PERSON_BOX)
    crop = dwpose.warp_crop(image, center, scale)
    assert crop.shape == (384, 288, 3)
    peak_yx = np.unravel_index(np.argmax(crop[..., 0]), crop.shape[:2])
    back = dwpose.crop_to_image_points(np.array([peak_yx[1], peak_yx[0]], float), center, scale)
    np.testing.assert_allclose(back, BLOB, atol=0.5)
    there = dwpose.image_to_crop_points(np.array(BLOB), center, scale)
    np.testing.assert_allclose(dwpose.crop_to_image_points(there, center, scale), BLOB, atol=1e-9)


def test_warp_crop_samples_the_mapped_image_point():
    # ramps: red = 4 * (x - 88), green = 3 * (y - 48); every crop pixel must read the image point that
    # crop_to_image_points gives for it (no half-pixel shift; PIL truncates to uint8, a bias under 1/8 pixel)
    ys, xs = np.mgrid[0:200, 0:250]
    image = np.stack([np.clip(4 * (xs - 88), 0, 255), np.clip(3 * (ys - 48), 0, 255), np.zeros_like(xs)], axis=2)
    center, scale = np.array([120.0, 90.0]), np.array([60.0, 80.0])
    crop = dwpose.warp_crop(image.astype(np.uint8), center, scale).astype(float)
    rows, cols = np.mgrid[0:384, 0:288]
    mapped = dwpose.crop_to_image_points(np.stack([cols, rows], axis=-1), center, scale)
    inside = (mapped[..., 0] > 89) & (mapped[..., 0] < 149) & (mapped[..., 1] > 49) & (mapped[..., 1] < 131)
    error_x = (crop[..., 0] / 4 + 88 - mapped[..., 0])[inside]
    error_y = (crop[..., 1] / 3 + 48 - mapped[..., 1])[inside]
    assert abs(error_x.mean()) < 0.2 and abs(error_y.mean()) < 0.2
    assert np.abs(error_x).max() < 0.5 and np.abs(error_y).max() < 0.5


def test_normalize_crop_layout_and_statistics():
    crop = np.zeros((4, 3, 3), np.uint8)
    crop[..., 0] = 255
    data = dwpose.normalize_crop(crop)
    assert data.shape == (1, 3, 4, 3) and data.dtype == np.float32
    np.testing.assert_allclose(data[0, 0], (255 - 123.675) / 58.395, rtol=1e-5)
    np.testing.assert_allclose(data[0, 2], -103.53 / 57.375, rtol=1e-5)


def test_simcc_decoding_locations_and_scores():
    simcc_x = np.zeros((3, 576), np.float32)
    simcc_y = np.zeros((3, 768), np.float32)
    simcc_x[0, 101], simcc_y[0, 400] = 0.8, 0.6
    simcc_x[1, 575], simcc_y[1, 0] = 0.5, 0.9
    simcc_x[2] -= 1  # no positive response: missing
    simcc_y[2] -= 1
    locs, scores = dwpose.decode_simcc(simcc_x, simcc_y, 2.0)
    np.testing.assert_allclose(locs[0], (50.5, 200.0))
    np.testing.assert_allclose(locs[1], (287.5, 0.0))
    np.testing.assert_allclose(scores, [0.6, 0.5, 0.0])
    np.testing.assert_allclose(locs[2], (-1, -1))


def test_wholebody_133_to_openpose_18():
    points = np.stack([np.arange(133) * 2.0, np.arange(133) * 3.0], axis=1)
    scores = np.full(133, 0.9, np.float32)
    scores[9] = 0.1  # COCO l_wrist below threshold
    low_hand = 100  # a left-hand point
    scores[low_hand] = 0.2
    result = dwpose.wholebody_to_openpose(points, scores, width=400, height=600, threshold=0.3, hands=True)
    body = result.body
    expected_coco = [0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
    for op, coco in enumerate(expected_coco):
        if coco is None:
            np.testing.assert_allclose(body[op, :2], (5.5 * 2 / 400, 5.5 * 3 / 600), atol=1e-6)  # shoulder mean
        elif coco == 9:
            assert body[op, 2] == 0  # missing
        else:
            np.testing.assert_allclose(body[op], (coco * 2 / 400, coco * 3 / 600, 0.9), atol=1e-6)
    left, right = result.hands
    np.testing.assert_allclose(left[0, :2], (91 * 2 / 400, 91 * 3 / 600), atol=1e-6)
    np.testing.assert_allclose(right[20, :2], (132 * 2 / 400, 132 * 3 / 600), atol=1e-6)
    assert left[low_hand - 91, 2] == 0 and left[0, 2] == pytest.approx(0.9)
    assert result.face is None
    with_face = dwpose.wholebody_to_openpose(points, scores, 400, 600, face=True, hands=False)
    assert with_face.hands is None and with_face.face.shape == (68, 3)
    np.testing.assert_allclose(with_face.face[0, :2], (23 * 2 / 400, 23 * 3 / 600), atol=1e-6)


def test_neck_confidence_is_min_of_shoulders():
    scores = np.full(133, 0.9, np.float32)
    scores[5], scores[6] = 0.5, 0.7
    result = dwpose.wholebody_to_openpose(np.ones((133, 2)), scores, 10, 10)
    assert result.body[1, 2] == pytest.approx(0.5)
    scores[5] = 0.2
    assert dwpose.wholebody_to_openpose(np.ones((133, 2)), scores, 10, 10).body[1, 2] == 0


def test_missing_model_file_error_names_file_and_source(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        dwpose.resolve_model_paths(models_dir=tmp_path)
    message = str(info.value)
    assert "yolox_l.onnx" in message and "yzd-v/DWPose" in message and "detector" in message
    (tmp_path / "yolox_l.onnx").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="dw-ll_ucoco_384.onnx"):
        dwpose.resolve_model_paths(models_dir=tmp_path)


# ---------------------------------------------------------------- the estimator on tiny ONNX models
def test_dwpose_recovers_blob_position(models):
    det, pose = models
    estimator = dwpose.DWPose(det, pose, threads=1)
    image = blob_image()
    boxes, scores = estimator.detect(image)
    np.testing.assert_allclose(boxes[0], PERSON_BOX, atol=1e-3)  # best person, not the motorbike
    points, raw_scores = estimator.estimate(image, boxes[0])
    assert points.shape == (133, 2)
    np.testing.assert_allclose(points, np.broadcast_to(BLOB, (133, 2)), atol=1.0)
    assert raw_scores[0] == pytest.approx(0.4 * (255 - 103.53) / 57.375, abs=0.02)  # max over channels of white
    assert raw_scores[5] == pytest.approx(raw_scores[0] / 5, rel=1e-5)
    # both models get BGR, as in the DWPose reference pipelines
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 200
    assert (estimator._model_image(rgb)[..., 2] == 200).all() and (estimator._model_image(rgb)[..., 0] == 0).all()

    result = estimator(image)
    np.testing.assert_allclose(result.box, PERSON_BOX, atol=1e-3)
    body = result.body
    assert body.shape == (18, 3)
    present = body[:, 2] > 0
    # COCO l_shoulder (5) was scored low: OpenPose l_shoulder (5) and the neck (1) are missing, the rest present
    assert not present[5] and not present[1] and present[[0, 2, 3, 4, 6, 7, 8, 14, 17]].all()
    np.testing.assert_allclose(body[present, 0] * IMAGE_W, BLOB[0], atol=1.0)
    np.testing.assert_allclose(body[present, 1] * IMAGE_H, BLOB[1], atol=1.0)
    assert len(result.hands) == 2 and result.hands[0][100 - 91, 2] == 0 and result.hands[1][0, 2] > 0.5
    assert result.face is None


def test_dwpose_blob_elsewhere_in_box(models):
    estimator = dwpose.DWPose(*models, threads=1)
    result = estimator(blob_image(x=88.0, y=70.0))
    present = result.body[:, 2] > 0
    np.testing.assert_allclose(result.body[present, 0] * IMAGE_W, 88.0, atol=1.0)
    np.testing.assert_allclose(result.body[present, 1] * IMAGE_H, 70.0, atol=1.0)


def test_no_detection_full_frame_fallback_and_empty(tmp_path, models):
    no_people = make_detector(tmp_path / "none.onnx", boxes=[(*_letterbox_box((0, 0, 40, 40)), 0.9, 2, 0.9)])
    fallback = dwpose.DWPose(no_people, models[1], threads=1)
    image = blob_image()
    result = fallback(image)
    np.testing.assert_allclose(result.box, (0, 0, IMAGE_W, IMAGE_H))
    np.testing.assert_allclose(result.body[0, :2] * (IMAGE_W, IMAGE_H), BLOB, atol=1.0)
    empty = dwpose.DWPose(no_people, models[1], threads=1, full_frame_fallback=False)(image)
    assert (empty.body[:, 2] == 0).all()


# ---------------------------------------------------------------- extraction over videos
def _write_blob_video(path: Path, frames: int = 5, x0: float = 94.0) -> list[tuple[float, float]]:
    from marionet.data.video import write_video

    positions = [(x0 + 3 * i, 45.0 + i) for i in range(frames)]
    write_video(path, [blob_image(x, y, sigma=3.0) for x, y in positions], fps=12)
    return positions


@pytest.fixture()
def video_dir(tmp_path):
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    positions = {
        "a": _write_blob_video(folder / "a.mp4", 5),
        "sub/b": _write_blob_video(folder / "sub" / "b.mp4", 4, x0=90.0),
    }
    (folder / "broken.mp4").write_bytes(os.urandom(3000))  # not a video
    (folder / "notes.txt").write_text("ignored")
    return folder, positions


def _check_outputs(out: Path, name: str, positions):
    from marionet.data.skeleton import load_keypoints
    from marionet.data.video import read_video, video_info

    pose_video = out / "poses" / f"{name}.mp4"
    frames, fps, width, height = video_info(pose_video)
    assert (frames, width, height) == (len(positions), IMAGE_W, IMAGE_H) and fps == pytest.approx(12)
    assert read_video(pose_video).max() > 100  # a skeleton was drawn
    kps = load_keypoints(out / "keypoints" / f"{name}.json")
    assert (kps["width"], kps["height"], len(kps["frames"])) == (IMAGE_W, IMAGE_H, len(positions))
    assert kps["fps"] == pytest.approx(12)
    for frame, (x, y) in zip(kps["frames"], positions):
        nose = frame["body"][0]
        assert nose[2] > 0.5
        assert abs(nose[0] * IMAGE_W - x) < 1.5 and abs(nose[1] * IMAGE_H - y) < 1.5
        assert frame["hands"] is not None and len(frame["hands"]) == 2


def test_extract_videos_resume_and_failure_report(video_dir, models, tmp_path):
    from marionet.data.pose_extract import extract_videos

    videos, positions = video_dir
    out = tmp_path / "out"
    report = extract_videos(videos, out, det=models[0], pose=models[1], workers=1, progress=False)
    assert sorted(Path(v).name for v in report.done) == ["a.mp4", "b.mp4"]
    assert [Path(v).name for v, _ in report.failed] == ["broken.mp4"] and "VideoError" in report.failed[0][1]
    for name, pos in positions.items():
        _check_outputs(out, name, pos)
    # nothing half-written for the broken video, no temp files left anywhere
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "keypoints/a.json", "keypoints/sub/b.json", "poses/a.mp4", "poses/sub/b.mp4"]

    stamp = (out / "poses" / "a.mp4").stat().st_mtime_ns
    (out / "keypoints" / "sub" / "b.json").unlink()  # as if killed between the two writes
    again = extract_videos(videos, out, det=models[0], pose=models[1], workers=1, progress=False)
    assert [Path(v).name for v in again.skipped] == ["a.mp4"]
    assert [Path(v).name for v in again.done] == ["b.mp4"]
    assert len(again.failed) == 1
    assert (out / "poses" / "a.mp4").stat().st_mtime_ns == stamp
    _check_outputs(out, "sub/b", positions["sub/b"])


@pytest.mark.slow
def test_extract_cli_parallel_workers(video_dir, models, tmp_path, capsys):
    from marionet.cli import main

    videos, positions = video_dir
    out = tmp_path / "out"
    code = main(["pose", "extract", "--videos", str(videos), "--out", str(out), "--det", str(models[0]),
                 "--pose", str(models[1]), "--workers", "2", "--no-progress", "--no-hands"])
    captured = capsys.readouterr()
    assert code == 1  # the broken video
    assert "2 done" in captured.out and "1 failed" in captured.out
    assert str(out / "poses") in captured.out and str(out / "keypoints") in captured.out
    assert "broken.mp4" in captured.err
    data = json.loads((out / "keypoints" / "a.json").read_text())
    assert len(data["frames"]) == 5 and data["frames"][0]["hands"] is None
    x, y = positions["a"][2]
    nose = data["frames"][2]["body"][0]
    assert abs(nose[0] * IMAGE_W - x) < 1.5 and abs(nose[1] * IMAGE_H - y) < 1.5

    (videos / "broken.mp4").unlink()
    code = main(["pose", "extract", "--videos", str(videos), "--out", str(out), "--det", str(models[0]),
                 "--pose", str(models[1]), "--no-progress"])
    assert code == 0 and "2 already done" in capsys.readouterr().out


def test_extract_still_image_then_use_it_as_align_reference(models, tmp_path, capsys):
    from PIL import Image

    from marionet.data.pose_extract import extract_videos
    from marionet.data.skeleton import load_keypoints, save_keypoints
    from marionet.cli import main

    folder = tmp_path / "refs"
    folder.mkdir()
    Image.fromarray(blob_image(90.0, 60.0)).save(folder / "me.png")
    report = extract_videos(folder, tmp_path / "out", det=models[0], pose=models[1], progress=False)
    assert [Path(v).name for v in report.done] == ["me.png"] and not report.failed
    skeleton = np.asarray(Image.open(tmp_path / "out" / "poses" / "me.png"))
    assert skeleton.shape == (IMAGE_H, IMAGE_W, 3) and skeleton.max() > 100
    kps = load_keypoints(tmp_path / "out" / "keypoints" / "me.json")
    assert len(kps["frames"]) == 1 and kps["fps"] == 0
    np.testing.assert_allclose(kps["body"][0, 0, :2] * (IMAGE_W, IMAGE_H), (90, 60), atol=1.0)

    driving = np.zeros((3, 18, 3), np.float32)
    driving[:, :, :2] = np.random.default_rng(0).uniform(0.2, 0.8, (18, 2))
    driving[:, :, 2] = 0.9
    save_keypoints(tmp_path / "dance.json", driving, width=64, height=64, fps=8)
    code = main(["pose", "align", "--ref-pose", str(tmp_path / "out" / "keypoints" / "me.json"),
                 "--driving", str(tmp_path / "dance.json"), "--out", str(tmp_path / "aligned")])
    assert code == 0 and (tmp_path / "aligned" / "poses" / "dance.mp4").is_file()
    assert "aligned skeleton video" in capsys.readouterr().out


def test_extract_cli_user_errors(tmp_path, models, capsys):
    from marionet.cli import main

    (tmp_path / "videos").mkdir()
    code = main(["pose", "extract", "--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "out"),
                 "--models-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "yolox_l.onnx" in err and "yzd-v/DWPose" in err and len(err.strip().splitlines()) == 1
    code = main(["pose", "extract", "--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "out"),
                 "--det", str(models[0]), "--pose", str(models[1])])
    assert code == 2 and "no videos or images found" in capsys.readouterr().err
    code = main(["pose", "extract", "--videos", str(tmp_path / "nope"), "--out", str(tmp_path / "out"),
                 "--det", str(models[0]), "--pose", str(models[1])])
    assert code == 2 and "not found" in capsys.readouterr().err
