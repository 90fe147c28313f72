"""Run by tests/model/test_canonical_decode.py in a fresh process with GGML_CPU_TILED_MM=0.

ggml reads the variable once per process, at its first matmul, so canonical
decoding cannot be checked inside the test process (which runs stock kernels).
Prints one JSON object of facts for the test to assert on.
"""

import json
import threading

import kvllama
from kvllama.kvcache import CacheConfig

P = "Notes: " + " ".join(f"ship {i} left harbour {i % 5} at dawn." for i in range(30))
G = {"max_tokens": 24, "temperature": 0.0}
out = {}
with (kvllama.Engine(cache=None) as cold,
      kvllama.Engine(cache=CacheConfig(shm_dir=None, disk_dir=None)) as warm):
    cold.load_model("m", canonical_decode=True, n_seq_max=4, n_ctx=4 * 2048)
    warm.load_model("m", canonical_decode=True, n_seq_max=4, n_ctx=4 * 2048)
    t1 = warm.complete("m", P, session_id="s", **G)
    p2 = [*t1.context_tokens, *warm.tokenize("m", " Then?", add_special=False)]
    t2 = warm.complete("m", p2, session_id="s", **G)
    c2 = cold.complete("m", p2, **G)
    out["turn1_gen"] = len(t1.generated_tokens)
    out["read"] = t2.cache_delta.read
    out["expected_read"] = len(t1.context_tokens) - 1
    out["sticky_equals_cold"] = t2.generated_tokens == c2.generated_tokens
    alone = [cold.complete("m", P + f" Q{k}", **G).generated_tokens for k in range(4)]
    gate = threading.Event()
    cold.models.get("m").loop.call(gate.wait)
    streams = [cold.infer("m", P + f" Q{k}", **G) for k in range(4)]
    gate.set()
    out["beside_equals_alone"] = [s.result().generated_tokens for s in streams] == alone
    again = warm.complete("m", P + " Again.", **G)
    out["repeat_read"] = again.cache_delta.read
    out["repeat_len"] = len(warm.tokenize("m", P + " Again."))
# Speculative decoding on a copy task: the same tokens as without it, most drafts accepted.
TEXT = ("The committee postponed its decision until the engineers could inspect the damaged turbine. "
        "Farmers along the valley rotate barley, lentils and clover to keep the soil productive. ") * 3
COPY = f"Copy the text exactly.\nText: {TEXT}\nCopy: {TEXT[:60]}"
with kvllama.Engine(cache=None) as eng:
    eng.load_model("plain", canonical_decode=True, n_seq_max=2, n_ctx=2 * 2048)
    eng.load_model("spec", canonical_decode=True, speculative_draft=8, n_seq_max=2, n_ctx=2 * 2048)
    plain = eng.complete("plain", COPY, max_tokens=80, temperature=0.0)
    spec = eng.complete("spec", COPY, max_tokens=80, temperature=0.0)
    out["spec_same"] = spec.generated_tokens == plain.generated_tokens
    out["spec_drafted"], out["spec_accepted"] = spec.stats.drafted_tokens, spec.stats.accepted_tokens
    seeded = [eng.complete(m, COPY, max_tokens=20, temperature=0.8, seed=5) for m in ("plain", "spec")]
    out["seeded_same"] = seeded[0].generated_tokens == seeded[1].generated_tokens
print(json.dumps(out))
