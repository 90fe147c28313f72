"""Whether to speculate this step: only while drafts pay for themselves, as measured.

A draft costs time twice: making it (nothing for prompt lookup, a few
forward passes of the draft model for a draft model) and verifying it (the
target's decode step grows by the draft's rows). It saves one target step
per accepted token. The governor keeps moving averages of the three
(accepted tokens per drafting step, seconds to draft, seconds a verify step
takes beyond a plain step) and drafts only while

    accepted x plain step seconds > draft seconds + extra verify seconds.

When that fails it stops drafting for a while, then tries one draft again
(the text may have turned copy-like), doubling the pause after each losing
probe up to ``MAX_PAUSE`` steps. Drafts are as long as recent acceptance
suggests (:meth:`SpeculationGovernor.draft_length`: about twice the tokens
accepted lately, at least one), and a probe after a losing verdict is one
token, cheap to make and to verify. A draft model that guesses badly, or a text with
nothing to look up, costs a one-token probe now and then, not a full draft
every step.
"""

from __future__ import annotations

from dataclasses import dataclass

# Weight of the newest measurement in each moving average.
ALPHA = 0.3
MAX_PAUSE = 128
# A plain step after this many drafting steps in a row keeps the yardstick current.
REMEASURE = 16


@dataclass
class SpeculationGovernor:
    accepted: float = 0.0  # the first draft is tried, then judged on what it brought
    draft_seconds: float = 0.0
    plain_seconds: float = 0.0
    extra_seconds: float = 0.0
    pause: int = 0
    _skip: int = 0
    _drafts: int = 0  # drafting steps so far
    _in_a_row: int = 0  # drafting steps since the last plain one

    def should_draft(self) -> bool:
        if not self.plain_seconds or self._in_a_row >= REMEASURE:
            return False  # a plain step: the yardstick every draft is judged against
        if self._skip > 0:
            self._skip -= 1
            return False
        return True

    def draft_length(self, most: int) -> int:
        """Tokens to draft now: about twice what was accepted lately, from 1 to ``most``;
        one while probing after a losing verdict (a long probe would only lose more)."""
        if self.pause:
            return 1
        return max(1, min(most, round(2 * self.accepted) + 1))

    def plain_step(self, seconds: float) -> None:
        """A decode step without a draft took ``seconds``."""
        self.plain_seconds = _avg(self.plain_seconds, seconds, first=not self.plain_seconds)
        self._in_a_row = 0

    def drafted(self, accepted: int, draft_seconds: float, verify_seconds: float) -> None:
        """A drafting step: its accepted tokens, the time to draft and the verify step's time."""
        # Counted, not inferred from a zero average: 0 accepted or 0 s extra are real measurements.
        first = self._drafts == 0
        self.accepted = _avg(self.accepted, accepted, first)
        # should_draft() only lets a draft through once a plain step was measured.
        self.extra_seconds = _avg(self.extra_seconds, max(0.0, verify_seconds - self.plain_seconds), first)
        if not first:  # the first draft also read the whole prompt: a cost paid once, not per draft
            self.draft_seconds = _avg(self.draft_seconds, draft_seconds, self._drafts == 1)
        self._drafts += 1
        self._in_a_row += 1
        if self.pays():
            self.pause = 0
        else:
            self.pause = min(MAX_PAUSE, max(1, 2 * self.pause))
            self._skip = self.pause

    def pays(self) -> bool:
        return self.accepted * self.plain_seconds > self.draft_seconds + self.extra_seconds


def _avg(old: float, new: float, first: bool) -> float:
    return new if first else (1 - ALPHA) * old + ALPHA * new  # the first measurement stands alone
