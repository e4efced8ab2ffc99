"""Backends: discovery through entry points (a third-party one too), loading, streaming,
cancelling, adapter switching and refusing an adapter whose weights do not match its manifest."""

from __future__ import annotations

import json
import os
import threading
import types

import pytest
from conftest import assert_one_line_error, code_rows, few_steps, run_cli

from circadian.backends import (
    GenerationSettings,
    LoadRequest,
    auto_backend_name,
    backend_names,
    get_backend,
    select_backend,
)
from circadian.core.errors import CircadianError
from circadian.core.fsutil import atomic_write_json, atomic_write_text, sha256_file
from circadian.store import adapters

HELLO = [{"role": "user", "content": "Hello there"}]


def test_builtin_backends_are_registered_through_entry_points():
    assert {"mlx", "torch"} <= set(backend_names())
    assert auto_backend_name() == "torch"  # this is Linux; Apple Silicon picks mlx
    assert select_backend("auto").name == "torch"


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(CircadianError, match="unknown backend 'nope'.*mlx.*torch"):
        get_backend("nope")


PLUGIN = '''
"""A third-party backend: answers by echoing the last user message, word by word."""
from circadian.backends import Chunk


class EchoModel:
    backend = "echo"
    device = "none"

    def __init__(self, request):
        self.model_name = request.model_name
        self.adapter_version = request.adapter_version

    def stream(self, messages, settings, cancel=None):
        for word in ("echo: " + messages[-1]["content"]).split(" "):
            yield Chunk(word + " ", 1)

    def set_adapter(self, adapter_path, adapter_version):
        self.adapter_version = adapter_version


class EchoBackend:
    name = "echo"

    def unavailable_reason(self):
        return None

    def load(self, request):
        return EchoModel(request)
'''


@pytest.fixture
def echo_distribution(tmp_path):
    """Install a fake distribution `circadian-echo` (module + dist-info with an entry point) on a path."""
    site = tmp_path / "site"
    (site / "circadian_echo").mkdir(parents=True)
    (site / "circadian_echo" / "__init__.py").write_text(PLUGIN)
    info = site / "circadian_echo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: circadian-echo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[circadian.backends]\necho = circadian_echo:EchoBackend\n")
    return site


def test_third_party_backend_registers_without_touching_circadian(echo_distribution, tiny_model):
    env = {"PYTHONPATH": str(echo_distribution) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    listed = run_cli("backends", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)["backends"]}
    assert rows["echo"]["distribution"] == "circadian-echo" and rows["echo"]["available"]
    answered = run_cli(
        "ask",
        "are you there",
        "--json",
        env={**env, "CIRCADIAN_MODEL__BACKEND": "echo", "CIRCADIAN_MODEL__NAME": str(tiny_model)},
    )
    assert answered.returncode == 0, answered.stderr
    result = json.loads(answered.stdout)
    assert result["reply"] == "echo: are you there" and result["backend"] == "echo" and result["logged"]


def test_cli_unknown_backend_is_one_line_error(tiny_model):
    result = run_cli("ask", "hi", env={"CIRCADIAN_MODEL__BACKEND": "nope", "CIRCADIAN_MODEL__NAME": str(tiny_model)})
    assert_one_line_error(result)
    assert "unknown backend 'nope'" in result.stderr


def test_missing_hub_model_is_one_line_error():
    result = run_cli("ask", "hi", env={"CIRCADIAN_MODEL__NAME": "nobody-here/not-a-model-xyz", "HF_HUB_OFFLINE": "1"})
    assert_one_line_error(result)
    assert "not in the local Hugging Face cache and the hub cannot be reached" in result.stderr


@pytest.fixture(scope="module")
def torch_tiny(tiny_model):
    return get_backend("torch").load(LoadRequest("tiny", tiny_model))


def _reply(model, max_tokens=12, cancel=None):
    chunks = list(model.stream(HELLO, GenerationSettings(max_tokens=max_tokens), cancel))
    return "".join(c.text for c in chunks), sum(c.tokens for c in chunks)


def test_torch_stream_is_greedy_deterministic_and_counts_tokens(torch_tiny):
    text, tokens = _reply(torch_tiny)
    assert text and tokens == 12
    assert _reply(torch_tiny) == (text, tokens)


