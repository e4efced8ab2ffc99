"""`circadian consolidate`: fuse the current adapter into a new base model, check the fused model
against the adapter it replaces, and start a fresh adapter lineage on it.

1. Under the sleep lock (no night runs beside it): the current adapter, the disk space a full copy
   of the base needs, and a snapshot of the home (store/backups.py), or nothing starts.
2. The adapter is measured as the user gets it (through its router) and alone (every question
   through it): the recall probes of the nights that trained it, the capability harness and the
   general perplexity.
3. The backend fuses it into the base (PEFT merge_and_unload; mlx-lm's LoRA fuse, which
   de-quantizes and re-quantizes a quantized base) into `models/.staging-<name>/`, and the fused
   model is loaded from there and measured on the same sets.
4. The check. The fused model must agree with the adapter alone within noise (the fuse is the
   same function), and must not answer fewer general questions than the user gets today by more
   than `gate.max_capability_drop`, nor raise the general perplexity by more than
   `gate.max_total_ppl_drift`: a router that kept general questions on the base model cannot come
   along into the weights, so an adapter that breaks them when it answers alone is not fused.
5. Only then: the manifest last, the staged folder renamed into place, and `adapters/CURRENT`
   names the new base with no adapter (`base <name>`). The next night starts a new lineage on it;
   `circadian rollback` goes back to the old base and the adapter that was fused.

A kill at any step leaves the previous base and adapter current: a staged folder is removed by the
next consolidation, and a base renamed into place but never made current is only a stored base.
Each attempt is a line of `data/runs/consolidations.jsonl`.
"""

from __future__ import annotations

import gc
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from circadian import __version__
from circadian.backends import LoadRequest, select_backend
from circadian.backends.resolve import resolve_base
from circadian.core.clock import now_iso
from circadian.core.config import Config
from circadian.core.errors import CircadianError
from circadian.core.fsutil import append_jsonl, read_jsonl
from circadian.core.lock import sleep_lock
from circadian.core.paths import Paths
from circadian.night import distill, evaluate
from circadian.night.base_answers import eval_cache
from circadian.night.cycle import hold
from circadian.store import adapters, backups, bases

LOG = "consolidations.jsonl"
PPL_NOISE = 0.01  # the fused model's perplexity within 1% of the adapter's
ANSWER_NOISE = 0.02  # and at most 2% of the answers (at least one) differing


def log_path(paths: Paths) -> Path:
    return paths.runs / LOG


def attempts(paths: Paths) -> list[dict]:
    """Every consolidation attempt, oldest first."""
    return [line.value for line in read_jsonl(log_path(paths)) if line.value]


def needed_bytes(model_path: Path) -> int:
    """The disk a fused copy of a base takes: its weight files, plus a tenth and 64 MB for the rest."""
    weights = sum(p.stat().st_size for p in model_path.glob("*.safetensors"))
    return int(weights * 1.1) + (64 << 20)


def lineage_nights(paths: Paths) -> int:
    """How many versions the current lineage holds since its base (a consolidation starts anew)."""
    version, count = adapters.current_version(paths), 0
    while version and (paths.adapters / version / adapters.MANIFEST).exists():
        count += 1
        version = adapters.read_manifest(paths.adapters / version).parent
    return count


def due(paths: Paths, config: Config) -> str | None:
    """Why the nightly job should consolidate now (None: it should not): the lineage is longer than
    `store.consolidate_after` nights, and the current version was not tried before."""
    after, version = config.store.consolidate_after, adapters.current_version(paths)
    if not after or version is None or (nights := lineage_nights(paths)) <= after:
        return None
    if any(a.get("adapter_version") == version for a in attempts(paths)):
        return None
    return f"the lineage holds {nights} nights, more than store.consolidate_after ({after})"


def _probes(paths: Paths, lineage: list[str]) -> list[dict]:
    """The recall probes of the nights that trained the lineage's stored versions (one per question)."""
    seen, found = set(), []
    for version in lineage:
        folder = paths.adapters / version
        if not (folder / adapters.MANIFEST).exists():
            continue
        cycle = adapters.read_manifest(folder).cycle_id
        for name in ("probes.jsonl", "retention_probes.jsonl"):
            for line in read_jsonl(paths.runs / cycle / "dataset" / name):
                row = line.value
                if row and isinstance(row.get("question"), str) and row["question"] not in seen:
                    seen.add(row["question"])
                    found.append(row)
    return found


