"""Writing CoProV2-style prompt pairs with an LLM (transformers), constrained to JSON.

For each (category, concept, index) request the model answers, through its chat template, with
one JSON object ``{"unsafe": "...", "safe": "..."}``: a harmful image prompt about the concept
and a minimally different safe twin. Output is constrained by construction: we write the JSON
skeleton ourselves and let the model fill only the two string values, each generation stopping
at the closing quote. The filled text is then parsed as JSON like any model output, so a value
the model never closes, or one that breaks JSON (a stray backslash), is *malformed*: it is
retried with a new sampling seed, then dropped and counted. Survivors pass a length filter and
a dedup on the normalised unsafe prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList

from alignguard.data.checks import normalize_prompt
from alignguard.data.schema import PromptPair

SYSTEM_PROMPT = (
    "You write text-to-image prompts for safety research: a harmful prompt and a safe twin that "
    "differs from it as little as possible, removing only the harmful content. Answer with one JSON "
    'object {"unsafe": "...", "safe": "..."} and nothing else.'
)
OPEN_UNSAFE = '{"unsafe": "'
BETWEEN = '", "safe": "'
CLOSE = '"}'


@dataclass(frozen=True)
class PairRequest:
    category: str
    concept: str
    index: int

    @property
    def pair_id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.concept.lower()).strip("-")[:40]
        return f"llm-{self.category}-{slug}-{self.index:04d}"


def user_message(request: PairRequest) -> str:
    return (
        f"Category: {request.category.replace('_', ' ')}. Concept: {request.concept}. "
        f"Write prompt pair number {request.index + 1} as JSON."
    )


def parse_pair_json(text: str) -> tuple[str, str] | None:
    """The first JSON object in ``text`` with non-empty string fields ``unsafe`` and ``safe``.

    Tolerates code fences and chatter around the object, and braces inside its strings (each "{"
    is tried as the start of a JSON value); returns None when there is none.
    """
    decoder = json.JSONDecoder()
    for start in (i for i, char in enumerate(text) if char == "{"):
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            unsafe, safe = obj.get("unsafe"), obj.get("safe")
            if isinstance(unsafe, str) and isinstance(safe, str) and unsafe.strip() and safe.strip():
                return " ".join(unsafe.split()), " ".join(safe.split())
    return None


def acceptable(unsafe: str, safe: str, max_words: int, min_words: int = 2) -> bool:
    """Length filter, and the twin must actually differ."""
    words = (len(unsafe.split()), len(safe.split()))
    return all(min_words <= count <= max_words for count in words) and normalize_prompt(
        unsafe
    ) != normalize_prompt(safe)


@dataclass
class WriteStats:
    requested: int = 0
    written: int = 0
    retried: int = 0
    dropped_malformed: int = 0
    dropped_filtered: int = 0
    dropped_duplicate: int = 0


class StopAtQuote(StoppingCriteria):
    """Per sequence: stop once a generated token contains a double quote (a JSON string closes).

    Works for any tokenizer (byte-level, sentencepiece, word-level): the quote-bearing token ids
    are found once by decoding each vocabulary entry."""

    def __init__(self, tokenizer, prompt_length: int) -> None:
        self.prompt_length = prompt_length
        quote_ids = [i for i in range(len(tokenizer)) if '"' in tokenizer.decode([i])]
        self.quote_ids = torch.tensor(quote_ids, dtype=torch.long)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        generated = input_ids[:, self.prompt_length :]
        return torch.isin(generated, self.quote_ids.to(generated.device)).any(dim=1)


class LLMPairWriter:
    """Loads a causal LM once; ``write`` turns a batch of requests into prompt pairs."""

    def __init__(
        self, path: str, max_new_tokens: int, temperature: float, max_retries: int, max_words: int, seed: int
    ):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"  # decoder-only batching: pad before the prompt
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.max_retries, self.max_words, self.seed = max_retries, max_words, seed

    def write(self, requests: Sequence[PairRequest]) -> tuple[list[PromptPair], WriteStats]:
        stats = WriteStats(requested=len(requests))
        pending, pairs = list(requests), {}
        for attempt in range(self.max_retries + 1):
            if not pending:
                break
            if attempt:
                stats.retried += len(pending)
            outputs = self._generate_pairs(pending, attempt)
            failed = []
            for request, text in zip(pending, outputs, strict=True):
                parsed = parse_pair_json(text)
                if parsed is None:
                    failed.append(request)
                elif not acceptable(*parsed, self.max_words):
                    stats.dropped_filtered += 1
                else:
                    pairs[request] = parsed
            pending = failed
        stats.dropped_malformed = len(pending)
        result = [
            PromptPair(r.pair_id, unsafe, safe, (r.category,), concept=r.concept, source="llm")  # type: ignore[arg-type]
            for r, (unsafe, safe) in pairs.items()
        ]
        stats.written = len(result)
        return result, stats

    def _generate_pairs(self, requests: Sequence[PairRequest], attempt: int) -> list[str]:
        """The model's constrained output text for each request ("" where a value never closed)."""
        prefixes = [self._chat_prefix(r) + OPEN_UNSAFE for r in requests]
        unsafe = self._generate_value(prefixes, requests, attempt, field=0)
        prefixes = [p + (u or "") + BETWEEN for p, u in zip(prefixes, unsafe, strict=True)]
        safe = self._generate_value(prefixes, requests, attempt, field=1)
        return [
            OPEN_UNSAFE + u + BETWEEN + s + CLOSE if u is not None and s is not None else ""
            for u, s in zip(unsafe, safe, strict=True)
        ]

    def _chat_prefix(self, request: PairRequest) -> str:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user_message(request)},
        ]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @torch.no_grad()
    def _generate_value(
        self, prefixes: list[str], requests: Sequence[PairRequest], attempt: int, field: int
    ) -> list[str | None]:
        """Sample one JSON string value per prefix, up to (not including) its closing quote;
        None where the model did not close it within ``max_new_tokens``."""
        torch.manual_seed(_seed(self.seed, requests[0].pair_id, attempt, field))
        batch = self.tokenizer(prefixes, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self.device
        )
        prompt_length = batch["input_ids"].shape[1]
        generated = self.model.generate(
            **batch,
            max_new_tokens=self.max_new_tokens,
            do_sample=True,
            temperature=self.temperature,
            stopping_criteria=StoppingCriteriaList([StopAtQuote(self.tokenizer, prompt_length)]),
            pad_token_id=self.tokenizer.pad_token_id,
        )
        texts = self.tokenizer.batch_decode(
            generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
        )
        return [text.split('"', 1)[0] if '"' in text else None for text in texts]


def dedup_by_unsafe_prompt(pairs: Sequence[PromptPair]) -> tuple[list[PromptPair], int]:
    """Keep the first pair per normalised unsafe prompt; returns (kept, dropped count)."""
    seen, kept = set(), []
    for pair in pairs:
        key = normalize_prompt(pair.unsafe_prompt)
        if key not in seen:
            seen.add(key)
            kept.append(pair)
    return kept, len(pairs) - len(kept)


def _seed(base: int, pair_id: str, attempt: int, field: int) -> int:
    digest = hashlib.sha256(f"{base}:{pair_id}:{attempt}:{field}".encode()).digest()
    return int.from_bytes(digest[:4], "big")
