"""Training in bfloat16 autocast (`train.mixed_precision`, backends/precision.py): when `auto` turns it
on, and that the steps then learn as float32 steps do while the adapter stays float32. How much faster
it is is a bench figure (bench/train_throughput.py, bench/THROUGHPUT.md), not asserted here."""

from __future__ import annotations

import platform

import pytest
from conftest import code_rows, few_steps

from circadian.backends import LoadRequest, get_backend, precision


def test_auto_turns_autocast_on_only_where_the_processor_has_bfloat16(tmp_path):
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    flag = "avx512_bf16" if x86 else "bf16"
    key = "flags" if x86 else "Features"
    with_bf16, without = tmp_path / "with", tmp_path / "without"
    with_bf16.write_text(f"processor\t: 0\n{key}\t\t: fpu sse2 avx2 avx512f {flag} avx512_vnni\n\n")
    without.write_text(f"processor\t: 0\n{key}\t\t: fpu sse2 avx2 avx512f avx512_vnni\n\n")
    assert precision.cpu_has_native_bf16(with_bf16)
    assert not precision.cpu_has_native_bf16(without)
    assert not precision.cpu_has_native_bf16(tmp_path / "missing")  # macOS: no /proc/cpuinfo

    assert precision.training_autocast("auto", "cpu", "float32") == precision.cpu_has_native_bf16()
    assert precision.training_autocast("bfloat16", "cpu", "float32")
    assert not precision.training_autocast("off", "cpu", "float32")
    for dtype in ("bfloat16", "float16", "torch.bfloat16"):  # weights that already compute in their dtype
        assert not precision.training_autocast("bfloat16", "cpu", dtype)
        assert not precision.training_autocast("auto", "cuda", dtype)


def test_bfloat16_steps_learn_as_float32_steps_do_and_the_adapter_stays_float32(tiny_model):
    from peft import get_peft_model_state_dict

    model = get_backend("torch").load(LoadRequest("tiny", tiny_model))
    examples = code_rows(model.tokenizer)
    before = sum(s for s, _n in model.score(examples))
    runs = {}
    for mixed in ("off", "bfloat16"):
        model.set_adapter(None, None)
        settings = few_steps(8, eval_every=4, mixed_precision=mixed)
        result = model.train(examples, examples[:2], settings, lambda event: None)
        state = get_peft_model_state_dict(model.model)
        assert {str(t.dtype) for t in state.values()} == {"torch.float32"}  # the adapter and its steps' sums
        runs[mixed] = (result, sum(s for s, _n in model.score(examples)), state)

    (off, off_loss, off_state), (bf16, bf16_loss, bf16_state) = runs["off"], runs["bfloat16"]
    assert off.precision == "float32" and bf16.precision == "bfloat16 autocast"
    assert off_loss < before and bf16_loss < before
    assert (before - bf16_loss) == pytest.approx(before - off_loss, rel=0.2)  # as far, measured in float32
    moved = max((off_state[k] - bf16_state[k]).abs().max().item() for k in off_state)
    assert moved > 1e-6  # the steps really computed in another precision