def _measure(model, sets: dict, config: Config, asking, cache, say: Callable[[str], None], label: str) -> dict:
    tic = time.monotonic()
    ask = dict(asking=asking, cache=cache)
    out = {
        "recall": evaluate.ask_all(
            model, sets["probes"], key="question", max_tokens=config.sleep.probe_max_tokens, **ask
        ),
        "capability": evaluate.ask_all(
            model, sets["capability"], key="prompt", max_tokens=config.sleep.capability_max_tokens, **ask
        ),
        "perplexity": evaluate.routed_perplexity(model, sets["general"]),
    }
    brief = {k: evaluate.score_of(out, k) for k in ("recall", "capability")} | {"perplexity": out["perplexity"]}
    say(
        f"{label}: recall {_pct(brief['recall'])}, capability {_pct(brief['capability'])}, "
        f"perplexity {brief['perplexity']:.2f} ({time.monotonic() - tic:.0f} s)"
    )
    return out


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _differing(a: dict, b: dict) -> int:
    return sum(x["hit"] != y["hit"] for x, y in zip(a["items"], b["items"]))


def check(routed: dict, alone: dict, fused: dict, max_capability_drop: float, max_ppl_drift: float = 0.05) -> dict:
    """Given the measurements of the adapter through its router, alone and fused, return the check:
    whether the fused model agrees with the adapter alone within noise, and whether it keeps what the
    user gets now: the general answers within `max_capability_drop`, the general perplexity within
    `max_ppl_drift` (the gate's bound against the base: through its router the adapter scores general
    text as the base does); the reasons it fails."""
    reasons = []
    drift = fused["perplexity"] / alone["perplexity"] - 1
    if abs(drift) > PPL_NOISE:
        reasons.append(f"the fused model's perplexity is {drift:+.1%} off the adapter's (noise: {PPL_NOISE:.0%})")
    for part in ("recall", "capability"):
        n, differ = fused[part]["n"], _differing(alone[part], fused[part])
        if differ > max(1, round(ANSWER_NOISE * n)):
            reasons.append(f"{differ} of {n} {part} answers differ between the fused model and the adapter")
    lost = (routed["capability"]["score"] or 0) - (fused["capability"]["score"] or 0)
    if lost > max_capability_drop + 1e-9:
        broke = _differing(routed["capability"], fused["capability"])
        reasons.append(
            f"fused, the adapter answers every question, and loses {lost:.1%} of the capability answers "
            f"({broke} change) that its router keeps on the base model today (gate.max_capability_drop "
            f"{max_capability_drop:.0%})"
        )
    rise = fused["perplexity"] / routed["perplexity"] - 1
    if rise > max_ppl_drift + 1e-9:
        reasons.append(
            f"fused, the general perplexity rises {rise:+.1%} over what the router gives today "
            f"(gate.max_total_ppl_drift {max_ppl_drift:.0%})"
        )
    brief = lambda m: {  # noqa: E731
        "recall": m["recall"]["score"],
        "capability": m["capability"]["score"],
        "perplexity": round(m["perplexity"], 4),
    }
    return {
        "ok": not reasons,
        "reasons": reasons,
        "routed": brief(routed),
        "adapter": brief(alone),
        "fused": brief(fused),
        "perplexity_drift": round(drift, 5),
        "perplexity_rise": round(rise, 5),
        "recall_differing": _differing(alone["recall"], fused["recall"]),
        "capability_differing": _differing(alone["capability"], fused["capability"]),
        "questions": {"recall": fused["recall"]["n"], "capability": fused["capability"]["n"]},
    }


def consolidate(paths: Paths, config: Config, *, say: Callable[[str], None]) -> dict:
    """Fuse the current adapter into a new base (module docstring). Return what was done: {"outcome":
    "consolidated" | "refused", "name", "check", ...}. Raise CircadianError when it cannot start."""
    paths.ensure()
    with sleep_lock(paths.control / "sleep.lock", "consolidate-" + datetime.now().strftime("%Y%m%d-%H%M%S")):
        return _consolidate(paths, config, say)


