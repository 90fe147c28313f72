import pytest

from kvllama.errors import InvalidOptionError, InvalidSamplingError
from kvllama.options import ModelOptions
from kvllama.sampling import SamplingParams


@pytest.mark.parametrize(
    ("option", "value", "allowed_fragment"),
    [
        ("split_mode", "diagonal", "none, layer, row"),
        ("flash_attn", "maybe", "on, off, auto"),
        ("type_k", "q3_k", "f16, f32, bf16, q8_0"),
        ("n_seq_max", 0, "between 1 and 256"),
        ("n_batch", "512", "an integer"),
        ("kv_unified", "yes", "true or false"),
        ("n_ctxx", 10, "one of"),
    ],
)
def test_bad_model_option_names_the_option_and_allowed_values(option, value, allowed_fragment):
    with pytest.raises(InvalidOptionError) as info:
        ModelOptions.from_kwargs(**{option: value})
    assert info.value.option == option
    assert option in str(info.value) and allowed_fragment in str(info.value)


def test_quantized_v_cache_needs_flash_attention():
    with pytest.raises(InvalidOptionError, match="flash"):
        ModelOptions.from_kwargs(type_v="q8_0")
    assert ModelOptions.from_kwargs(type_v="q8_0", flash_attn="on").type_v == "q8_0"


def test_defaults_keep_outputs_exact():
    opts = ModelOptions.from_kwargs()
    assert opts.flash_attn == "off" and opts.kv_unified is False
    assert opts.effective_chunk_size() == max(64, opts.n_batch // 4)
    assert ModelOptions.from_kwargs(tensor_split="3,1").tensor_split == (3.0, 1.0)


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": -1},
        {"top_p": 1.5},
        {"max_tokens": -2},
        {"seed": "x"},
        {"stop": 5},
        {"stop": [""]},
        {"repetition_penalty": 0},
        {"min_p": float("nan")},
        {"unknown_knob": 1},
    ],
)
def test_bad_sampling_params_are_typed_errors(params):
    with pytest.raises(InvalidSamplingError):
        SamplingParams.from_kwargs(**params)


def test_seed_is_fixed_once_so_a_run_can_be_replayed():
    p = SamplingParams.from_kwargs(temperature=0.5).with_seed()
    assert p.seed is not None and p.with_seed().seed == p.seed
    assert SamplingParams.from_kwargs(stop="x").stop == ("x",)
