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
    cold._models["m"].loop.call(gate.wait)
    streams = [cold.infer("m", P + f" Q{k}", **G) for k in range(4)]
    gate.set()
    out["beside_equals_alone"] = [s.result().generated_tokens for s in streams] == alone
    again = warm.complete("m", P + " Again.", **G)
    out["repeat_read"] = again.cache_delta.read
    out["repeat_len"] = len(warm.tokenize("m", P + " Again."))
print(json.dumps(out))
