"""`marionet convert ...`: turn weights people already have into marionet / diffusers folders, offline.

    convert moore-aa       Moore-AnimateAnyone's released .pth files -> a marionet model folder
    convert motion-module  an original AnimateDiff motion module (mm_sd_v15_v2.ckpt) -> a diffusers MotionAdapter
    convert single-file    an original SD checkpoint (.safetensors/.ckpt) -> a diffusers folder (unet/ vae/ scheduler/)
    convert pose-guider    a ControlNet-openpose folder -> Pose Guider initial weights
"""
from __future__ import annotations


def register(subparsers) -> None:
    convert = subparsers.add_parser("convert", help="convert existing weights (Animate Anyone, AnimateDiff, SD)",
                                    description=__doc__.split("\n\n", 1)[1],
                                    formatter_class=_raw_formatter())
    sub = convert.add_subparsers(dest="convert_command", metavar="FORMAT")

    moore = sub.add_parser("moore-aa", help="Moore-AnimateAnyone release -> marionet model folder",
                           description="Convert Moore-AnimateAnyone's denoising_unet.pth, reference_unet.pth, "
                                       "pose_guider.pth [and motion_module.pth] into a model folder that "
                                       "`Animator.from_pretrained` and `marionet animate --model` load.")
    moore.add_argument("--weights", required=True, help="folder holding the released .pth files")
    moore.add_argument("--base", required=True,
                       help="SD1.5-family base: diffusers folder (unet/ gives the UNet config) or single file")
    moore.add_argument("--vae", help="VAE folder (sd-vae-ft-mse); default: the base's vae/")
    moore.add_argument("--image-encoder", help="CLIP image encoder folder (sd-image-variations-diffusers/"
                                               "image_encoder); default: the base's image_encoder/")
    moore.add_argument("--feature-extractor", help="CLIP preprocessor folder; default: beside the image encoder")
    moore.add_argument("--no-motion", action="store_true", help="ignore motion_module.pth: a stage-1 image model")
    moore.add_argument("--schedule", choices=["trained", "released-inference"], default="trained",
                       help="scheduler to export: the one the weights were trained with (default; scaled_linear "
                            "betas) or the one their inference config samples with (linear betas, to reproduce "
                            "their demo outputs)")
    _motion_flags(moore)
    _common_flags(moore)
    moore.set_defaults(func=run_moore)

    motion = sub.add_parser("motion-module", help="AnimateDiff motion module checkpoint -> MotionAdapter folder",
                            description="Convert an original-format AnimateDiff motion module (mm_sd_v15_v2.ckpt, "
                                        "motion_module.pth) into a diffusers MotionAdapter folder.")
    motion.add_argument("--ckpt", required=True, help=".ckpt/.pth/.safetensors in AnimateDiff's original naming")
    _motion_flags(motion)
    _common_flags(motion)
    motion.set_defaults(func=run_motion)

    single = sub.add_parser("single-file", help="original SD checkpoint -> diffusers folder",
                            description="Convert an original Stable Diffusion 1.x checkpoint (.safetensors/.ckpt) "
                                        "into diffusers unet/ vae/ scheduler/ folders (the text encoder is not "
                                        "converted: marionet does not use it).")
    single.add_argument("--ckpt", required=True, help="the checkpoint file")
    single.add_argument("--config", help="a diffusers folder whose unet/ vae/ [scheduler/] configs to use "
                                         "(default: built-in SD1.5 configs)")
    _common_flags(single)
    single.set_defaults(func=run_single_file)

    guider = sub.add_parser("pose-guider", help="ControlNet-openpose -> Pose Guider initial weights",
                            description="Initialise a Pose Guider from a ControlNet's conditioning embedding "
                                        "(e.g. control_v11p_sd15_openpose); its output conv stays zero.")
    guider.add_argument("--controlnet", required=True, help="ControlNet folder or weights file")
    guider.add_argument("--channels", type=int, help="output width (default: the ControlNet's, 320 for SD1.5)")
    _common_flags(guider)
    guider.set_defaults(func=run_pose_guider)

    convert.set_defaults(func=lambda args: convert.print_help() or 2)


def _raw_formatter():
    import argparse

    return argparse.RawDescriptionHelpFormatter


def _motion_flags(parser) -> None:
    parser.add_argument("--motion-heads", type=int, default=8,
                        help="temporal attention heads (not stored in the weights; AnimateDiff SD1.5: 8)")
    parser.add_argument("--motion-norm-groups", type=int, default=32, help="motion GroupNorm groups (default 32)")
    parser.add_argument("--max-frames", type=int,
                        help="positional table length (default: the checkpoint's, 32 for mm_sd_v15_v2)")


