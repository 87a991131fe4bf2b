"""`marionet app`: registration only (Gradio is imported when the command runs, from the `[app]` extra)."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "app", help="web app (Gradio): animate, zero-shot and compare in the browser",
        description="Start the marionet web app on this machine (localhost by default; nothing is shared or "
                    "downloaded). Tabs: Animate, Zero-shot, Compare; one job at a time, cancellable. Needs the "
                    "[app] extra: pip install 'marionet[app]'.")
    p.add_argument("--models", help="folder searched (3 levels deep) for model folders with model_index.json")
    p.add_argument("--out", default="marionet_app_out", help="folder for the app's outputs (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    p.add_argument("--det", help="DWPose detector ONNX (yolox_l.onnx) for pose extraction")
    p.add_argument("--pose-model", help="DWPose whole-body ONNX (dw-ll_ucoco_384.onnx) for pose extraction")
    p.set_defaults(func=run_app)


def run_app(args) -> int:
    from ..errors import UserError

    try:
        from . import app
    except ImportError as error:
        raise UserError(f"the web app needs Gradio ({error}): pip install 'marionet[app]'") from None
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda requested but no CUDA device is available (use --device cpu)")
    marionet_app = app.MarionetApp(args.models, args.out, args.device, args.det, args.pose_model)
    print(f"models: {len(marionet_app.models())} folder(s) under {args.models or '(no --models given)'}; "
          f"outputs go to {marionet_app.out.resolve()}")
    app.launch(marionet_app, args.host, args.port, args.share)
    return 0