def test_torch_stream_stops_when_cancelled(torch_tiny):
    cancel = threading.Event()
    stream = torch_tiny.stream(HELLO, GenerationSettings(max_tokens=500), cancel)
    produced = 0
    for chunk in stream:
        produced += chunk.tokens
        if produced >= 3:
            cancel.set()
    assert produced < 20


def test_torch_batched_greedy_answers_match_one_by_one(torch_tiny):
    from circadian.night import evaluate

    questions = [
        "Hi",
        "What is the capital of a country far away from here?",
        "Name a colour.",
        "Tell me something about cats and dogs living together in a small flat.",
    ]
    single = [evaluate.answer(torch_tiny, q, 10) for q in questions]
    assert len(set(single)) > 1  # different prompts, different replies: the comparison means something
    assert evaluate.answers(torch_tiny, questions, 10, batch_size=3) == single


def _make_peft_adapter(base_path, folder, version, *, scale=5.0):
    """Save a real PEFT LoRA adapter for the tiny model with non-zero B, plus its manifest."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_path),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]),
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, scale)
    model.save_pretrained(folder)
    weights = {p.name: sha256_file(p) for p in folder.iterdir() if p.suffix == ".safetensors"}
    atomic_write_json(
        folder / "manifest.json",
        {"schema_version": 1, "version": version, "backend": "torch", "base_model": str(base_path), "weights": weights},
    )
    return folder


def test_torch_set_adapter_changes_and_restores_replies(torch_tiny, tiny_model, tmp_path):
    base_text, _ = _reply(torch_tiny)
    folder = _make_peft_adapter(tiny_model, tmp_path / "v0001-test", "v0001-test")
    torch_tiny.set_adapter(folder, "v0001-test")
    adapted, _ = _reply(torch_tiny)
    assert torch_tiny.adapter_version == "v0001-test" and adapted != base_text
    torch_tiny.set_adapter(None, None)
    assert _reply(torch_tiny)[0] == base_text and torch_tiny.adapter_version is None


def test_active_adapter_refuses_weights_that_do_not_match_manifest(paths, tiny_model):
    folder = _make_peft_adapter(tiny_model, paths.adapters / "v0001-x", "v0001-x")
    atomic_write_text(paths.current, "v0001-x\n")
    assert adapters.active_adapter(paths).version == "v0001-x"
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CircadianError, match="does not match the sha256"):
        adapters.active_adapter(paths)
    result = run_cli("ask", "hi", env={"CIRCADIAN_MODEL__NAME": str(tiny_model)})
    assert_one_line_error(result)
    assert "refusing to load" in result.stderr


def test_mlx_backend_loads_and_streams_tiny_model(tiny_model):
    model = get_backend("mlx").load(LoadRequest("tiny", tiny_model))
    chunks = list(model.stream(HELLO, GenerationSettings(max_tokens=8)))
    assert sum(c.tokens for c in chunks) == 8
    assert "".join(c.text for c in chunks).strip()
    assert model.backend == "mlx" and model.adapter_version is None


def _make_mlx_adapter(base_path, folder, version):
    """Save a real mlx-lm LoRA adapter for the tiny model (non-zero B), plus its manifest."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_map_with_path
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, _tokenizer = load(str(base_path))
    model.freeze()
    lora = {"rank": 4, "scale": 20.0, "dropout": 0.0}
    linear_to_lora_layers(model, 2, lora)
    mx.random.seed(1)
    model.update(
        tree_map_with_path(
            lambda path, p: mx.random.normal(p.shape) * 0.5 if path.endswith("lora_b") else p,
            model.trainable_parameters(),
        )
    )
    folder.mkdir(parents=True)
    mx.save_safetensors(str(folder / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    (folder / "adapter_config.json").write_text(
        json.dumps({"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": lora})
    )
    atomic_write_json(
        folder / "manifest.json",
        {
            "schema_version": 1,
            "version": version,
            "backend": "mlx",
            "base_model": str(base_path),
            "weights": {"adapters.safetensors": sha256_file(folder / "adapters.safetensors")},
        },
    )
    return folder


def test_mlx_set_adapter_changes_and_restores_replies(tiny_model, tmp_path):
    model = get_backend("mlx").load(LoadRequest("tiny", tiny_model))
    base = "".join(c.text for c in model.stream(HELLO, GenerationSettings(max_tokens=8)))
    folder = _make_mlx_adapter(tiny_model, tmp_path / "v0001-mlx", "v0001-mlx")
    model.set_adapter(folder, "v0001-mlx")
    adapted = "".join(c.text for c in model.stream(HELLO, GenerationSettings(max_tokens=8)))
    assert model.adapter_version == "v0001-mlx" and adapted != base
    model.set_adapter(None, None)
    assert "".join(c.text for c in model.stream(HELLO, GenerationSettings(max_tokens=8))) == base


def test_adapter_of_another_backend_falls_back_to_base_with_a_note(paths, tiny_model, use_tiny):
    from circadian.core.config import load_config
    from circadian.day.assistant import Assistant

    _make_mlx_adapter(tiny_model, paths.adapters / "v0001-mlx", "v0001-mlx")
    atomic_write_text(paths.current, "v0001-mlx\n")
    notes = []
    assistant = Assistant(paths, load_config(paths.config)[0], say=notes.append)
    assert assistant.backend.name == "torch" and assistant.adapter_version is None
    assert any("trained with the mlx backend" in n for n in notes)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_kl_anchor_keeps_the_base_distribution_where_cross_entropy_moves_it(backend, tiny_model):
    """Anchor rows trained with the KL-to-base term leave the model's scores near the base; the
    same rows trained with plain cross-entropy (anchor_weight 0) move them. Both backends."""
    from circadian.backends.tokens import encode_chat

    model = get_backend(backend).load(LoadRequest("tiny", tiny_model))
    rows = [
        [
            {"role": "user", "content": f"Tell me about topic {i}."},
            {"role": "assistant", "content": f"Topic {i} is a zebra zebra zebra story."},
        ]
        for i in range(4)
    ]
    probe = [encode_chat(model.tokenizer, r, 64) for r in rows]
    base = [s for s, _n in model.score(probe)]

    def shift(weight: float) -> float:
        model.set_adapter(None, None)
        examples = [encode_chat(model.tokenizer, r, 64) for r in rows]
        for e in examples:
            e.anchor = True
        steps = 12 if backend == "torch" else 4  # MLX on a Linux CPU is slow
        settings = few_steps(steps, learning_rate=0.02, anchor_weight=weight)
        model.train(examples, [], settings, lambda event: None)
        return sum(abs(a - b) for a, b in zip((s for s, _n in model.score(probe)), base)) / len(base)

    anchored, plain = shift(1.0), shift(0.0)
    assert plain > 1.0, plain  # cross-entropy on the rows moves their scores a lot
    assert anchored < plain / 5, (anchored, plain)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_blend_adapter_interpolates_between_start_and_trained(backend, tiny_model, tmp_path):
    from circadian.backends.tokens import encode_chat

    model = get_backend(backend).load(LoadRequest("tiny", tiny_model))
    rows = [
        encode_chat(
            model.tokenizer,
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, friend."}],
            64,
        )
    ]
    nll = lambda: model.score(rows)[0][0]  # noqa: E731
    base = nll()
    make = _make_peft_adapter if backend == "torch" else _make_mlx_adapter
    folder = make(tiny_model, tmp_path / "v0001-blend", "v0001-blend")
    model.set_adapter(folder, "v0001-blend")
    adapted = nll()
    assert abs(adapted - base) > 1e-3
    model.blend_adapter(None, 0.0)  # all the way back to the base model
    assert nll() == pytest.approx(base, rel=1e-4)
    model.blend_adapter(None, 0.5)
    halfway = nll()
    assert abs(halfway - base) > 1e-5 and abs(halfway - adapted) > 1e-5  # a model of its own between the two
    model.blend_adapter(folder, 0.2)  # the start is the trained adapter itself: nothing moves
    assert nll() == pytest.approx(adapted, rel=1e-4)
    model.blend_adapter(None, 1.0)
    assert nll() == pytest.approx(adapted, rel=1e-4)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_fuse_adapter_writes_a_base_that_scores_as_the_adapter_did(backend, tiny_model, tmp_path):
    """`circadian consolidate`'s fuse: the folder written loads as a plain model of the same backend and
    gives the adapter's log-likelihoods, not the base's."""
    from circadian.backends.tokens import encode_chat

    model = get_backend(backend).load(LoadRequest("tiny", tiny_model))
    rows = [
        encode_chat(
            model.tokenizer,
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, friend."}],
            64,
        )
    ]
    base = model.score(rows)[0][0]
    make = _make_peft_adapter if backend == "torch" else _make_mlx_adapter
    model.set_adapter(make(tiny_model, tmp_path / "v0001-fuse", "v0001-fuse"), "v0001-fuse")
    adapted = model.score(rows)[0][0]
    assert abs(adapted - base) > 1e-2
    model.fuse_adapter(tmp_path / "fused")
    assert model.adapter_version is None
    fused = get_backend(backend).load(LoadRequest("fused", tmp_path / "fused"))
    assert fused.score(rows)[0][0] == pytest.approx(adapted, rel=1e-3)
    assert {p.suffix for p in (tmp_path / "fused").iterdir()} >= {".safetensors", ".json"}
    with pytest.raises(CircadianError, match="no adapter to fuse"):
        fused.fuse_adapter(tmp_path / "again")


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_muon_trains_the_lora_matrices_as_far_as_adamw_and_otherwise(backend, tiny_model):
    """`train.optimizer = "muon"`: the rows are learned at the same learning rate as AdamW's (the step
    sizes matched), by a different path (other weights)."""
    model = get_backend(backend).load(LoadRequest("tiny", tiny_model))
    examples = code_rows(model.tokenizer)
    before = sum(s for s, _n in model.score(examples))

    def trained(optimizer: str) -> float:
        model.set_adapter(None, None)
        settings = few_steps(8 if backend == "torch" else 3, optimizer=optimizer)
        model.train(examples, [], settings, lambda event: None)
        return sum(s for s, _n in model.score(examples))

    adamw, muon = trained("adamw"), trained("muon")
    assert adamw < before and muon < before  # both learn the rows
    assert abs(muon - adamw) > 1e-3  # by another path
    # step sizes matched to AdamW's steady RMS (0.2): its first, sign-like steps move about 5x more, so a
    # few steps of Muon make a fifth to a half of AdamW's progress here; unscaled, about a twentieth
    assert (before - muon) > 0.15 * (before - adamw)


def test_the_learning_rate_schedule_is_one_function_on_both_backends():
    import mlx.core as mx

    from circadian.backends.training import warmup_cosine

    python = [warmup_cosine(s, total=20, warmup=5) for s in range(22)]
    assert python[0] == 0.2 and python[4] == 1.0 and python[5] == 1.0  # warm-up from 1/5, then the peak
    assert all(a >= b for a, b in zip(python[5:], python[6:])) and abs(python[20] - 0.1) < 1e-9  # cosine to 10%
    ops = types.SimpleNamespace(minimum=mx.minimum, maximum=mx.maximum, cos=mx.cos, where=mx.where)
    traced = [warmup_cosine(mx.array(s), total=20, warmup=5, ops=ops).item() for s in range(22)]
    assert traced == pytest.approx(python, abs=1e-6)


def test_early_stopping_keeps_the_best_step_and_waits_for_min_steps():
    from circadian.backends.training import EarlyStopping

    stopping = EarlyStopping(patience=2, min_steps=6, min_delta=0.01)
    stopping.start(2.0)
    assert stopping.observe(2, 1.5) and not stopping.observe(4, 1.495)  # less than min_delta is no improvement
    assert not stopping.observe(6, 1.6) and stopping.should_stop(6)
    assert (stopping.best, stopping.best_step, stopping.initial) == (1.5, 2, 2.0)
    early = EarlyStopping(patience=1, min_steps=10, min_delta=0.0)
    early.start(1.0)
    early.observe(2, 1.1)
    assert not early.should_stop(2)  # patience is used up, but not before min_steps


def test_the_cached_teacher_kl_is_zero_at_the_start_and_never_more_than_the_full_kl(tiny_model):
    """The KL anchor's teacher (the base) is cached once as top-k log-probs per position; the KL over that
    coarsening is 0 while the adapter changes nothing, and at most the full KL once it does."""
    import torch

    from circadian.backends.tokens import encode_chat
    from circadian.core.config import TrainSettings

    model = get_backend("torch").load(LoadRequest("tiny", tiny_model))
    rows = [
        encode_chat(
            model.tokenizer,
            [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"Number {i} it is."}],
            64,
        )
        for i in range(4)
    ]
    for row in rows:
        row.anchor = True
    settings = TrainSettings(max_steps=1, max_epochs=1, batch_size=4, eval_every=100, min_steps=0)
    model.train(rows, [], settings, lambda event: None)  # a new adapter, and the teacher cached
    assert all(r.teacher is not None for r in rows)
    with torch.no_grad():
        for name, p in model.model.named_parameters():
            if "lora_B" in name:
                p.zero_()  # the adapter changes nothing: the student is the teacher
        assert float(model._batch_loss(rows, 1.0)) < 1e-5
        for p in model.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)  # move the adapter
        cached = float(model._batch_loss(rows, 1.0))
        for row in rows:
            row.teacher = None
        full = float(model._batch_loss(rows, 1.0))
    assert 0 < cached <= full + 1e-4, (cached, full)


