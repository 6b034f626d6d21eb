"""Streaming a completion's text safely: never half a character, never the start of a stop string.

Byte-level BPE tokens can end inside a multi-byte UTF-8 character (decoded as U+FFFD until the rest
arrives), and a stop string can span tokens; text that might still turn out to be either is held back
until the next token settles it. When a stop string appears, the text ends right before it.
"""

from __future__ import annotations

from collections.abc import Callable

_PARTIAL = "\ufffd"


class IncrementalText:
    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...] = ()) -> None:
        self.decode, self.stop = decode, stop
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters of `text` released so far

    def push(self, token_ids: list[int]) -> tuple[str, bool]:
        """(newly released text, whether a stop string ended the completion)."""
        self.ids.extend(token_ids)
        self.text = self.decode(self.ids)
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stop) if i >= 0]
        if hits:
            return self._release(min(hits)), True
        end = len(self.text)
        while end > self.sent and self.text[end - 1] == _PARTIAL:
            end -= 1
        return self._release(max(self.sent, end - self._stop_prefix(end))), False

    def flush(self) -> str:
        """Everything held back, at the end of a completion that no stop string ended."""
        return self._release(len(self.text))

    def _stop_prefix(self, end: int) -> int:
        """Length of the longest tail of text[:end] that begins some stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, end - self.sent), best, -1):
                if self.text.endswith(s[:k], self.sent, end):
                    best = k
                    break
        return best

    def _release(self, end: int) -> str:
        piece = self.text[self.sent : end]
        self.sent = end
        return piece
