"""Reference attention processors against explicit attention computations."""
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from marionet.models import ReferenceAttnProcessor, ReferenceState


def make_attention(dim=32, heads=4):
    torch.manual_seed(0)
    return Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False).eval()


def explicit_attention(attn, queries_from, context, scale=None):
    """softmax(Q K^T * scale) V with an explicit softmax, then the output projection."""
    b, n, _ = queries_from.shape
    h = attn.heads
    q = attn.to_q(queries_from).view(b, n, h, -1).transpose(1, 2)
    k = attn.to_k(context).view(b, context.shape[1], h, -1).transpose(1, 2)
    v = attn.to_v(context).view(b, context.shape[1], h, -1).transpose(1, 2)
    scale = attn.scale if scale is None else scale
    weights = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, -1)
    return attn.to_out[0](out)


def test_read_with_empty_bank_equals_default_attention():
    attn = make_attention()
    x = torch.randn(3, 16, 32)
    expected = AttnProcessor2_0()(attn, x)
    state = ReferenceState()
    got = ReferenceAttnProcessor(state, "layer", role="read")(attn, x)
    assert torch.allclose(got, expected, atol=1e-6)


def test_read_equals_explicit_attention_over_concatenated_tokens_with_unconditional_rows():
    attn = make_attention()
    x, bank = torch.randn(3, 16, 32), torch.randn(3, 24, 32)
    state = ReferenceState(bank={"layer": bank}, dropped=(False, True, False))
    got = ReferenceAttnProcessor(state, "layer", role="read")(attn, x)
    for row in range(3):
        context = x[row:row + 1] if row == 1 else torch.cat([x[row:row + 1], bank[row:row + 1]], dim=1)
        expected = explicit_attention(attn, x[row:row + 1], context)
        assert torch.allclose(got[row:row + 1], expected, atol=1e-5), row
    # without the mask every row sees the bank: row 1 changes
    state.dropped = None
    assert not torch.allclose(ReferenceAttnProcessor(state, "layer", role="read")(attn, x)[1], got[1], atol=1e-3)


def test_video_bank_repeated_over_frames_equals_per_frame():
    attn = make_attention()
    batch, frames = 2, 3
    x, bank = torch.randn(batch * frames, 16, 32), torch.randn(batch, 8, 32)
    state = ReferenceState(bank={"layer": bank}, dropped=(False, True))
    got = ReferenceAttnProcessor(state, "layer", role="read")(attn, x)
    for b in range(batch):
        for f in range(frames):
            row = b * frames + f  # batch-major, as UNetMotionModel lays frames out
            single = ReferenceState(bank={"layer": bank[b:b + 1]}, dropped=state.dropped[b:b + 1])
            expected = ReferenceAttnProcessor(single, "layer", role="read")(attn, x[row:row + 1])
            assert torch.allclose(got[row:row + 1], expected, atol=1e-6), (b, f)


def test_write_banks_input_and_computes_plain_attention():
    attn = make_attention()
    x = torch.randn(2, 16, 32)
    state = ReferenceState()
    got = ReferenceAttnProcessor(state, "layer", role="write")(attn, x)
    assert state.bank["layer"] is x
    assert torch.allclose(got, AttnProcessor2_0()(attn, x), atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 1.3, 0.7])
def test_swap_equals_explicit_attention_over_bank_only_with_temperature(temperature):
    attn = make_attention()
    x, bank = torch.randn(2, 16, 32), torch.randn(2, 20, 32)
    state = ReferenceState(mode="swap", bank={"layer": bank}, temperature=temperature)
    got = ReferenceAttnProcessor(state, "layer")(attn, x)
    expected = explicit_attention(attn, x, bank, scale=attn.scale / temperature)
    assert torch.allclose(got, expected, atol=1e-5)


def test_layers_outside_active_set_do_plain_attention():
    attn = make_attention()
    x, bank = torch.randn(2, 16, 32), torch.randn(2, 8, 32)
    state = ReferenceState(mode="read", bank={"layer": bank}, active_layers={"other"})
    got = ReferenceAttnProcessor(state, "layer")(attn, x)
    assert torch.allclose(got, AttnProcessor2_0()(attn, x), atol=1e-6)