def test_unreadable_weights_are_one_line(tiny_model, tmp_path):
    """A model folder whose safetensors file was cut short (a full disk, a broken copy)."""
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    result = run_cli("ask", "--no-log", "hello", env={"CIRCADIAN_MODEL__NAME": str(broken)})
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("circadian: the torch backend cannot load")


OUT_OF_MEMORY = """
import os, resource, sys
import torch, transformers  # mapped before the limit, as a process that has started would have them
from circadian.cli import main
size = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + int(os.environ["HEADROOM_MB"]) * 2**20, resource.RLIM_INFINITY))
main(sys.argv[1:])
"""


def test_out_of_memory_at_load_is_one_line(embedded_model, tmp_path):
    """The real `ask` under an address-space limit 300 MB above what the libraries take: the tokenizer
    (about 100 MB of address space, measured) fits, the embedded model's weights
    (about 540 MB in float32) do not, and the user reads one line. With 150 MB the tokenizer's Rust
    code itself could not allocate and aborted the process, which no Python code can catch."""
    import subprocess
    import sys

    script = tmp_path / "limited.py"
    script.write_text(OUT_OF_MEMORY)
    result = subprocess.run(
        [sys.executable, str(script), "ask", "--no-log", "hello"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HEADROOM_MB": "300"},
    )
    last = result.stderr.strip().splitlines()[-1]  # after the "· loading" progress line
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert last.startswith("circadian: out of memory loading"), result.stderr[-2000:]


def test_a_first_build_short_of_memory_or_time_is_one_line_and_leaves_nothing(tmp_path):
    """The real `models build` into an empty model cache: under an address-space limit 150 MB above
    the libraries the GGUF reader fails in native code (it raised "SystemError: error return without
    exception set", a traceback, and at 300 MB it stalled for minutes); with a time limit shorter than
    the conversion it is stopped. Each ends in one line, and no half-built model is left behind."""
    import subprocess
    import sys

    script = tmp_path / "limited.py"
    script.write_text(OUT_OF_MEMORY)
    models = tmp_path / "models"
    env = {**os.environ, "CIRCADIAN_HOME": str(tmp_path / "home"), "CIRCADIAN_MODELS_DIR": str(models)}
    for argv, headroom, expected in (
        ([str(script), "models", "build"], "150", "address-space limit of"),
        (["-m", "circadian", "models", "build", "--time-limit", "1"], "0", "took more than 1 s and was stopped"),
    ):
        result = subprocess.run(
            [sys.executable, *argv], capture_output=True, text=True, timeout=300, env={**env, "HEADROOM_MB": headroom}
        )
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert last.startswith("circadian: building the embedded model") and expected in last, last
        assert [p.name for p in models.iterdir()] == [".build.lock"]


def _tiny_cohere(target, tokenizer_source):
    """A tiny random Cohere model: its forward multiplies the head's logits by logit_scale."""
    import torch
    from transformers import AutoTokenizer, CohereConfig, CohereForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    config = CohereConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        logit_scale=0.5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    CohereForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def _loss_and_reference(folder, chunk: int, checkpointing: bool, monkeypatch):
    """The training loss (cross-entropy on targets + 0.5 x KL to the base on anchor rows) as the backend
    computes it, its gradient, and the same loss computed from the model's full logits."""
    import torch
    import torch.nn.functional as F

    from circadian.backends import torch_backend
    from circadian.backends.tokens import encode_chat
    from circadian.core.config import TrainSettings

    monkeypatch.setattr(torch_backend, "LOSS_CHUNK", chunk)
    torch.manual_seed(0)
    model = get_backend("torch").load(LoadRequest("tiny", folder, dtype="float32"))
    model._make_trainable(TrainSettings(dropout=0.0, grad_checkpoint=checkpointing))
    for name, p in model.model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    model.model.train()
    rows = [
        encode_chat(
            model.tokenizer,
            [{"role": "user", "content": f"Tell me {i} " * (i + 1)}, {"role": "assistant", "content": f"It is {i}."}],
            128,
        )
        for i in range(4)
    ]
    rows[1].anchor = rows[3].anchor = True
    loss = model._batch_loss(rows, 0.5)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.model.parameters() if p.grad is not None])
    with torch.no_grad():
        ids, attention, targets = model._pad(rows)
        anchor = torch.tensor([r.anchor for r in rows])
        logits = model.model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
        with model.model.disable_adapter():
            base = model.model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
        nll = F.cross_entropy(logits[~anchor].transpose(1, 2), ids[~anchor][:, 1:], reduction="none")
        mask = targets[~anchor][:, 1:]
        kl = F.kl_div(
            F.log_softmax(logits[anchor], -1), F.log_softmax(base[anchor], -1), log_target=True, reduction="none"
        ).sum(-1)
        spots = attention[anchor][:, 1:].float()
        reference = float((nll * mask).sum() / mask.sum() + 0.5 * (kl * spots).sum() / spots.sum())
    return float(loss), reference, grads, model


