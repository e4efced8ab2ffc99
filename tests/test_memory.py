"""The memory estimate (backends/memory.py) on the tiny model: the shape it reads is the model's, the
micro-batches it may switch to take the same optimizer step, and a night over its limit trains in
micro-batches or stops in one line before anything trains. How close the estimate comes to the
measured peak is a bench figure (bench/memory_estimate.py, bench/MEMORY.md), not asserted here."""

from __future__ import annotations

import json

import pytest
from conftest import assert_one_line_error, run_cli, say

from circadian.backends import LoadRequest, get_backend, memory
from circadian.backends.tokens import encode_chat
from circadian.core.config import TrainSettings
from circadian.core.errors import CircadianError
from circadian.store import adapters


def _rows(tokenizer, n: int) -> list:
    rows = []
    for i in range(n):
        messages = [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i} ok."}]
        rows.append(encode_chat(tokenizer, messages, 64))
    assert len({len(r) for r in rows}) == 1 and len({r.targets for r in rows}) == 1  # equal rows: equal shares
    return rows


def test_the_shape_counts_what_the_model_loads_and_lora_trains(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shape = memory.Shape.of_folder(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert shape.params == sum(p.numel() for p in model.parameters())
    lora = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert shape.lora_params(8) == sum(p.numel() for p in lora.parameters() if p.requires_grad)


def test_micro_batches_take_the_same_step_as_the_whole_batch(tiny_model):
    from peft import get_peft_model_state_dict

    states = []
    for accumulation in (1, 2):
        model = get_backend("torch").load(LoadRequest("tiny", tiny_model))
        settings = TrainSettings(  # float32 steps: bfloat16 products round a split batch's sums differently
            batch_size=4,
            grad_accumulation=accumulation,
            max_steps=1,
            min_steps=0,
            warmup_steps=0,
            anchor_weight=0,
            mixed_precision="off",
        )
        model.train(_rows(model.tokenizer, 4), [], settings, lambda _e: None)
        states.append(get_peft_model_state_dict(model.model))
    moved = [k for k in states[0] if "lora_B" in k and states[0][k].abs().max() > 0]
    assert moved  # the step changed the adapter, so agreeing means something
    for key in moved:
        assert states[0][key].numpy() == pytest.approx(states[1][key].numpy(), rel=1e-3, abs=1e-6), key


def test_over_the_limit_the_batch_is_split_and_below_every_split_it_stops(tiny_model):
    model = get_backend("torch").load(LoadRequest("tiny", tiny_model))
    rows = _rows(model.tokenizer, 8)
    settings = TrainSettings(batch_size=8)
    whole = memory.for_training(model, settings, rows)
    fitted, found, note = memory.fit_to_limit(model, settings, rows, quantize="none", limit=whole.total - 1)
    assert fitted.grad_accumulation == 2 and found.batch_size == 4 and found.total < whole.total
    assert "micro-batches of 4 rows" in note
    assert memory.fit_to_limit(model, settings, rows, quantize="none", limit=None)[0] is settings
    with pytest.raises(CircadianError, match="more than the 0 MB"):
        memory.fit_to_limit(model, settings, rows, quantize="none", limit=1)


def test_the_night_keeps_its_estimate_and_a_night_that_cannot_fit_stops_before_training(night):
    say(night, "My dog is called Biscuit.")
    planned = json.loads(run_cli("sleep", "--estimate", "--json").stdout)
    assert planned["total_mb"] > planned["weights_mb"] > 0 and planned["fits"]
    stopped = run_cli("sleep", env={"CIRCADIAN_TRAIN__MEMORY_LIMIT_MB": "1"})
    assert_one_line_error(stopped)
    assert "training would take about" in stopped.stderr and adapters.current_version(night) is None
    done = run_cli("sleep", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    kept = adapters.get(night, json.loads(done.stdout)["version"]).manifest.memory
    assert kept["measured_mb"] > 0 and kept["estimate"]["total_mb"] > 0 and kept["grad_accumulation"] == 1
    assert "memory: estimated" in (night.runs / json.loads(done.stdout)["cycle_id"] / "report.md").read_text()
