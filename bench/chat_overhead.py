"""Chat-layer overhead: circadian's turn (template, stream, stats, logging with fsync) against the
plain library call a user would otherwise make, on the same model, prompt and token budget.

Run as: .venv/bin/python bench/chat_overhead.py [--tokens 64] [--reps 3] [--backends torch,mlx]

torch: `model.generate` (transformers) vs `ChatSession.respond` on the torch backend.
mlx:   `mlx_lm.generate` vs `ChatSession.respond` on the mlx backend (slow on Linux CPU).
Prints time-to-first-token, tokens/s and the overhead ratio per backend (target: under 5%).

Both sides decode the same way (the model's own template, greedy, no repetition penalty), so the
tokens are the same. Two more rows, torch only: a circadian turn with a memory adapter loaded (a LoRA
adapter initialized to zero, so the text stays the same), and one with the adapter and its router (fitted
on a few questions; the prompt is general, so the base model answers). Their ratio is the router's own
cost per turn: one forward pass over the user's message. And a pair on a message that tells something
(TOLD), without and with retrieval over a memory index holding a bench day's turns: the index's cost
per turn that the reply waits for (its search before the reply, the turn's indexing after it), and
the turn's facts written in the background after the reply, as `circadian chat` does (timed apart).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from circadian.core.config import Config  # noqa: E402
from circadian.core.paths import Paths  # noqa: E402
from circadian.day.assistant import Assistant, ChatSession  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper and a storm."
TOLD = "My brother Tomas keeps the lighthouse on Texel. Write a short story about him and a storm."


def plain_torch(model_dir: Path, tokens: int):
    """Return a function timing plain transformers generate: (ttft, seconds, new tokens)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )

    class FirstToken(BaseStreamer):
        def __init__(self):
            self.calls, self.first = 0, None

        def put(self, value):
            self.calls += 1
            if self.calls == 2 and self.first is None:
                self.first = time.perf_counter()

        def end(self):
            pass

    def run():
        streamer = FirstToken()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **inputs, max_new_tokens=tokens, do_sample=False, streamer=streamer, pad_token_id=tokenizer.pad_token_id
            )
        end = time.perf_counter()
        n = out.shape[1] - inputs["input_ids"].shape[1]
        text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return streamer.first - start, end - start, n, text.strip()

    return run


def plain_mlx(model_dir: Path, tokens: int):
    """Return a function timing plain mlx_lm.stream_generate: (ttft, seconds, new tokens)."""
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(str(model_dir))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)

    def run():
        start = time.perf_counter()
        first, n, text = None, 0, ""
        for response in stream_generate(model, tokenizer, prompt, max_tokens=tokens, sampler=make_sampler(0.0)):
            first = first or time.perf_counter()
            n += 1
            text += response.text
        return first - start, time.perf_counter() - start, n, text.strip()

    return run


PERSONAL = ["What is my dog called?", "Where does my brother live?", "When is my birthday?", "What do I do for work?"]
GENERAL = ["What is the capital of France?", "Write a poem about rain.", "How do I boil an egg?", "What is 7 + 5?"]


def with_adapter(assistant, routed: bool) -> None:
    """Give the assistant's torch model a zero-initialized LoRA adapter, and with `routed` a fitted router."""
    from peft import LoraConfig, get_peft_model

    from circadian.backends import router

    model = assistant.model
    model.model = get_peft_model(model.base, LoraConfig(r=16, target_modules="all-linear")).eval()
    if not routed:
        return
    layers = model.router_layers()
    model.router = router.fit(
        model.features(PERSONAL, layers), model.features(GENERAL, layers), layers=layers, questions=PERSONAL
    )


def fill_memory(paths: Paths) -> int:
    """Log and index a bench day's user messages (bench/recall/days/dev-tomasz.json); return how many."""
    import json

    from circadian.store import memories, memory_index

    day = json.loads((Path(__file__).resolve().parent / "recall" / "days" / "dev-tomasz.json").read_text())
    said = [m["content"] for session in day["sessions"] for m in session if m["role"] == "user"]
    for text in said:
        record = memories.make_record(
            [{"role": "user", "content": text}, {"role": "assistant", "content": "OK."}],
            session="bench",
            model="bench",
            adapter=None,
            source="chat",
        )
        memories.append(paths, [record])
        memory_index.add_turn(paths, record)
    return len(said)


def circadian_turn(
    backend: str,
    home: Path,
    models: Path,
    tokens: int,
    adapter: str = "",
    memory: bool = False,
    prompt: str = PROMPT,
):
    """Return a function timing one logged circadian turn: (ttft, seconds, new tokens, reply, seconds of
    background work after it). With `memory`, retrieval is on over a memory index holding a bench day's
    turns, and each turn is indexed and its facts written in the background, as `circadian chat` does."""
    config = Config()
    config.model.backend = backend
    config.chat.max_tokens = tokens
    config.chat.system_prompt, config.chat.repetition_penalty = "", 1.0  # decode as the plain call does
    config.chat.retrieval = memory
    paths = Paths(home, "bench", models).ensure()
    if memory:
        fill_memory(paths)
    assistant = Assistant(paths, config)
    if adapter:
        with_adapter(assistant, routed=adapter == "routed")

    after = None
    if memory:
        from circadian.night.knowledge import pipeline
        from circadian.night.knowledge.conversation import Conversation, Turn
        from circadian.night.knowledge.same_day import generators, index_turn

        after = lambda records, turn_id: index_turn(paths, records, turn_id)  # noqa: E731
        warm = Conversation("warm", "chat", [Turn("user", "My cat is called Tom.", "warm", 0)])
        pipeline.mine([warm], list(generators()))  # spaCy loads once per chat: not in the turns timed

    if memory:
        run_direct.costs = direct_costs(assistant, paths)

    def run():
        session = ChatSession(assistant, source="bench", after_logged=after)
        start = time.perf_counter()
        result = session.respond(prompt)
        replied = time.perf_counter()
        session.settle()
        return result.ttft_s, replied - start, result.tokens, result.reply, time.perf_counter() - replied

    return run


