"""The sampler chain handle: one per request, built before admission, freed at finish.

Order follows llama.cpp's common sampler: penalties, grammar, top-k, top-p,
min-p, temperature, then the seeded draw (or greedy at temperature 0).

Without a grammar the chain runs entirely in C (``llama_sampler_sample``
reads the logits row itself), so no logits are copied into Python on the
decode path. With a grammar, llama.cpp's own sample call is unsafe: when the
grammar allows none of the candidates it still picks one and accepting it
throws a C++ exception across the C API, which aborts the process. So the
grammar is kept out of the chain and applied first, on a candidate array we
own; if nothing survives, the request ends with GrammarExhaustedError and
nothing is accepted. Applying the grammar before the penalties picks the same
token as llama.cpp's order: a rejected token's logit is -inf, which the
penalties keep at -inf, and they never touch the grammar's choice of tokens.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import numpy as np

from kvllama.errors import GrammarError, GrammarExhaustedError
from kvllama.native.library import llama
from kvllama.native.model import NativeModel
from kvllama.sampling import SamplingParams

_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class CandidateBuffer:
    """The candidate array grammar sampling fills from a logits row (one per context).

    Shared by every grammar request of a context: sampling runs on the decode
    thread only, one request at a time.
    """

    def __init__(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self.data = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self._one = np.zeros(1, dtype=_TOKEN_DATA)

    def load(self, logits: Any) -> Any:
        """Fill from a ``float *`` logits row; returns a llama_token_data_array over it."""
        lib = llama()
        self.data["id"] = self._ids
        self.data["logit"] = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        self.data["p"] = 0.0
        return lib.llama_token_data_array(
            data=self.data.ctypes.data_as(ctypes.POINTER(lib.llama_token_data)),
            size=self.n_vocab, selected=-1, sorted=False,
        )

    def single(self, token: int) -> Any:
        """A one-candidate array: asks a grammar whether it allows ``token``."""
        lib = llama()
        self._one[0] = (token, 0.0, 0.0)
        return lib.llama_token_data_array(
            data=self._one.ctypes.data_as(ctypes.POINTER(lib.llama_token_data)),
            size=1, selected=-1, sorted=False,
        )

    def any_allowed(self, size: int) -> bool:
        return bool(np.isfinite(self.data["logit"][:size]).any())


def _is_plain_greedy(p: SamplingParams) -> bool:
    no_penalties = p.repetition_penalty == 1.0 and not p.frequency_penalty and not p.presence_penalty
    return p.greedy and p.grammar is None and no_penalties and not p.logit_bias


class NativeSampler:
    def __init__(self, model: NativeModel, params: SamplingParams,
                 candidates: CandidateBuffer | None = None) -> None:
        lib = llama()
        self._lib = lib
        self.grammar: Any = None
        self._candidates = candidates
        # Plain greedy (no penalties, no grammar): the argmax of the logits row, read in
        # place. llama.cpp's greedy chain first copies all n_vocab logits into a candidate
        # array (262,144 entries for Gemma 3), which costs more than the argmax itself.
        self._argmax_vocab = model.n_vocab if _is_plain_greedy(params) else 0
        # Greedy with a grammar: the chain's argmax is asked of the grammar first (see sample).
        self._greedy_grammar = params.greedy and params.grammar is not None
        chain_params = lib.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self.handle = lib.llama_sampler_chain_init(chain_params)
        try:
            self._build(model, params)
        except BaseException:
            self.close()
            raise

    def _build(self, model: NativeModel, p: SamplingParams) -> None:
        lib, add = self._lib, self._add
        if p.grammar is not None:
            grammar = lib.llama_sampler_init_grammar(model.vocab, p.grammar.encode(), b"root")
            if not grammar:
                raise GrammarError(
                    "the GBNF grammar did not parse (it needs a 'root' rule; enable DEBUG "
                    "logging on 'kvllama.llama_cpp' for llama.cpp's parser message)"
                )
            self.grammar = grammar
            if self._candidates is None:
                self._candidates = CandidateBuffer(model.n_vocab)
        if p.logit_bias:
            biases = (lib.llama_logit_bias * len(p.logit_bias))(*p.logit_bias)
            add(lib.llama_sampler_init_logit_bias(model.n_vocab, len(p.logit_bias), biases))
        if p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            add(lib.llama_sampler_init_penalties(
                model.n_vocab, p.penalty_last_n, p.repetition_penalty,
                p.frequency_penalty, p.presence_penalty,
            ))
        if p.greedy:
            add(lib.llama_sampler_init_greedy())
            return
        if p.top_k > 0:
            add(lib.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            add(lib.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            add(lib.llama_sampler_init_min_p(p.min_p, 1))
        add(lib.llama_sampler_init_temp(p.temperature))
        seed = p.seed if p.seed is not None else lib.LLAMA_DEFAULT_SEED
        add(lib.llama_sampler_init_dist(seed))

    def _add(self, sampler: object) -> None:
        # The chain takes ownership: freeing the chain frees its members.
        self._lib.llama_sampler_chain_add(self.handle, sampler)

    def sample(self, ctx_handle: object, index: int, ban: tuple[int, ...] = ()) -> int:
        """Sample from the logits of batch row ``index`` and accept the token.

        ``ban``: tokens that must not be sampled now (end-of-generation tokens
        before ``min_tokens``): their logits in llama.cpp's row are set to -inf
        first, so every path below (argmax, the C chain, the grammar) skips them.
        """
        lib = self._lib
        if ban:
            row_ptr = lib.llama_get_logits_ith(ctx_handle, index)
            if row_ptr:
                np.ctypeslib.as_array(row_ptr, shape=(max(ban) + 1,))[list(ban)] = -np.inf
        if self._argmax_vocab:
            logits = lib.llama_get_logits_ith(ctx_handle, index)
            if not logits:
                raise RuntimeError(f"llama.cpp has no logits for batch row {index}")
            row = np.ctypeslib.as_array(logits, shape=(self._argmax_vocab,))
            return int(row.argmax())  # the first maximum, as llama.cpp's greedy sampler picks
        if self.grammar is None:
            return int(lib.llama_sampler_sample(self.handle, ctx_handle, index))
        cand = self._candidates
        assert cand is not None
        if self._greedy_grammar:
            token = self._greedy_if_allowed(ctx_handle, index)
            if token is not None:
                return token
        cur = cand.load(lib.llama_get_logits_ith(ctx_handle, index))
        lib.llama_sampler_apply(self.grammar, ctypes.byref(cur))
        if not cand.any_allowed(cur.size):
            raise GrammarExhaustedError(
                "the grammar allows none of the model's tokens here (it may require characters "
                "no token can produce); the request ended before accepting anything"
            )
        lib.llama_sampler_apply(self.handle, ctypes.byref(cur))
        selected = int(cur.selected)
        if not 0 <= selected < cur.size or not math.isfinite(cur.data[selected].logit):
            raise GrammarExhaustedError("the sampler chain selected no token the grammar allows")
        token = int(cur.data[selected].id)
        lib.llama_sampler_accept(self.handle, token)
        lib.llama_sampler_accept(self.grammar, token)
        return token

    def _greedy_if_allowed(self, ctx_handle: object, index: int) -> int | None:
        """The chain's greedy choice over every token, if the grammar allows it (else None).

        The same token the grammar-first path picks: the argmax over all tokens, when it is
        allowed, is also the first argmax over the allowed ones. But the grammar is asked about
        one token instead of the whole vocabulary (262,144 for Gemma 3), which for a permissive
        grammar (``tool_choice: "none"``'s, free text with a constraint) is most of a step's time:
        llama.cpp's common sampler does the same.
        """
        lib, cand = self._lib, self._candidates
        assert cand is not None
        cur = cand.load(lib.llama_get_logits_ith(ctx_handle, index))
        lib.llama_sampler_apply(self.handle, ctypes.byref(cur))
        selected = int(cur.selected)
        if not 0 <= selected < cur.size or not math.isfinite(cur.data[selected].logit):
            return None
        token = int(cur.data[selected].id)
        one = cand.single(token)
        lib.llama_sampler_apply(self.grammar, ctypes.byref(one))
        if not math.isfinite(one.data[0].logit):
            return None
        lib.llama_sampler_accept(self.handle, token)
        lib.llama_sampler_accept(self.grammar, token)
        return token

    def logprobs(self, ctx_handle: object, index: int, token: int, top_n: int,
                 n_vocab: int) -> tuple[float, tuple[tuple[int, float], ...]]:
        """The log-probability of ``token`` under batch row ``index``'s logits, and the
        ``top_n`` most likely tokens with theirs (the model's distribution, before
        temperature and truncation, as vLLM reports by default)."""
        row_ptr = self._lib.llama_get_logits_ith(ctx_handle, index)
        if not row_ptr:
            raise RuntimeError(f"llama.cpp has no logits for batch row {index}")
        row = np.ctypeslib.as_array(row_ptr, shape=(n_vocab,))
        peak = float(row.max())
        log_total = peak + math.log(float(np.exp(row - peak, dtype=np.float64).sum()))
        top: tuple[tuple[int, float], ...] = ()
        if top_n > 0:
            best = np.argpartition(-row, top_n - 1)[:top_n]
            best = best[np.argsort(-row[best], kind="stable")]
            top = tuple((int(t), float(row[t]) - log_total) for t in best)
        return float(row[token]) - log_total, top

    def accept(self, token: int) -> None:
        """Advance the chain's state (grammar, penalties) by a token another chain sampled.

        The grammar is asked first: accepting a token it rejects would abort the process.
        """
        lib = self._lib
        if self.grammar is not None:
            assert self._candidates is not None
            one = self._candidates.single(token)
            lib.llama_sampler_apply(self.grammar, ctypes.byref(one))
            if not math.isfinite(one.data[0].logit):
                raise GrammarExhaustedError(f"the grammar does not allow token {token} here")
            lib.llama_sampler_accept(self.grammar, token)
        lib.llama_sampler_accept(self.handle, token)

    def close(self) -> None:
        handle, self.handle = getattr(self, "handle", None), None
        if handle:
            self._lib.llama_sampler_free(handle)
        grammar, self.grammar = getattr(self, "grammar", None), None
        if grammar:
            self._lib.llama_sampler_free(grammar)

    def __del__(self) -> None:
        self.close()
