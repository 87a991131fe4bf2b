"""Converter timings and memory: `python -m marionet.models.convert.bench motion --size sd15` writes a random
mm_sd_v15_v2-shaped checkpoint (original AnimateDiff naming) to a temporary folder, then times reading, converting
and writing the MotionAdapter folder, and prints the process's peak memory. `--size tiny` is a quick smoke run."""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from ..sd15 import MOTION_ADAPTER_CONFIG

SIZES = {"sd15": (MOTION_ADAPTER_CONFIG["block_out_channels"], MOTION_ADAPTER_CONFIG["motion_layers_per_block"],
                  MOTION_ADAPTER_CONFIG["motion_max_seq_length"]), "tiny": ((32, 64), 1, 24)}


def original_motion_state(channels, layers: int, max_len: int, dtype: torch.dtype) -> dict:
    """Random weights with mm_sd_v15_v2.ckpt's names and shapes (values only need to be finite)."""
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding

    locations = [(f"down_blocks.{i}.motion_modules.{j}.", c) for i, c in enumerate(channels) for j in range(layers)]
    locations.append(("mid_block.motion_modules.0.", channels[-1]))
    locations += [(f"up_blocks.{i}.motion_modules.{j}.", c) for i, c in enumerate(reversed(channels))
                  for j in range(layers + 1)]
    state, tables = {}, {}
    for prefix, c in locations:
        t = prefix + "temporal_transformer."
        block = t + "transformer_blocks.0."
        shapes = {t + "norm.weight": (c,), t + "norm.bias": (c,), t + "proj_in.weight": (c, c),
                  t + "proj_in.bias": (c,), t + "proj_out.weight": (c, c), t + "proj_out.bias": (c,),
                  block + "ff.net.0.proj.weight": (8 * c, c), block + "ff.net.0.proj.bias": (8 * c,),
                  block + "ff.net.2.weight": (c, 4 * c), block + "ff.net.2.bias": (c,),
                  block + "ff_norm.weight": (c,), block + "ff_norm.bias": (c,)}
        for a in range(2):
            attn = block + f"attention_blocks.{a}."
            shapes.update({attn + n + ".weight": (c, c) for n in ("to_q", "to_k", "to_v", "to_out.0")})
            shapes.update({attn + "to_out.0.bias": (c,), block + f"norms.{a}.weight": (c,),
                           block + f"norms.{a}.bias": (c,)})
            if c not in tables:
                tables[c] = SinusoidalPositionalEmbedding(c, max_len).pe.clone()
            state[attn + "pos_encoder.pe"] = tables[c]
        for name, shape in shapes.items():
            state[name] = (torch.randn(shape) * 0.02).to(dtype)
    return state


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def bench_motion(size: str, dtype: torch.dtype) -> None:
    from .motion_module import load_motion_adapter

    channels, layers, max_len = SIZES[size]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mm.ckpt"
        torch.save(original_motion_state(channels, layers, max_len, dtype), path)
        print(f"checkpoint: {path.stat().st_size / 2**30:.2f} GiB ({dtype}), peak so far {peak_gib():.2f} GiB")
        start = time.perf_counter()
        adapter, info = load_motion_adapter(path)
        converted = time.perf_counter()
        adapter.save_pretrained(Path(tmp) / "adapter", safe_serialization=True)
        written = time.perf_counter()
        params = sum(p.numel() for p in adapter.parameters())
        print(f"motion-module {size}: {params / 1e6:.1f} M parameters; read+convert {converted - start:.2f} s, "
              f"write {written - converted:.2f} s; process peak RSS {peak_gib():.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["motion"])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--dtype", choices=["fp16", "fp32"], default="fp32")
    args = parser.parse_args()
    torch.manual_seed(0)
    bench_motion(args.size, torch.float16 if args.dtype == "fp16" else torch.float32)


if __name__ == "__main__":
    main()
