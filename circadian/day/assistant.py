"""The day side's engine: the configured model on the selected backend, following
`adapters/CURRENT`, and a session that keeps multi-turn context and logs every turn.

Used by `chat`, `ask` and `demo`; it knows nothing about terminals.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from circadian.backends import GenerationSettings, LoadedModel, LoadRequest, select_backend
from circadian.backends.resolve import resolve_base
from circadian.core.config import Config
from circadian.core.errors import CircadianError, first_line
from circadian.core.paths import Paths
from circadian.store import adapters, ledger, memories, memory_index

INTERRUPTED_TAG = "interrupted"


def _quiet(_message: str) -> None:
    pass


class Assistant:
    """The loaded model. Call `follow_current()` before a turn to pick up a rollback or promotion."""

    def __init__(
        self, paths: Paths, config: Config, *, say: Callable[[str], None] = _quiet, adapter: str | None = "current"
    ):
        """`adapter`: "current" (follow adapters/CURRENT), a version name (fixed), or None (base)."""
        self.paths = paths
        self.config = config
        self.say = say
        self.backend = select_backend(config.model.backend)
        base = adapters.current_base(paths)
        if adapter == "current":
            adapter_path, version = self._usable(adapters.active_adapter(paths))
        elif adapter is None:
            adapter_path, version = None, None
        else:
            chosen = adapters.get(paths, adapter)
            adapters.verify_weights(chosen.path, chosen.manifest)
            if chosen.manifest.backend != self.backend.name:
                raise CircadianError(
                    f"adapter {adapter} was trained with the {chosen.manifest.backend} backend, not {self.backend.name}"
                )
            adapter_path, version, base = chosen.path, chosen.version, chosen.manifest.base
        self.model: LoadedModel = self._load(base, adapter_path, version)
        self._seen_current = (adapters.current_version(paths), adapters.current_base(paths))
        self._follows = adapter == "current"

    def _load(self, base: str | None, adapter_path, version: str | None) -> LoadedModel:
        """Load the base a state sits on (the configured model, or a consolidated one) with an adapter."""
        config = self.config
        resolved = resolve_base(config.model, self.paths, base, say=self.say)
        self.model_name, self.base = resolved.name, base
        self.say(f"loading {resolved.name} on {self.backend.name}")
        return self.backend.load(
            LoadRequest(
                model_name=resolved.name,
                model_path=resolved.path,
                device=config.model.device,
                dtype=config.model.dtype,
                quantize=config.model.quantize,
                adapter_path=adapter_path,
                adapter_version=version,
            )
        )

    def _usable(self, active: adapters.ActiveAdapter | None):
        if active is None:
            return None, None
        if active.manifest.backend != self.backend.name:
            self.say(
                f"adapter {active.version} was trained with the {active.manifest.backend} backend; "
                f"the {self.backend.name} backend answers with the base model"
            )
            return None, None
        return active.path, active.version

    @property
    def adapter_version(self) -> str | None:
        return self.model.adapter_version

    def follow_current(self) -> str | None:
        """Re-read adapters/CURRENT; switch adapters if it changed. Return a note if it did."""
        current = (adapters.current_version(self.paths), adapters.current_base(self.paths))
        if not self._follows or current == self._seen_current:
            return None
        self._seen_current = current
        path, version = self._usable(adapters.active_adapter(self.paths))
        if current[1] != self.base:  # a consolidation, or a rollback across one: another base model
            self.model = self._load(current[1], path, version)
        else:
            self.model.set_adapter(path, version)
        on = f" on {current[1]}" if current[1] else ""
        return f"now answering with adapter {version}{on}" if version else f"now answering with the base model{on}"


@dataclass
class TurnResult:
    """One finished (or interrupted) exchange."""

    user: str
    reply: str
    record_id: str | None
    tokens: int
    ttft_s: float | None
    tokens_per_second: float | None
    seconds: float
    adapter: str | None
    tags: list[str] = field(default_factory=list)
    interrupted: bool = False
    note: str | None = None
    recalled: list[str] = field(default_factory=list)  # what the memory index gave this reply
    route: dict = field(default_factory=dict)  # ChatSession.route: who answered, with the scores

    def as_dict(self) -> dict:
        return {
            "recalled": self.recalled,
            "route": self.route,
            "id": self.record_id,
            "reply": self.reply,
            "tokens": self.tokens,
            "ttft_s": self.ttft_s,
            "tokens_per_second": self.tokens_per_second,
            "seconds": self.seconds,
            "adapter": self.adapter,
            "tags": self.tags,
            "interrupted": self.interrupted,
            "logged": self.record_id is not None,
        }


@dataclass
class _Exchange:
    user: str
    reply: str
    record_id: str | None


class ChatSession:
    """A conversation: context across turns, the session's switches, and logging of each turn."""

    def __init__(
        self,
        assistant: Assistant,
        *,
        log: bool = True,
        source: str = "chat",
        system_prompt: str | None = None,
        after_logged: Callable[[list[dict], str], object] | None = None,
    ):
        """`after_logged(records of this session so far, id of the turn just logged)` runs in the
        background after each indexed turn, once the reply has ended (the chat writes the turn's facts
        to the memory index with it); `settle()` waits for it."""
        self.assistant = assistant
        self.after_logged = after_logged
        self._logged: list[dict] = []  # this session's logged records (never a no-train one), for after_logged
        self._behind: threading.Thread | None = None
        self._behind_error: str | None = None
        self.log = log and assistant.config.logging.enabled
        if self.log:
            memories.check_writable(assistant.paths)
        self.source = source
        self.system_prompt = assistant.config.chat.system_prompt if system_prompt is None else system_prompt
        self.no_train = False
        self.id = memories.new_id()
        self.history: list[_Exchange] = []
        self.recalled: list[memory_index.Entry] = []  # what the memory index gave the last reply (/memory)

    def new(self) -> None:
        """Start a new session: new id, empty context (switches reset too)."""
        self.id = memories.new_id()
        self._logged = []
        self.history.clear()
        self.no_train = False

    def recall(self, user_text: str) -> list[memory_index.Entry]:
        """What the memory index holds that bears on the message and the answering adapter has not
        learned (a fact that graduated in its lineage is left out: store/ledger.py), within the
        token budget."""
        chat = self.assistant.config.chat
        if not chat.retrieval:
            return []
        paths = self.assistant.paths
        found = memory_index.recall(
            paths,
            user_text,
            limit=chat.retrieval_entries,
            skip_turns=self.context_ids(),
            known=ledger.graduated(paths, adapters.head(paths)),
        )
        kept, used = [], 0
        for entry in found:
            used += len(self.assistant.model.tokenizer.encode(entry.text, add_special_tokens=False))
            if used > chat.retrieval_tokens:
                break
            kept.append(entry)
        return kept

    def route(self) -> dict:
        """Who answered the last reply and why, as logged with the turn: the adapter or the base model
        (with the router's probability for the adapter, when there is a router), and whether retrieval
        gave it anything (how many entries, and the best BM25 score: lower is a closer match)."""
        model = self.assistant.model
        answered = getattr(model, "last_route", None) or ("adapter" if self.assistant.adapter_version else "base")
        return {
            "answered_by": answered + ("+retrieval" if self.recalled else ""),
            "adapter_score": getattr(model, "last_route_score", None),
            "retrieved": len(self.recalled),
            "retrieval_score": round(min(e.score for e in self.recalled), 6) if self.recalled else None,
        }

    def context_ids(self) -> set[str]:
        """The turns already in this session's context (never retrieved again)."""
        return {e.record_id for e in self.history if e.record_id}

    def system_for(self, recalled: list[memory_index.Entry]) -> str:
        """The system prompt, with what was recalled appended."""
        if not recalled:
            return self.system_prompt
        said = "\n".join(f"- {e.text}" for e in recalled)
        return f"{self.system_prompt}\n\nWhat the user told you earlier (use it if it helps):\n{said}".strip()

    def messages_for(self, user_text: str, recalled: list[memory_index.Entry] = ()) -> list[dict]:
        """Given the next user message (and what was recalled for it), return the full prompt:
        system, recent context, the message."""
        keep = self.assistant.config.chat.context_turns
        system = self.system_for(list(recalled))
        messages = [{"role": "system", "content": system}] if system else []
        for exchange in self.history[-keep:] if keep else []:
            messages += [{"role": "user", "content": exchange.user}, {"role": "assistant", "content": exchange.reply}]
        return messages + [{"role": "user", "content": user_text}]

    def settings(self, max_tokens: int | None = None) -> GenerationSettings:
        chat = self.assistant.config.chat
        return GenerationSettings(
            max_tokens=max_tokens or chat.max_tokens,
            temperature=chat.temperature,
            top_p=chat.top_p,
            repetition_penalty=chat.repetition_penalty,
            repetition_context=chat.repetition_context,
        )

    def respond(
        self,
        user_text: str,
        on_text: Callable[[str], None] = lambda _t: None,
        *,
        max_tokens: int | None = None,
        cancel: threading.Event | None = None,
    ) -> TurnResult:
        """Given a user message, stream the reply through `on_text`, log the turn, return the result.

        Ctrl-C (KeyboardInterrupt) stops the generation; the partial reply is kept and tagged.
        """
        note = self.assistant.follow_current()
        cancel = cancel or threading.Event()
        self.recalled = self.recall(user_text)
        messages = self.messages_for(user_text, self.recalled)
        parts: list[str] = []
        tokens = 0
        first: float | None = None
        interrupted = False
        started = time.perf_counter()
        stream = self.assistant.model.stream(messages, self.settings(max_tokens), cancel)
        try:
            for chunk in stream:
                if first is None and chunk.tokens:
                    first = time.perf_counter()
                    first_tokens = chunk.tokens
                tokens += chunk.tokens
                if chunk.text:
                    parts.append(chunk.text)
                    on_text(chunk.text)
        except KeyboardInterrupt:
            interrupted = True
            cancel.set()
        finally:
            stream.close()
        ended = time.perf_counter()
        reply = "".join(parts).strip()
        tps = (
            (tokens - first_tokens) / (ended - first)
            if first is not None and tokens > first_tokens and ended > first
            else None
        )
        if not reply:
            interrupted = True  # Ctrl-C before the first token, or an immediate end: the message is kept
        tags = [INTERRUPTED_TAG] if interrupted else []
        route = self.route()
        record_id = None
        said = [{"role": "user", "content": user_text}] if user_text.strip() else []
        if self.log and said:
            record = memories.make_record(
                said + ([{"role": "assistant", "content": reply}] if reply else []),
                session=self.id,
                model=self.assistant.model_name,
                adapter=self.assistant.adapter_version,
                source=self.source,
                tags=tags,
                no_train=self.no_train,
                system=self.system_prompt or None,
                backend=self.assistant.backend.name,
                stats={
                    "tokens": tokens,
                    "ttft_s": round(first - started, 4) if first else None,
                    "tokens_per_second": round(tps, 2) if tps else None,
                    "route": route,
                },
                recalled=[e.turn_id for e in self.recalled],
            )
            memories.append(self.assistant.paths, [record])
            record_id, tags = record["id"], record["tags"]
            try:  # after the reply: it never waits on this; the index is derived, so a failure is only said
                indexed = memory_index.add_turn(self.assistant.paths, record)
                if not memory_index.SKIP_TAGS & set(record["tags"]):
                    self._logged.append(
                        record
                    )  # the conversation so far: an assistant's question gives an answer its subject
                if indexed and self.after_logged:
                    self._in_background(list(self._logged), record["id"])
            except (OSError, sqlite3.Error) as exc:
                note = f"the memory index could not take this turn ({exc}); the turn itself is logged"
            note = note or self._behind_error
            self._behind_error = None
        elif memories.has_no_train_mark(messages[-1:]) or self.no_train:
            tags = tags + [memories.NO_TRAIN_TAG]
        if reply:
            self.history.append(_Exchange(user_text, reply, record_id))
        return TurnResult(
            user_text,
            reply,
            record_id,
            tokens,
            round(first - started, 4) if first else None,
            round(tps, 2) if tps else None,
            round(ended - started, 3),
            self.assistant.adapter_version,
            tags,
            interrupted,
            note,
            [e.text for e in self.recalled],
            route,
        )

    def _in_background(self, records: list[dict], turn_id: str) -> None:
        """Run after_logged in a thread, after the one before it (the reply does not wait for either)."""
        earlier = self._behind

        def work():
            if earlier is not None:
                earlier.join()
            try:
                self.after_logged(records, turn_id)
            except Exception as exc:  # derived data: the turn is logged and indexed; only say it
                self._behind_error = f"the facts of a turn could not be indexed ({first_line(exc)})"

        self._behind = threading.Thread(target=work, name="circadian-after-turn", daemon=True)
        self._behind.start()

    def settle(self) -> None:
        """Wait for the background work of the turns logged so far (before the process ends)."""
        if self._behind is not None:
            self._behind.join()

    def forget_last(self) -> _Exchange | None:
        """Drop the last exchange from the context and tombstone it in the log; return it (or None)."""
        if not self.history:
            return None
        exchange = self.history.pop()
        if exchange.record_id:
            memories.forget(self.assistant.paths, exchange.record_id, session=self.id)
        return exchange