def run_direct():
    """Holds the direct costs measured by `direct_costs` (set when the memory row is built)."""


def direct_costs(assistant, paths: Paths, reps: int = 25) -> dict:
    """The memory index's own work per turn, timed alone (median ms): the search before the reply
    (ChatSession.recall: tokenizing, BM25, the ledger) and the turn's indexing after it (add_turn)."""
    from circadian.store import memories, memory_index

    session = ChatSession(assistant, source="bench")
    searches, indexing = [], []
    for n in range(reps):
        start = time.perf_counter()
        session.recall(TOLD)
        searches.append(time.perf_counter() - start)
        record = memories.make_record(
            [{"role": "user", "content": f"{TOLD} ({n})"}, {"role": "assistant", "content": "OK."}],
            session="direct",
            model="bench",
            adapter=None,
            source="chat",
        )
        start = time.perf_counter()
        memory_index.add_turn(paths, record)
        indexing.append(time.perf_counter() - start)
    return {"search_ms": statistics.median(searches) * 1e3, "index_ms": statistics.median(indexing) * 1e3}


def measure(run, reps: int):
    run()  # warm-up
    samples = [run() for _ in range(reps)]
    ttft = statistics.median(s[0] for s in samples)
    seconds = statistics.median(s[1] for s in samples)
    behind = statistics.median(s[4] if len(s) > 4 else 0.0 for s in samples)
    return ttft, seconds, samples[0][2], samples[0][3], behind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--backends", default="torch,mlx")
    args = parser.parse_args()
    from circadian.backends import embedded

    models = Paths.resolve(None).models
    model_dir = embedded.build(models)
    print(f"model: embedded SmolLM2-135M-Instruct · prompt tokens budget {args.tokens} · median of {args.reps}")
    print(f"{'backend':<8} {'path':<26} {'ttft s':>8} {'tok/s':>8} {'total s':>8} {'tokens':>7}")
    for backend in args.backends.split(","):
        plain = plain_torch(model_dir, args.tokens) if backend == "torch" else plain_mlx(model_dir, args.tokens)
        rows = {}
        with tempfile.TemporaryDirectory() as home:
            runs = [("plain", plain), ("circadian", circadian_turn(backend, Path(home) / "a", models, args.tokens))]
            told = [  # a message that tells something: it is indexed and its facts written, as chat does
                ("circadian, told", circadian_turn(backend, Path(home) / "t", models, args.tokens, prompt=TOLD)),
                (
                    "circadian + memory",
                    circadian_turn(backend, Path(home) / "m", models, args.tokens, memory=True, prompt=TOLD),
                ),
            ]
            runs += told
            if backend == "torch":
                for kind in ("adapter", "routed"):
                    runs.append(
                        (f"circadian + {kind}", circadian_turn(backend, Path(home) / kind, models, args.tokens, kind))
                    )
            for name, run in runs:
                rows[name] = measure(run, args.reps)
        label = {"torch": "transformers.generate", "mlx": "mlx_lm.stream_generate"}[backend]
        for name, (ttft, secs, n, _text, _behind) in rows.items():
            print(
                f"{backend:<8} {label if name == 'plain' else 'circadian ChatSession' + name[9:]:<26} "
                f"{ttft:>8.3f} {n / secs:>8.1f} {secs:>8.2f} {n:>7}"
            )
        p_secs, p_n, p_text = rows["plain"][1:4]
        for name in [n for n in rows if n not in ("plain", "circadian, told", "circadian + memory")]:
            c_secs, c_n, c_text = rows[name][1:4]
            overhead = (c_secs / c_n) / (p_secs / p_n) - 1
            print(
                f"{backend:<8} {name} overhead per token: {overhead * 100:+.1f}%  "
                f"(same tokens: {p_n == c_n}, same text: {p_text == c_text})"
            )
        (c_secs, c_n, c_text), (m_secs, m_n, m_text, behind) = (
            rows["circadian, told"][1:4],
            rows["circadian + memory"][1:],
        )
        print(
            f"{backend:<8} the memory index's cost per turn, the reply waits for it (search + indexing): "
            f"{(m_secs / m_n) / (c_secs / c_n) - 1:+.1%} per token (same text: {c_text == m_text}); "
            f"the turn's facts written after the reply, in the background: {behind:.3f} s "
            f"({behind / m_secs:.1%} of the turn)"
        )
        costs = run_direct.costs
        own = (costs["search_ms"] + costs["index_ms"]) / 1e3
        print(
            f"{backend:<8} timed alone: search {costs['search_ms']:.1f} ms + indexing {costs['index_ms']:.1f} ms "
            f"= {own / c_secs:.2%} of a {c_secs:.2f} s turn (the rest of the difference above is the longer "
            "prompt of what was recalled)"
        )
        if "circadian + routed" in rows:
            a_secs, r_secs = rows["circadian + adapter"][1], rows["circadian + routed"][1]
            print(f"{backend:<8} the router's own cost per turn (routed vs adapter): {r_secs / a_secs - 1:+.1%}")


if __name__ == "__main__":
    main()
