"""Backend selection facts that need no model."""

from __future__ import annotations


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    from rerank.inference import native_bf16

    assert native_bf16("flags : fpu avx2 avx512f avx512_bf16 vaes") is True
    assert native_bf16("flags : fpu avx2 amx_bf16 amx_tile") is True
    assert native_bf16("flags : fpu avx2 avx512f vaes") is False
