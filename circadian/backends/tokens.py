"""Tokenizing chat rows for training: loss on every assistant turn, nothing else.

mlx-lm's `--mask-prompt` trains only the last message; here each assistant span of a multi-turn
conversation is found by templating the conversation's prefixes (the chat template must be
prefix-stable, which is checked), so every assistant turn, its end-of-turn token included, is a
target. Validators refuse implausible datasets before any training. Batching sorts by length so
a batch pads little (mlx-lm's length sort is a no-op, issue #596: ~25% padding).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from circadian.core.errors import CircadianError


@dataclass
class Example:
    """Token ids and a 0/1 target mask of the same length (mask[i] = 1: predict ids[i])."""

    ids: list[int]
    mask: list[int]
    anchor: bool = False  # train toward the base model's distribution (KL) instead of these targets
    teacher: object = None  # for an anchor: the base model's top-k (indices, log-probs) per position, cached

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def targets(self) -> int:
        return sum(self.mask)


def _ids(encoded) -> list[int]:
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    if encoded and isinstance(encoded[0], list):
        encoded = encoded[0]
    return list(encoded)


def text_ids(tokenizer, text: str) -> list[int]:
    """Given a tokenizer and plain text, return its token ids (no special tokens)."""
    return _ids(tokenizer(text, add_special_tokens=False))


def template_ids(tokenizer, messages: list[dict], *, generation_prompt: bool = False) -> list[int]:
    """Given a HF tokenizer and messages, return the chat-templated token ids."""
    return _ids(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt))


def with_system(messages: list[dict], system_prompt: str) -> list[dict]:
    """Given messages and the chat's system prompt, return them under it unless they have their own
    (a fact is learned in the context it will be asked in)."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def encode_chat(tokenizer, messages: list[dict], max_length: int = 2048, system_prompt: str = "") -> Example:
    """Given messages (put under `system_prompt` when they have none), return the templated ids with
    every assistant turn as a target.

    Raise CircadianError if the template is not prefix-stable or an assistant span is empty.
    """
    messages = with_system(messages, system_prompt)
    full = template_ids(tokenizer, messages)
    mask = [0] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = template_ids(tokenizer, messages[:i], generation_prompt=True) if i else []
        through = template_ids(tokenizer, messages[: i + 1])
        if full[: len(before)] != before or full[: len(through)] != through:
            raise CircadianError(
                "the chat template is not prefix-stable: cannot locate assistant turns "
                "(templates that rewrite earlier turns are not supported)"
            )
        if len(through) <= len(before):
            raise CircadianError(f"assistant turn {i} has no tokens after templating")
        for j in range(len(before), len(through)):
            mask[j] = 1
    return Example(full[:max_length], mask[:max_length])


def encode_text(tokenizer, text: str, max_length: int = 256) -> list[Example]:
    """Given plain text, return chunks of at most max_length tokens, every token a target but the first."""
    ids = text_ids(tokenizer, text)
    chunks = []
    for start in range(0, len(ids), max_length):
        piece = ids[start : start + max_length]
        if len(piece) > 1:
            chunks.append(Example(piece, [0] + [1] * (len(piece) - 1)))
    return chunks


@dataclass
class MaskReport:
    """What the validator saw."""

    examples: int
    tokens: int
    targets: int

    @property
    def target_ratio(self) -> float:
        return self.targets / self.tokens if self.tokens else 0.0


def validate(examples: list[Example], *, min_ratio: float = 0.03, max_ratio: float = 0.9) -> MaskReport:
    """Given training examples, return their mask report.

    Raise CircadianError if any example has no target (a missing assistant span) or the share of
    trained tokens is implausible (prompt leaking into the loss, or almost nothing trained).
    """
    empty = [i for i, e in enumerate(examples) if e.targets == 0]
    if empty:
        raise CircadianError(
            f"{len(empty)} training example(s) have no assistant tokens to learn "
            f"(first: #{empty[0]}); refusing to train"
        )
    report = MaskReport(len(examples), sum(map(len, examples)), sum(e.targets for e in examples))
    if examples and not min_ratio <= report.target_ratio <= max_ratio:
        raise CircadianError(
            f"implausible trained-token ratio {report.target_ratio:.2f} "
            f"(expected {min_ratio}-{max_ratio}); refusing to train"
        )
    return report


def length_batches(lengths: list[int], batch_size: int, *, seed: int, shuffle: bool = True) -> list[list[int]]:
    """Given example lengths, return batches of indices grouped by similar length.

    Indices are sorted by length, cut into batches of `batch_size` (the last may be smaller, so a
    dataset smaller than the batch still trains), and the batch order is shuffled with `seed`.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle:
        random.Random(seed).shuffle(batches)
    return batches


def padding_share(lengths: list[int], batches: list[list[int]]) -> float:
    """Given lengths and batches, return the share of padded positions (0 = none)."""
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths) / padded if padded else 0.0
