"""Run by tests/model/test_draft_model.py in a fresh process with GGML_CPU_TILED_MM=0.

Speculation needs canonical decoding, which needs that kernel setting from
the process start. Prints one JSON object of facts for the test to assert on.
"""

import json

import kvllama
from kvllama.bench.tiny_model import tiny_model_path
from kvllama.models.default import default_model_path

TEXT = ("The committee postponed its decision until the engineers could inspect the damaged turbine. "
        "Farmers along the valley rotate barley, lentils and clover to keep the soil productive. ") * 3
PROMPTS = {"copy": f"Copy the text exactly.\nText: {TEXT}\nCopy: {TEXT[:60]}",
           "story": "Write a short story about a lighthouse keeper who finds a message in a bottle."}
COMMON = {"canonical_decode": True, "n_seq_max": 2, "n_ctx": 2 * 2048, "n_threads": 2}
out = {}
with kvllama.Engine(cache=None) as eng:
    eng.load_model("plain", **COMMON)
    # The target itself as its draft model: its guesses are its own greedy tokens.
    eng.load_model("self", draft_model=str(default_model_path()), speculative_draft=6, **COMMON)
    # A random-weight model with the same tokenizer: its guesses are (nearly) never right.
    eng.load_model("tiny", draft_model=str(tiny_model_path()), speculative_draft=6, **COMMON)
    for name, prompt in PROMPTS.items():
        plain = eng.complete("plain", prompt, max_tokens=60, temperature=0.0).generated_tokens
        for m in ("self", "tiny"):
            r = eng.complete(m, prompt, max_tokens=60, temperature=0.0)
            out[f"{name}/{m}"] = {"same": r.generated_tokens == plain, "n": len(r.generated_tokens),
                                  "drafted": r.stats.drafted_tokens, "accepted": r.stats.accepted_tokens}
    both = [eng.infer("self", PROMPTS["copy"], max_tokens=30, temperature=0.0),
            eng.infer("self", PROMPTS["story"], max_tokens=30, temperature=0.0)]
    results = [s.result() for s in both]
    alone = [eng.complete("plain", p, max_tokens=30, temperature=0.0).generated_tokens
             for p in PROMPTS.values()]
    out["beside_same"] = [r.generated_tokens for r in results] == alone
    seeded = [eng.complete(m, PROMPTS["copy"], max_tokens=20, temperature=0.8, seed=7).generated_tokens
              for m in ("plain", "self")]
    out["seeded_same"] = seeded[0] == seeded[1]
print(json.dumps(out))