def _consolidate(paths: Paths, config: Config, say: Callable[[str], None]) -> dict:
    tic = time.monotonic()
    for left in bases.clean_staging(paths):
        say(f"removed {left}, left by an interrupted consolidation")
    active = adapters.active_adapter(paths)
    if active is None:
        raise CircadianError("nothing to consolidate: no adapter is current (`circadian sleep` trains one)")
    backend = select_backend(config.model.backend)
    if active.manifest.backend != backend.name:
        raise CircadianError(
            f"the current adapter {active.version} was trained with {active.manifest.backend}; "
            f"this runs {backend.name} (set model.backend)"
        )
    parent_base = adapters.current_base(paths)
    resolved = resolve_base(config.model, paths, parent_base, say=say)
    root = bases.read(paths, parent_base).root_model if parent_base else resolved.name
    name = bases.next_name(paths, root)
    need, free = needed_bytes(resolved.path), shutil.disk_usage(bases.staging(paths, name).parent).free
    if free < need:
        raise CircadianError(
            f"consolidation needs about {need / 1e9:.1f} GB free in {paths.home / 'models'}; "
            f"{free / 1e9:.1f} GB are (the fused base is a full copy of the model)"
        )
    if config.backup.before_consolidate:
        taken = backups.run(paths, config.backup, reason=f"before consolidating {active.version}", kind="before")
        say(f"backup: snapshot {taken['id']} in {taken['store']} ({taken['added_bytes']:,} new bytes)")
    hold("consolidate:started")

    lineage = adapters.lineage(paths, active.version)
    asking = evaluate.Asking.of(config.chat)
    request = dict(device=config.model.device, dtype=config.model.dtype, quantize=config.model.quantize)
    say(f"loading {resolved.name} on {backend.name} with adapter {active.version}")
    model = backend.load(
        LoadRequest(resolved.name, resolved.path, **request, adapter_path=active.path, adapter_version=active.version)
    )
    sets = {
        "probes": _probes(paths, lineage),
        "capability": evaluate.load_capability(config.sleep.capability_questions),
        "general": evaluate.general_examples(model.tokenizer),
    }
    cache = eval_cache(paths.models, distill.model_identity(resolved.path), backend.name, config.model, asking)
    routed = _measure(model, sets, config, asking, cache, say, f"{active.version} as the chat answers")
    if getattr(model, "router", None) is not None:
        model.router = None
        alone = _measure(model, sets, config, asking, None, say, f"{active.version} answering every question")
    else:
        alone = routed
    staged = bases.staging(paths, name)
    if staged.exists():
        shutil.rmtree(staged)
    say(f"fusing {active.version} into {resolved.name}")
    model.fuse_adapter(staged)
    hold("consolidate:fused")
    del model
    gc.collect()
    fused_model = backend.load(LoadRequest(name, staged, **request))
    fused = _measure(fused_model, sets, config, asking, None, say, f"{name} (fused)")
    del fused_model
    gc.collect()
    result = check(routed, alone, fused, config.gate.max_capability_drop, config.gate.max_total_ppl_drift)
    entry = {
        "ts": now_iso(),
        "name": name,
        "adapter_version": active.version,
        "parent_base": parent_base,
        "check": result,
        "seconds": round(time.monotonic() - tic, 1),
    }
    if not result["ok"]:
        shutil.rmtree(staged, ignore_errors=True)
        append_jsonl(log_path(paths), [{**entry, "outcome": "refused"}])
        say(f"not consolidated: {'; '.join(result['reasons'])}; {active.version} stays current")
        return {**entry, "outcome": "refused"}
    weights, sizes = bases.weight_hashes(staged)
    manifest = {
        "name": name,
        "number": bases.number(name),
        "parent_base": parent_base,
        "root_model": root,
        "adapter_version": active.version,
        "adapter_weights": active.manifest.weights,
        "backend": backend.name,
        "created_at": now_iso(),
        "weights": weights,
        "sizes": sizes,
        "check": result,
        "seconds": entry["seconds"],
        "circadian_version": __version__,
    }
    final = bases.commit(staged, manifest)
    hold("consolidate:renamed")
    adapters.set_current(paths, None, base=name, reason=f"consolidated {active.version} into {name}")
    disk = bases.disk_bytes(final)
    append_jsonl(log_path(paths), [{**entry, "outcome": "consolidated", "disk_bytes": disk}])
    say(
        f"consolidated {active.version} into {name} ({disk / 1e6:.0f} MB) in {entry['seconds']:.0f} s; "
        f"the next night starts a new adapter on it; `circadian rollback` goes back to {active.version}"
    )
    return {**entry, "outcome": "consolidated", "disk_bytes": disk, "path": str(final)}