def _common_flags(parser) -> None:
    parser.add_argument("--out", required=True, help="output folder (written to a temporary folder, then renamed)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow .ckpt/.pth files that torch.load(weights_only=True) refuses (runs pickle code: "
                             "only for files you trust)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _guard(work):
    """Run `work()`, turning the converters' input errors into one-line user errors."""
    from ..atomic import OutputWriteError
    from ..errors import UserError
    from .convert.common import ConversionError
    from .loading import MissingWeightsError

    try:
        return work()
    except (ConversionError, MissingWeightsError, FileExistsError, OutputWriteError) as error:
        raise UserError(str(error)) from error


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step")


def _command(args) -> str:
    """The command line that produced a folder, for its model card."""
    import shlex

    words = ["marionet", "convert", args.convert_command]
    for key, value in vars(args).items():
        if key in ("func", "command", "convert_command") or value in (None, False):
            continue
        flag = "--" + key.replace("_", "-")
        words += [flag] if value is True else [flag, str(value)]
    return shlex.join(words)


def _print_report(report: dict) -> None:
    for line in report.get("filled", []):
        print(f"  filled: {line}")
    for line in report.get("ignored", []):
        print(f"  ignored: {line}")


def run_moore(args) -> int:
    from .convert.common import prepare_output, write_folder_atomically

    def work():
        prepare_output(args.out, args.overwrite)
        from .convert.base import load_base_components
        from .convert.moore_aa import check_release_folder, convert_moore_release

        check_release_folder(args.weights)  # before the (slow) base loading
        from .export import export_model_folder

        with _progress(3, "convert moore-aa") as bar:
            base = load_base_components(args.base, vae=args.vae, image_encoder=args.image_encoder,
                                        feature_extractor=args.feature_extractor, allow_pickle=args.allow_pickle,
                                        need_unet=False)  # the release brings both UNets; only the config
            bar.update()
            animator, report = convert_moore_release(
                args.weights, base["unet_config"], heads=args.motion_heads, norm_groups=args.motion_norm_groups,
                max_seq_length=args.max_frames, use_motion=not args.no_motion, allow_pickle=args.allow_pickle)
            bar.update()
            from .convert.moore_aa import release_scheduler

            scheduler = release_scheduler(args.schedule)
            card = {"produced_by": f"`{_command(args)}`", "base_model": args.base,
                    "source": ", ".join(report["files"]),
                    "notes": f"Converted from Moore-AnimateAnyone's released weights. Scheduler: `{args.schedule}` "
                             "(see the README's conversion section for what each schedule reproduces)."}
            write_folder_atomically(args.out, lambda tmp: export_model_folder(
                tmp, animator, base["vae"], base["image_encoder"], base["feature_extractor"], scheduler, card=card),
                overwrite=args.overwrite)
            bar.update()
        return animator, report

    animator, report = _guard(work)
    _print_report(report)
    kind = "video" if animator.is_video_model else "image (stage-1, no motion modules)"
    print(f"wrote {kind} model folder {args.out} from {len(report['files'])} files in {args.weights}")
    return 0


def run_motion(args) -> int:
    from .card import converted_folder_card
    from .convert.common import prepare_output, write_folder_atomically
    from .convert.motion_module import load_motion_adapter

    def work():
        prepare_output(args.out, args.overwrite)
        with _progress(2, "convert motion-module") as bar:
            adapter, info = load_motion_adapter(args.ckpt, args.motion_heads, args.motion_norm_groups,
                                                args.max_frames, args.allow_pickle)
            bar.update()

            def write(tmp):
                adapter.save_pretrained(tmp, safe_serialization=True)
                converted_folder_card(tmp, "AnimateDiff motion module (diffusers MotionAdapter)", args.ckpt,
                                      _command(args), [("config", info["config"])],
                                      notes="Load with marionet.models.convert.load_motion_adapter or as "
                                            "model.motion_module in a stage-2 config; marionet runs it with "
                                            "per-frame GroupNorm, as the original AnimateDiff code does.")
            write_folder_atomically(args.out, write, overwrite=args.overwrite)
            bar.update()
        return info

    info = _guard(work)
    if info["ignored"]:
        print(f"  ignored {len(info['ignored'])} keys outside motion modules, e.g. {info['ignored'][0]}")
    print(f"wrote MotionAdapter folder {args.out} ({info['config']})")
    return 0


def run_single_file(args) -> int:
    from .card import converted_folder_card
    from .convert.common import prepare_output, write_folder_atomically
    from .convert.single_file import convert_single_file, write_diffusers_folder

    def work():
        prepare_output(args.out, args.overwrite)
        with _progress(2, "convert single-file") as bar:
            parts = convert_single_file(args.ckpt, config_dir=args.config, allow_pickle=args.allow_pickle)
            bar.update()

            def write(tmp):
                write_diffusers_folder(parts, tmp)
                converted_folder_card(tmp, "Stable Diffusion base (diffusers folder)", args.ckpt, _command(args),
                                      [("parts", "unet/ vae/ scheduler/"),
                                       ("ignored keys", f"{len(parts['ignored'])} (text encoder, schedule buffers)")])
            write_folder_atomically(args.out, write, args.overwrite)
            bar.update()
        return parts

    parts = _guard(work)
    if parts["ignored"]:
        print(f"  ignored {len(parts['ignored'])} keys (text encoder / schedule buffers), e.g. {parts['ignored'][0]}")
    print(f"wrote diffusers folder {args.out} (unet/ vae/ scheduler/)")
    return 0


def run_pose_guider(args) -> int:
    from .card import converted_folder_card
    from .convert.base import load_pose_guider_init
    from .convert.common import prepare_output, write_folder_atomically

    def work():
        prepare_output(args.out, args.overwrite)
        guider = load_pose_guider_init(args.controlnet, args.channels, args.allow_pickle)

        def write(tmp):
            guider.save_pretrained(tmp, safe_serialization=True)
            converted_folder_card(tmp, "Pose Guider initial weights", args.controlnet, _command(args),
                                  [("channels", tuple(guider.config.block_out_channels)),
                                   ("output", f"{guider.config.conditioning_embedding_channels} (zero conv)")])
        write_folder_atomically(args.out, write, args.overwrite)
        return guider

    guider = _guard(work)
    print(f"wrote Pose Guider folder {args.out} (channels {tuple(guider.config.block_out_channels)}, "
          f"output {guider.config.conditioning_embedding_channels}, output conv zero)")
    return 0
