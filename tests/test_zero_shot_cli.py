"""`marionet zero-shot` end to end on tiny folders: the stock form (SD folder + ControlNet + IP-Adapter file) and the
trained-backbone form, output files, and the bad-input rules."""
import numpy as np
import pytest
import torch
from PIL import Image

from marionet.cli import main
from test_zero_shot import dummy_ip_adapter_state_dict, images, tiny_controlnet


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_parts):
    from marionet.models import save_base_folder, write_tiny_model

    root = tmp_path_factory.mktemp("zero_shot_cli")
    base_parts = {k: tiny_parts[k] for k in ("unet", "vae", "image_encoder", "feature_extractor", "scheduler")}
    base = save_base_folder(base_parts, root / "sd15")
    tiny_controlnet(tiny_parts["unet"]).save_pretrained(root / "controlnet")
    ip_file = root / "ip-adapter_tiny.bin"
    torch.save(dummy_ip_adapter_state_dict(tiny_parts["unet"]), ip_file)
    model = write_tiny_model(root / "model", with_motion=False)
    source, poses = images(frames=3)
    Image.fromarray(source).save(root / "ref.png")
    Image.fromarray(poses[0]).save(root / "pose.png")
    from marionet.data.video import write_video

    write_video(root / "pose.mp4", poses, fps=6)
    return {"root": root, "base": base, "controlnet": root / "controlnet", "ip": ip_file, "model": model}


def stock_args(f, out, *extra):
    return ["zero-shot", "--base", str(f["base"]), "--controlnet", str(f["controlnet"]), "--ip-adapter", str(f["ip"]),
            "--ref", str(f["root"] / "ref.png"), "--out", str(out), "--steps", "2", *extra]


def test_stock_form_writes_an_image_and_refuses_to_overwrite(folders, tmp_path, capsys):
    out = tmp_path / "out.png"
    args = stock_args(folders, out, "--pose", str(folders["root"] / "pose.png"), "--temperature", "1.3",
                      "--swap-layers", "decoder", "--source-noise", "previous-source")
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "IP-Adapter" in printed
    image = np.asarray(Image.open(out))
    assert image.shape == (64, 64, 3)
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--no-swap"]) == 0
    assert not np.array_equal(np.asarray(Image.open(out)), image)  # swap off really changes the picture


def test_trained_form_renders_a_pose_video(folders, tmp_path, capsys):
    from marionet.data.video import video_info

    out = tmp_path / "out.mp4"
    assert main(["zero-shot", "--model", str(folders["model"]), "--ref", str(folders["root"] / "ref.png"),
                 "--pose", str(folders["root"] / "pose.mp4"), "--out", str(out), "--steps", "2",
                 "--guidance", "2.0", "--swap-steps", "0:0.5"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    frames, fps, width, height = video_info(out)
    assert (frames, width, height) == (3, 64, 64) and abs(fps - 6) < 0.1


def test_source_pose_flag_conditions_the_source_pass(folders, tmp_path, capsys):
    root = folders["root"]
    Image.fromarray(np.ascontiguousarray(np.asarray(Image.open(root / "pose.png"))[:, ::-1])).save(
        root / "ref_pose.png")
    plain, posed = tmp_path / "plain.png", tmp_path / "posed.png"
    assert main(stock_args(folders, plain, "--pose", str(root / "pose.png"))) == 0
    assert "source pose none" in capsys.readouterr().out
    assert main(stock_args(folders, posed, "--pose", str(root / "pose.png"), "--source-pose",
                           str(root / "ref_pose.png"))) == 0
    assert "source pose given" in capsys.readouterr().out
    assert not np.array_equal(np.asarray(Image.open(plain)), np.asarray(Image.open(posed)))
    assert main(stock_args(folders, tmp_path / "x.png", "--pose", str(root / "pose.png"), "--source-pose",
                           str(root / "pose.mp4"))) == 2
    assert "not an image" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"--base": "missing_dir"}, "SD1.5 base folder"),
    ({"--controlnet": "missing_dir"}, "ControlNet folder"),
    ({"--ip-adapter": "missing.bin"}, "IP-Adapter weights"),
    ({"--ref": "missing.png"}, "--ref"),
    ({"--source-pose": "missing.png"}, "--source-pose: file not found"),
    ({"--swap-layers": "nowhere"}, "swap layers"),
    ({"--swap-steps": "0.8:0.2"}, "swap_steps"),
    ({"--temperature": "0"}, "temperature"),
])
def test_bad_input_is_one_clear_line(folders, tmp_path, capsys, change, message):
    args = stock_args(folders, tmp_path / "out.png", "--pose", str(folders["root"] / "pose.png"))
    for flag, value in change.items():
        value = str(tmp_path / value) if "missing" in value else value
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.png").exists()


def test_video_pose_needs_a_video_output_and_forms_do_not_mix(folders, tmp_path, capsys):
    args = stock_args(folders, tmp_path / "out.png", "--pose", str(folders["root"] / "pose.mp4"))
    assert main(args) == 2 and "3 frames" in capsys.readouterr().err
    assert main(args + ["--model", str(folders["model"])]) == 2
    assert "cannot be combined" in capsys.readouterr().err
