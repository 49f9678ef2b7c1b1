"""The shipped data catalogs: GPU and CPU datasheets, Hugging Face model configs.

Parameter counts are asserted as exact integers. The first block are published counts
(Hugging Face safetensors metadata / model cards / Keras presets); the second block are counts
computed from the shipped configs and cross-checked against the models' published rounded sizes.
"""

from __future__ import annotations

import json
import math
import tomllib
import warnings
from importlib import resources

import pytest

from perfcast.hardware import get_cpu, get_gpu, list_cpus, list_gpus
from perfcast.models import ConfigError, get_model, list_models, spec_from_config

pytestmark = pytest.mark.unit


def _norm(s: str) -> str:
    return "".join(ch for ch in s.lower() if ch.isalnum())


def _data_files(kind: str) -> list:
    root = resources.files("perfcast.hardware") / "data" / kind
    return sorted((p for p in root.iterdir() if p.name.endswith(".toml")), key=lambda p: p.name)


# --------------------------------------------------------------------------------------
# GPUs

EXPECTED_GPUS = {
    "h100-sxm", "h100-pcie", "h200", "a100-40gb", "a100-80gb", "l40s", "l4", "b200", "mi300x", "rtx-4090",
}


def test_every_gpu_file_loads_and_is_listed():
    files = _data_files("gpus")
    ids = {tomllib.loads(f.read_text())["id"] for f in files}
    assert len(ids) == len(files), "two GPU files share an id"
    assert {g.id for g in list_gpus()} == ids
    assert ids >= EXPECTED_GPUS
    for f in files:
        assert f.name == tomllib.loads(f.read_text())["id"] + ".toml"