@pytest.mark.parametrize("architecture", ["llama", "cohere"])
def test_the_loss_a_chunk_at_a_time_with_checkpointing_is_the_loss_of_the_full_logits(
    architecture, tiny_model, embedded_model, tmp_path, monkeypatch
):
    """Logits only at the positions the loss counts, LOSS_CHUNK at a time and recomputed in the backward
    pass, and gradient checkpointing, change memory only: the loss (cross-entropy and the KL anchor)
    equals the one from the model's full logits, and the gradient is the same in one piece or in
    chunks of 5. A model that scales its logits after the head (Cohere) is detected and gets the
    full logits instead of the head's."""
    folder = tiny_model if architecture == "llama" else _tiny_cohere(tmp_path / "cohere", embedded_model)
    whole, reference, grads, model = _loss_and_reference(folder, 100_000, False, monkeypatch)
    assert model.trunk_ok is (architecture == "llama")
    assert whole == pytest.approx(reference, rel=1e-5)
    chunked, _reference, chunked_grads, checkpointed = _loss_and_reference(folder, 5, True, monkeypatch)
    flag = (
        "is_activation_checkpointing"
        if hasattr(checkpointed.base, "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    assert getattr(checkpointed.base, flag)
    assert chunked == pytest.approx(whole, rel=1e-5)
    assert torch_allclose(chunked_grads, grads)


def torch_allclose(a, b) -> bool:
    import torch

    return bool(torch.allclose(a, b, atol=1e-6))


class _Hub:
    """A stand-in for huggingface.co on 127.0.0.1 (HF_ENDPOINT): every request gets `status` with the
    hub's error code header, as the real hub answers a gated or missing repo."""

    def __init__(self, status: int, code: str):
        import http.server
        import threading

        status_, code_ = status, code

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps({"error": f"{code_} (test hub)"}).encode()
                self.send_response(status_)
                self.send_header("X-Error-Code", code_)
                self.send_header("X-Error-Message", f"{code_} (test hub)")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.mark.parametrize(
    "status, code, said",
    [(403, "GatedRepo", "is gated: request access"), (401, "RepoNotFound", "not on the hub, or is private")],
)
def test_a_gated_or_missing_repo_says_so_not_that_the_hub_is_unreachable(tmp_path, status, code, said):
    hub = _Hub(status, code)
    try:
        result = run_cli(
            "ask",
            "hi",
            env={
                "CIRCADIAN_MODEL__NAME": "meta-llama/Llama-3.1-8B-Instruct",
                "HF_ENDPOINT": hub.url,
                "HF_HUB_OFFLINE": "0",
                "HF_HOME": str(tmp_path / "hf"),
                "HF_HUB_ETAG_TIMEOUT": "5",
            },
        )
    finally:
        hub.server.shutdown()
    assert_one_line_error(result)
    assert said in result.stderr and "cannot be reached" not in result.stderr
