"""The sampler chain handle: one per request, built at admission, freed at finish.

The chain runs entirely in C (``llama_sampler_sample`` reads the logits row
itself), so no logits are ever copied into Python on the decode path.
Order follows llama.cpp's common sampler: penalties, grammar, top-k, top-p,
min-p, temperature, then the seeded draw (or greedy at temperature 0).
"""

from __future__ import annotations

from kvllama.engine.params import SamplingParams
from kvllama.errors import GrammarError
from kvllama.native.library import llama
from kvllama.native.model import NativeModel


class NativeSampler:
    def __init__(self, model: NativeModel, params: SamplingParams) -> None:
        lib = llama()
        self._lib = lib
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
        if p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            add(lib.llama_sampler_init_penalties(
                model.n_vocab, p.penalty_last_n, p.repetition_penalty,
                p.frequency_penalty, p.presence_penalty,
            ))
        if p.grammar is not None:
            grammar = lib.llama_sampler_init_grammar(model.vocab, p.grammar.encode(), b"root")
            if not grammar:
                raise GrammarError(
                    "the GBNF grammar did not parse (it needs a 'root' rule; enable DEBUG "
                    "logging on 'kvllama.llama_cpp' for llama.cpp's parser message)"
                )
            add(grammar)
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

    def sample(self, ctx_handle: object, index: int) -> int:
        """Sample from the logits of batch row ``index`` and accept the token."""
        return int(self._lib.llama_sampler_sample(self.handle, ctx_handle, index))

    def accept(self, token: int) -> None:
        """Advance the chain's state (grammar, penalties) by a token another chain sampled."""
        self._lib.llama_sampler_accept(self.handle, token)

    def close(self) -> None:
        handle, self.handle = getattr(self, "handle", None), None
        if handle:
            self._lib.llama_sampler_free(handle)

    def __del__(self) -> None:
        self.close()