@pytest.mark.parametrize(
    "alias, gpu_id",
    [
        ("H100", "h100-sxm"),
        ("h100", "h100-sxm"),
        ("H100-SXM5-80GB", "h100-sxm"),
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("h200", "h200"),
        ("h200-sxm", "h200"),
        ("H200", "h200"),
        ("NVIDIA H200", "h200"),
        ("H200-SXM-141GB", "h200"),
        ("A100", "a100-80gb"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
        ("NVIDIA L40S", "l40s"),
        ("L4", "l4"),
        ("NVIDIA B200", "b200"),
        ("AMD Instinct MI300X", "mi300x"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("rtx4090", "rtx-4090"),
    ],
)
def test_gpu_aliases_resolve(alias, gpu_id):
    assert get_gpu(alias).id == gpu_id


def test_no_two_gpus_share_an_alias():
    owner: dict[str, str] = {}
    for g in list_gpus():
        for name in {g.id, g.name, *g.aliases}:
            key = _norm(name)
            assert owner.setdefault(key, g.id) == g.id, f"{name!r} names both {owner[key]} and {g.id}"


def test_unknown_gpu_message_lists_known():
    with pytest.raises(ValueError, match="h100-sxm"):
        get_gpu("no-such-gpu")


@pytest.mark.parametrize("gpu", sorted(EXPECTED_GPUS))
def test_gpu_numbers_are_sane(gpu):
    g = get_gpu(gpu)
    for dtype, v in g.peak_flops.items():
        assert v > 0 and math.isfinite(v), dtype
    assert g.flops("bf16") >= g.flops("fp32")
    assert g.flops("fp16") >= g.flops("fp32")
    assert g.flops("tf32") >= g.flops("fp32")
    if "fp8" in g.peak_flops:
        assert g.flops("fp8") >= g.flops("bf16")
    for v in (g.mem_capacity_bytes, g.mem_bw_bytes_per_s, g.l2_bytes, g.sm_count, g.boost_clock_hz,
              g.pcie_bw_bytes_per_s, g.tdp_w, g.price_per_hour_usd):
        assert v > 0
    assert g.nvlink_bw_bytes_per_s >= 0
    assert 8 * 2**30 < g.mem_capacity_bytes < 256 * 2**30
    assert 1e11 < g.mem_bw_bytes_per_s < 2e13
    assert 1e9 < g.boost_clock_hz < 3.5e9
    assert g.vendor in ("nvidia", "amd")
    assert g.sources, "every GPU names its sources"


def test_gpu_known_figures():
    h200, h100 = get_gpu("h200"), get_gpu("h100-sxm")
    assert h200.mem_capacity_bytes == 143771 * 2**20
    assert h200.mem_bw_bytes_per_s == 4.8e12
    assert h200.sm_count == h100.sm_count == 132
    assert h200.peak_flops == h100.peak_flops
    assert get_gpu("a100-80gb").peak_flops.get("fp8") is None  # Ampere has no FP8
    assert get_gpu("b200").flops("fp4") == 2 * get_gpu("b200").flops("fp8")
    assert get_gpu("mi300x").sm_count == 304
    for g in ("l40s", "l4", "rtx-4090"):
        assert get_gpu(g).nvlink_bw_bytes_per_s == 0


# --------------------------------------------------------------------------------------
# CPUs

EXPECTED_CPUS = {"xeon-8480", "xeon-8592", "xeon-6980p", "epyc-9654", "epyc-9754", "epyc-9755", "ryzen-9-7950x"}


def test_every_cpu_file_loads_and_is_listed():
    files = _data_files("cpus")
    ids = {tomllib.loads(f.read_text())["id"] for f in files}
    assert len(ids) == len(files)
    assert {c.id for c in list_cpus()} == ids
    assert ids >= EXPECTED_CPUS


def test_no_two_cpus_share_an_alias():
    owner: dict[str, str] = {}
    for c in list_cpus():
        for name in {c.id, c.name, *c.aliases}:
            key = _norm(name)
            assert owner.setdefault(key, c.id) == c.id, f"{name!r} names both {owner[key]} and {c.id}"


@pytest.mark.parametrize(
    "alias, cpu_id",
    [
        ("Xeon Platinum 8480+", "xeon-8480"),
        ("Intel Xeon Platinum 8592+", "xeon-8592"),
        ("Xeon 6980P", "xeon-6980p"),
        ("AMD EPYC 9654 96-Core Processor", "epyc-9654"),
        ("EPYC 9755", "epyc-9755"),
        ("Ryzen 9 7950X", "ryzen-9-7950x"),
    ],
)
def test_cpu_aliases_resolve(alias, cpu_id):
    assert get_cpu(alias).id == cpu_id


@pytest.mark.parametrize("cpu", sorted(EXPECTED_CPUS))
def test_cpu_numbers_are_sane(cpu):
    c = get_cpu(cpu)
    for v in (c.cores, c.sockets, c.base_clock_hz, c.boost_clock_hz, c.fp32_flops_per_cycle_per_core,
              c.bf16_flops_per_cycle_per_core, c.mem_channels, c.mem_bw_bytes_per_s, c.mem_capacity_bytes,
              c.pcie_bw_bytes_per_s, c.l3_bytes, c.tdp_w):
        assert v > 0
    assert c.sockets == 1
    assert c.boost_clock_hz >= c.base_clock_hz
    assert c.peak_flops("bf16") >= c.peak_flops("fp32")
    # theoretical DRAM bandwidth: channels x MT/s x 8 bytes, MT/s between DDR5-4800 and DDR5-6400
    per_channel = c.mem_bw_bytes_per_s / c.mem_channels
    assert 4800e6 * 8 <= per_channel <= 6400e6 * 8
    assert c.sources


def test_cpu_amx_and_threads():
    spr = get_cpu("xeon-8480")
    assert spr.peak_flops("bf16") == 56 * 1024 * 3.0e9
    assert spr.peak_flops("fp32", threads=8) == 8 * 64 * 3.0e9


# --------------------------------------------------------------------------------------
# Models

SHIPPED = [
    "meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-70B",
    "meta-llama/Llama-3.1-405B", "meta-llama/Llama-3.3-70B-Instruct", "meta-llama/Llama-2-7b-hf",
    "meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-70b-hf",
    "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B", "Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-14B", "Qwen/Qwen2.5-32B",
    "Qwen/Qwen2.5-72B", "Qwen/Qwen3-0.6B", "Qwen/Qwen3-4B", "Qwen/Qwen3-8B", "Qwen/Qwen3-14B", "Qwen/Qwen3-32B",
    "mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mistral-Nemo-Base-2407",
    "mistralai/Mixtral-8x7B-v0.1", "mistralai/Mixtral-8x22B-v0.1",
    "google/gemma-2-2b", "google/gemma-2-9b", "google/gemma-2-27b", "google/gemma-3-1b-pt",
    "microsoft/Phi-3-mini-4k-instruct", "microsoft/Phi-3-medium-4k-instruct",
    "Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-235B-A22B", "Qwen/Qwen1.5-MoE-A2.7B",
    "deepseek-ai/DeepSeek-V2-Lite", "deepseek-ai/DeepSeek-V3",
]


def test_list_models_has_every_shipped_config():
    assert set(SHIPPED) <= set(list_models())


@pytest.mark.parametrize("hf_id", SHIPPED)
def test_every_shipped_model_loads_without_warning(hf_id):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = get_model(hf_id)
    assert spec.name == hf_id
    assert spec.hidden > 0 and spec.n_layers > 0 and spec.vocab > 0
    assert spec.n_heads % spec.n_kv_heads == 0
    assert spec.max_positions > 0
    assert 0 < spec.active_params() <= spec.total_params()


def test_short_name_and_case_resolve():
    assert get_model("Llama-3.1-8B").name == "meta-llama/Llama-3.1-8B"
    assert get_model("meta-llama/llama-3.1-8b").name == "meta-llama/Llama-3.1-8B"


def test_shipped_configs_are_plain_hf_json():
    root = resources.files("perfcast.models") / "configs"
    for entry in root.iterdir():
        if entry.name.endswith(".json"):
            assert "__" in entry.name
            cfg = json.loads(entry.read_text())
            assert cfg["architectures"] and cfg["model_type"]


# published counts (safetensors metadata, model cards, Keras presets)
PUBLISHED_PARAMS = {
    "meta-llama/Llama-3.1-8B": 8_030_261_248,
    "meta-llama/Llama-3.2-1B": 1_235_814_400,
    "meta-llama/Llama-3.2-3B": 3_212_749_824,
    "meta-llama/Llama-3.1-70B": 70_553_706_496,
    "meta-llama/Llama-3.1-405B": 405_853_388_800,
    "Qwen/Qwen2.5-7B": 7_615_616_512,
    "Qwen/Qwen3-8B": 8_190_735_360,
    "mistralai/Mistral-7B-v0.1": 7_241_732_096,
    "mistralai/Mixtral-8x7B-v0.1": 46_702_792_704,
    "google/gemma-2-9b": 9_241_705_984,
    "microsoft/Phi-3-mini-4k-instruct": 3_821_079_552,
    # DeepSeek-V3 without the multi-token-prediction module; the checkpoint's 684,531,386,000 adds the
    # MTP module (13,463,426,304, own embedding and head copies included) and 41,540,496 FP8 block scales
    "deepseek-ai/DeepSeek-V3": 671_026_419_200,
    "google/gemma-3-1b-pt": 999_885_952,
    "mistralai/Mistral-Nemo-Base-2407": 12_247_782_400,
}

# computed from the shipped configs; each agrees with the model card's rounded size
COMPUTED_PARAMS = {
    "meta-llama/Llama-3.3-70B-Instruct": 70_553_706_496,
    "meta-llama/Llama-2-7b-hf": 6_738_415_616,
    "meta-llama/Llama-2-13b-hf": 13_015_864_320,
    "meta-llama/Llama-2-70b-hf": 68_976_648_192,
    "Qwen/Qwen2.5-0.5B": 494_032_768,
    "Qwen/Qwen2.5-1.5B": 1_543_714_304,
    "Qwen/Qwen2.5-14B": 14_770_033_664,
    "Qwen/Qwen2.5-32B": 32_763_876_352,
    "Qwen/Qwen2.5-72B": 72_706_203_648,
    "Qwen/Qwen3-0.6B": 596_049_920,
    "Qwen/Qwen3-4B": 4_022_468_096,
    "Qwen/Qwen3-14B": 14_768_307_200,
    "Qwen/Qwen3-32B": 32_762_123_264,
    "mistralai/Mistral-7B-Instruct-v0.3": 7_248_023_552,
    "mistralai/Mixtral-8x22B-v0.1": 140_620_634_112,
    "google/gemma-2-2b": 2_614_341_888,
    "google/gemma-2-27b": 27_227_128_320,
    "microsoft/Phi-3-medium-4k-instruct": 13_960_238_080,
    "Qwen/Qwen3-30B-A3B": 30_532_122_624,
    "Qwen/Qwen3-235B-A22B": 235_093_634_560,
    "Qwen/Qwen1.5-MoE-A2.7B": 14_315_784_192,
    "deepseek-ai/DeepSeek-V2-Lite": 15_706_484_224,
}


@pytest.mark.parametrize("hf_id, n", sorted({**PUBLISHED_PARAMS, **COMPUTED_PARAMS}.items()))
def test_exact_parameter_counts(hf_id, n):
    assert get_model(hf_id).total_params() == n


@pytest.mark.parametrize(
    "hf_id, n",
    [
        ("mistralai/Mixtral-8x7B-v0.1", 12_879_925_248),  # "12.9B active"
        ("Qwen/Qwen3-30B-A3B", 3_353_032_704),  # "3.3B activated"
        ("Qwen/Qwen3-235B-A22B", 22_190_763_520),  # "22B activated"
        ("deepseek-ai/DeepSeek-V3", 37_552_297_472),  # "37B activated" (embedding included here)
    ],
)
def test_active_parameter_counts(hf_id, n):
    assert get_model(hf_id).active_params() == n


@pytest.mark.parametrize(
    "hf_id, head_dim",
    [
        ("meta-llama/Llama-3.1-8B", 128),  # no head_dim in config: 4096 / 32
        ("microsoft/Phi-3-mini-4k-instruct", 96),  # 3072 / 32
        ("Qwen/Qwen2.5-0.5B", 64),  # 896 / 14
        ("mistralai/Mistral-Nemo-Base-2407", 128),  # explicit, != 5120 / 32 = 160
        ("Qwen/Qwen3-0.6B", 128),  # explicit, != 1024 / 16 = 64
        ("google/gemma-2-27b", 128),  # explicit, != 4608 / 32 = 144
        ("google/gemma-3-1b-pt", 256),  # explicit, != 1152 / 4 = 288
        ("deepseek-ai/DeepSeek-V3", 192),  # MLA: qk_nope 128 + qk_rope 64
    ],
)
def test_head_dim(hf_id, head_dim):
    assert get_model(hf_id).head_dim == head_dim


def test_model_features_read_from_configs():
    assert get_model("Llama-3.2-1B").tied_embeddings
    assert not get_model("Llama-3.1-8B").tied_embeddings
    assert get_model("Llama-3.1-8B").rope_scaling == "llama3"
    assert get_model("Qwen2.5-7B").attn_bias and not get_model("Qwen2.5-7B").o_bias
    assert get_model("Qwen2.5-7B").sliding_window is None  # declared but use_sliding_window false
    assert get_model("Qwen3-8B").qk_norm
    m7 = get_model("Mistral-7B-v0.1")
    assert (m7.sliding_window, m7.sliding_layers) == (4096, 32)
    assert get_model("Mistral-7B-Instruct-v0.3").sliding_window is None
    g2 = get_model("gemma-2-9b")
    assert (g2.sliding_window, g2.sliding_layers, g2.post_norms, g2.mlp_act) == (4096, 21, True, "geglu")
    g3 = get_model("gemma-3-1b-pt")
    assert (g3.sliding_window, g3.sliding_layers) == (512, 22)  # 5 local layers per global one
    mx = get_model("Mixtral-8x7B-v0.1")
    assert (mx.n_experts, mx.experts_per_token, mx.n_moe_layers) == (8, 2, 32)
    ds = get_model("DeepSeek-V3")
    assert ds.is_mla and ds.kv_elems_per_token_per_layer() == 512 + 64
    assert (ds.first_dense_layers, ds.n_moe_layers, ds.n_dense_layers) == (3, 58, 3)
    assert get_model("DeepSeek-V2-Lite").q_lora_rank == 0
    assert get_model("Qwen1.5-MoE-A2.7B").n_shared_experts == 1


# --------------------------------------------------------------------------------------
# config errors

def _llama_cfg() -> dict:
    text = (resources.files("perfcast.models") / "configs" / "meta-llama__Llama-3.1-8B.json").read_text()
    return json.loads(text)


def test_missing_hidden_size_names_the_field():
    cfg = _llama_cfg()
    del cfg["hidden_size"]
    with pytest.raises(ConfigError, match="hidden_size"):
        spec_from_config(cfg)


def test_missing_num_hidden_layers_names_the_field():
    cfg = _llama_cfg()
    del cfg["num_hidden_layers"]
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        spec_from_config(cfg)


def test_indivisible_head_dim_without_explicit_head_dim_is_an_error():
    cfg = _llama_cfg() | {"hidden_size": 4100}
    with pytest.raises(ConfigError, match="head_dim"):
        spec_from_config(cfg)


def test_unknown_model_type_warns_but_loads():
    cfg = _llama_cfg() | {"model_type": "mystery_llm", "architectures": ["MysteryForCausalLM"]}
    with pytest.warns(UserWarning, match="mystery_llm"):
        spec = spec_from_config(cfg)
    assert spec.total_params() == 8_030_261_248
    assert any("mystery_llm" in a for a in spec.approximations)


def test_config_path_loads(tmp_path):
    d = tmp_path / "my-model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(_llama_cfg()))
    assert get_model(str(d)).total_params() == 8_030_261_248
    assert get_model(str(d / "config.json")).total_params() == 8_030_261_248


def test_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="perfcast models"):
        get_model("no-such-org/no-such-model")
