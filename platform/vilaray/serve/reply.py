"""Token ids -> reply text as it grows: special tokens dropped, split characters held back, `stop` strings cut."""

from __future__ import annotations


class ReplyText:
    """Feed generated ids one at a time; each call returns the text that is now certain to be part of the
    reply. `finish_reason` is set once the model stops (a stop id or a `stop` string) or `close()` is called
    at the token cap."""

    def __init__(self, tokenizer, stop_ids: list[int], stops: list[str]):
        self.tok, self.stop_ids, self.stops = tokenizer, set(stop_ids), stops
        self.ids: list[int] = []
        self.sent = 0
        self.tokens = 0
        self.finish_reason: str | None = None
        # A stop string may be arriving: hold back as many characters as the longest one, less one.
        self.hold = max((len(s) for s in stops), default=1) - 1

    def add(self, token: int) -> str:
        self.tokens += 1
        if token in self.stop_ids:
            return self._finish("stop", self._text())
        self.ids.append(token)
        text = self._text()
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            return self._finish("stop", text[:cut])
        if text.endswith("\ufffd"):  # a multi-byte character split across tokens
            return ""
        return self._emit(text[: max(self.sent, len(text) - self.hold)])

    def close(self) -> str:
        """The token cap was reached: release what was held back."""
        return self._finish("length", self._text())

    def _text(self) -> str:
        return self.tok.decode(self.ids, skip_special_tokens=True)

    def _finish(self, reason: str, text: str) -> str:
        self.finish_reason = reason
        return self._emit(text)

    def _emit(self, text: str) -> str:
        delta = text[self.sent :]
        self.sent = max(self.sent, len(text))
        return delta
