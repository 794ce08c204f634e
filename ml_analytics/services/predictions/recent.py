"""The newest cached answers, kept in this process beside the shared cache.

A cache key names everything an answer depends on (the history's digest, the model
settings, the global model's version), so an answer held here answers exactly that
content, and it expires when the shared entry it was stored or found as does. (Another
replica's `cache_bypass` may meanwhile store a newer answer under the same key: one
for the same content, with a later `generated_at`.) A hit found here needs no round
trip to PostgreSQL. Bounded by the characters held; the least recently used answers
go first.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime

MAX_CHARACTERS = 8_000_000  # about 200 answers of 365 days, 8 MB of text at most


class RecentAnswers:
    def __init__(self, max_characters: int = MAX_CHARACTERS):
        self._max = max_characters
        self._held = 0
        self._answers: OrderedDict[str, tuple[str, datetime]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    @property
    def characters(self) -> int:
        return self._held

    def get(self, key: str, now: datetime) -> str | None:
        """The answer for `key`, unless none is held or it has expired."""
        held = self._answers.get(key)
        if held is None:
            return None
        answer, expires_at = held
        if expires_at <= now:
            self._drop(key)
            return None
        self._answers.move_to_end(key)
        return answer

    def put(self, key: str, answer: str, expires_at: datetime) -> None:
        """Hold `answer` until `expires_at`; one longer than the whole budget is not held."""
        if key in self._answers:
            self._drop(key)
        if len(answer) > self._max:
            return
        self._answers[key] = (answer, expires_at)
        self._held += len(answer)
        while self._held > self._max:
            self._drop(next(iter(self._answers)))

    def _drop(self, key: str) -> None:
        answer, _ = self._answers.pop(key)
        self._held -= len(answer)
