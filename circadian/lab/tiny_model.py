"""A tiny random Llama (2 layers of 64 by default) with a real tokenizer and chat template: the model
of the tests and of the device checks in `bench/` (`cuda_check.py`), which must not wait on a real one."""

from __future__ import annotations

import json
from pathlib import Path


def build_tiny_model(
    target: Path, tokenizer_source: Path, *, max_positions: int = 32768, hidden: int = 64, layers: int = 2
) -> Path:
    """Write a small Llama (random weights, fixed seed; 2 layers of 64 by default) with the given
    tokenizer into `target`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        initializer_range=0.3,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        rope_theta=100000.0,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # wide random weights give varied words; the end tokens never win greedily, so replies run to max_tokens
        model.model.embed_tokens.weight[[0, 1, 2]] = 0.0
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    config_path = target / "config.json"
    data = json.loads(config_path.read_text())
    data["rope_theta"] = 100000.0  # mlx-lm reads the top-level key
    config_path.write_text(json.dumps(data, indent=2))
    return target
