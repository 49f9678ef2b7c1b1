"""Runs perfcast.measure.mla_triton's kernel under Triton's CPU interpreter and prints one JSON object: per case
the max abs error against float32 attention (tests/test_mla_triton.py runs this in a process of its own:
TRITON_INTERPRET must be set before triton is first imported, which a test process cannot promise).

bfloat16 ``tl.dot`` operands are widened to float32 before the interpreter's matmul: it stores bfloat16 as raw
uint16 and its dot multiplies the bit patterns (triton-lang/triton#11584; bfloat16 is not supported there).
The GPU multiplies bf16 values exactly into an fp32 accumulator, which the widening reproduces. The float16
case does not touch it (the widening leaves other dtypes alone).
"""

import json
import os
import sys

# (B, H, S, R, P, num_splits, config, dtype): None = what the harness would pick
CASES = {
    "small dims, heads masked in a 16-row block": (2, 4, 50, 64, 16, None, "h16n32w8s2", "bf16"),
    "H=16 S=300 default": (1, 16, 300, 512, 64, None, None, "bf16"),
    "H=16 S=257 B=3, 3 splits, 64-key blocks": (3, 16, 257, 512, 64, 3, "h16n64w8s2", "bf16"),
    "H=16 one split (no combine)": (2, 16, 37, 512, 64, 1, None, "bf16"),
    "H=128 default (64-row head blocks)": (1, 128, 200, 512, 64, None, None, "bf16"),
    "H=128 B=2, 32-row head blocks, 2 splits": (2, 128, 70, 512, 64, 2, "h32n32w8s2", "bf16"),
    "H=16 float16 (no widening)": (2, 16, 300, 512, 64, None, None, "fp16"),
}


def widen_bf16_dot():
    import triton.language as tl
    from triton.runtime import interpreter as interp

    orig = interp.InterpreterBuilder.create_dot

    def create_dot(self, a, b, *args, **kw):
        a, b = (self.cast_impl(x, tl.float32) if x.dtype.scalar == tl.bfloat16 else x for x in (a, b))
        return orig(self, a, b, *args, **kw)

    interp.InterpreterBuilder.create_dot = create_dot


def kernel_errors() -> dict:
    import torch

    from perfcast.measure import mla_triton as mt

    out = {}
    for i, (name, (B, H, S, R, P, splits, config, dt)) in enumerate(CASES.items()):
        torch.manual_seed(i)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dt]
        q, cache = torch.randn(B, H, R + P).to(dtype), torch.randn(B, S, R + P).to(dtype)
        scale = 192 ** -0.5  # DeepSeek's (qk_nope + rope) ** -0.5
        o = mt.mla_decode(q, cache, scale, splits, config, kv_lora_rank=R)
        cfg = mt.CONFIG_BY_NAME[config] if config else mt.default_config(H)
        ref = mt.attention_reference(q, cache, scale, R)
        out[name] = {"shape_ok": tuple(o.shape) == (B, H, R) and o.dtype == dtype, "config": cfg.name, "dtype": dt,
                     "splits": mt.split_plan(S, splits or mt.pick_splits(B, H, S, 132, cfg), cfg.block_n)[1],
                     "err": (o.float() - ref).abs().max().item(), "ref_max": ref.abs().max().item()}
    return out


def harness_error() -> float:
    """extras.mla_block with impl ``triton`` against impl ``matmul``: float32 weights at small MLA dims with
    the kernel's power-of-two widths (latent 64, rope 16)."""
    import torch
    import torch.nn.functional as F

    from perfcast.measure import extras

    torch.manual_seed(0)
    d = {"hidden": 64, "heads": 4, "tp": 1, "q_lora_rank": 24, "kv_lora_rank": 64, "qk_nope_head_dim": 16,
         "qk_rope_head_dim": 16, "v_head_dim": 16}
    W = {k: v.float() for k, v in extras.mla_weights(torch, d, "cpu").items()}
    B, ctx = 2, 40
    x = torch.randn(B, d["hidden"])
    cos, sin = (t.float() for t in extras._rope_tables(torch, torch.full((B,), ctx), 16, "cpu"))
    pos = torch.tensor([ctx])
    cache0 = torch.randn(B, ctx + 1, 80)
    a, b = (extras.mla_block(torch, F, d, W, x, cache0.clone(), pos, cos, sin, "decode", impl, B)
            for impl in ("matmul", "triton"))
    return (a - b).abs().max().item()


if __name__ == "__main__":
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (below, not when this file is imported)
    widen_bf16_dot()
    json.dump({"kernel": kernel_errors(), "harness": harness_error()}, sys.stdout)
