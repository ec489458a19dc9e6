"""GGUF export: read back with gguf-py's reader, and a llama.cpp-layout forward in numpy against transformers.

The reference forward (``llama_cpp_forward``) follows llama.cpp's ``llama`` / ``mistral3`` graphs on the GGUF
tensors as stored: interleaved rotary pairs with ``rope_freqs`` dividing each pair's angle (ggml's
``ggml_rope_cache_init``), and mistral3's query temperature. Matching transformers' logits with it proves
the q/k permutation and the rope_freqs semantics without llama.cpp itself (the slow test runs llama.cpp).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import byte_tokenizer, tiny_llama

gguf = pytest.importorskip("gguf")

from hf_ropeid.conversion import convert_model  # noqa: E402  (after the importorskip of gguf)
from hf_ropeid.gguf_export import (  # noqa: E402
    NOPE_FREQ_FACTOR,
    GGUFExportError,
    deinterleave_rotary_rows,
    describe_summary,
    export_gguf,
)
from hf_ropeid.rope_id import RopeIDParameters, inv_freq  # noqa: E402

L = 64
SERVING = 16 * L
ROPE_ID = {"training_length": L, "shortest_period": 8.0, "spectrum": "rope_id", "rotary_fraction": 0.5}


def save_folder(model, path, dtype=torch.float32):
    model.config.max_position_embeddings = SERVING  # the serving length, as the converter will write it
    model.to(dtype).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def converted_folder(tmp_path, name="converted", dtype=torch.float32, **rope_id):
    model = convert_model(tiny_llama(), **{**ROPE_ID, **rope_id})
    return save_folder(model, tmp_path / name, dtype)


def field(reader, key):
    return reader.fields[key].contents()


def gguf_arrays(reader) -> dict[str, np.ndarray]:
    """Every tensor as float32 in numpy's row-major order (rows = ggml's ne[1])."""
    out = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = np.asarray(data, dtype=np.float32).reshape([int(n) for n in reversed(t.shape)])
    return out


def llama_cpp_forward(path, ids: list[int]) -> np.ndarray:
    """Logits [len(ids), vocab] of the GGUF at ``path``, computed as llama.cpp's llama / mistral3 graphs do."""
    reader = gguf.GGUFReader(path)
    arch = field(reader, "general.architecture")
    def kv(key, default=None):
        return field(reader, f"{arch}.{key}") if f"{arch}.{key}" in reader.fields else default

    w = gguf_arrays(reader)
    n_head, n_kv, d = kv("attention.head_count"), kv("attention.head_count_kv"), kv("rope.dimension_count")
    base, eps = kv("rope.freq_base"), kv("attention.layer_norm_rms_epsilon")
    temp_scale = kv("attention.temperature_scale", 0.0)
    floor_scale = kv("rope.scaling.original_context_length", kv("context_length"))
    ff = w.get("rope_freqs.weight", np.ones(d // 2, np.float32)).astype(np.float64)
    pos = np.arange(len(ids), dtype=np.float64)
    theta = pos[:, None] * base ** (-2.0 * np.arange(d // 2) / d)[None, :] / ff[None, :]  # [T, d/2]
    cos, sin = np.cos(theta), np.sin(theta)

    def rope(x):  # x: [T, heads, d], interleaved pairs (2i, 2i+1) as LLAMA_ROPE_TYPE_NORM
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * cos[:, None] - x1 * sin[:, None]
        out[..., 1::2] = x0 * sin[:, None] + x1 * cos[:, None]
        return out

    def rms(x, weight):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight

    x = w["token_embd.weight"][ids].astype(np.float64)
    T = len(ids)
    causal = np.triu(np.full((T, T), -np.inf), 1)
    for layer in range(kv("block_count")):
        def p(name, layer=layer):
            return w[f"blk.{layer}.{name}.weight"].astype(np.float64)

        h = rms(x, p("attn_norm"))
        q = rope((h @ p("attn_q").T).reshape(T, n_head, d))
        k = rope((h @ p("attn_k").T).reshape(T, n_kv, d))
        v = (h @ p("attn_v").T).reshape(T, n_kv, d)
        if temp_scale:  # llm_graph_input_attn_temp, offset 0
            q = q * (1 + temp_scale * np.log(np.floor(pos / floor_scale) + 1.0))[:, None, None]
        k, v = np.repeat(k, n_head // n_kv, axis=1), np.repeat(v, n_head // n_kv, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / math.sqrt(d) + causal
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attn = np.einsum("hts,shd->thd", scores / scores.sum(-1, keepdims=True), v).reshape(T, n_head * d)
        x = x + attn @ p("attn_output").T
        h = rms(x, p("ffn_norm"))
        gate = h @ p("ffn_gate").T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ p("ffn_up").T)) @ p("ffn_down").T
    output = w.get("output.weight", w["token_embd.weight"]).astype(np.float64)
    return rms(x, w["output_norm.weight"]) @ output.T


def transformers_logits(folder, ids: list[int]) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def test_round_trip_metadata_tensors_and_tokenizer(tmp_path):
    folder = converted_folder(tmp_path)
    out = tmp_path / "model.gguf"
    summary = export_gguf(folder, out)
    reader = gguf.GGUFReader(out)
    config = json.loads((folder / "config.json").read_text())
    params = RopeIDParameters(head_dim=16, **{k: v for k, v in config["rope_parameters"].items() if k != "rope_type"})

    assert field(reader, "general.architecture") == "llama" == summary["architecture"]
    assert field(reader, "llama.context_length") == SERVING == summary["context_length"]
    assert field(reader, "llama.attention.head_count") == 4 and field(reader, "llama.attention.head_count_kv") == 2
    assert field(reader, "llama.rope.dimension_count") == 16 == summary["head_dim"]
    assert field(reader, "llama.block_count") == 2 and field(reader, "llama.embedding_length") == 64
    assert json.loads(field(reader, "hf_ropeid.rope_parameters")) == params.to_rope_parameters()

    # rope_freqs: llama.cpp's angle p * base**(-2i/d) / ff_i is RoPE-ID's p * w_i; NoPE pairs ~0 at any position.
    tensors = {t.name: t for t in reader.tensors}
    factors = np.asarray(tensors["rope_freqs.weight"].data, dtype=np.float64)
    assert tensors["rope_freqs.weight"].tensor_type == gguf.GGMLQuantizationType.F32 and factors.shape == (8,)
    base = 10_000.0 ** (-2.0 * np.arange(8) / 16)
    expected = inv_freq(params).numpy()
    rotated = params.num_rotated_pairs
    np.testing.assert_allclose(base[:rotated] / factors[:rotated], expected[:rotated], rtol=1e-6)
    assert np.all(factors[rotated:] == np.float32(NOPE_FREQ_FACTOR))
    assert np.all(1e7 * base[rotated:] / factors[rotated:] < 1e-20)
    assert summary["rotated_pairs"] == rotated == 4 and summary["nope_pairs"] == 4

    # Every HF weight is there with its shape; q/k de-permuted back equal the HF weights.
    from safetensors.torch import load_file

    hf = load_file(folder / "model.safetensors")
    arrays = gguf_arrays(reader)
    assert len(arrays) == len(hf) + 1 == summary["tensors"]  # + rope_freqs
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    for name, weight in hf.items():
        array = torch.from_numpy(arrays[names.get_name(name, try_suffixes=(".weight",))].copy())
        assert tuple(array.shape) == tuple(weight.shape), name
        if name.endswith("q_proj.weight"):
            array = deinterleave_rotary_rows(array, 4)
        elif name.endswith("k_proj.weight"):
            array = deinterleave_rotary_rows(array, 2)
        assert torch.equal(array, weight), name

    assert len(reader.fields["tokenizer.ggml.tokens"].data) == 260 == summary["tokenizer"]["tokens"]
    assert field(reader, "tokenizer.ggml.model") == "gpt2" and field(reader, "tokenizer.ggml.bos_token_id") == 256
    assert summary["exact_up_to"] == L and "WITHOUT the model's query temperature" in summary["differences"][0]
    assert "DIFFERS FROM TRANSFORMERS" in field(reader, "general.description")
    assert "Exact up to position 64" in describe_summary(summary)
    assert not list(tmp_path.glob("*.partial"))


def test_llama_cpp_layout_reproduces_transformers_inside_training_length(tmp_path):
    folder = converted_folder(tmp_path)
    export_gguf(folder, tmp_path / "m.gguf")
    ids = torch.randint(0, 256, (L,), generator=torch.Generator().manual_seed(0)).tolist()
    reference, hf = llama_cpp_forward(tmp_path / "m.gguf", ids), transformers_logits(folder, ids)
    np.testing.assert_allclose(reference, hf, atol=2e-4, rtol=0)
    # Beyond L the query_log temperature is missing from llama.cpp, as the summary states.
    ids = torch.randint(0, 256, (3 * L,), generator=torch.Generator().manual_seed(1)).tolist()
    beyond = np.abs(llama_cpp_forward(tmp_path / "m.gguf", ids) - transformers_logits(folder, ids))
    assert beyond[:L].max() < 2e-4 and beyond[2 * L :].max() > 1e-3


@pytest.mark.parametrize("temperature", ["floor_log", "none"])
def test_export_is_exact_far_beyond_training_length(tmp_path, temperature):
    folder = converted_folder(tmp_path, temperature=temperature, temperature_coefficient=0.3)
    summary = export_gguf(folder, tmp_path / "m.gguf")
    assert summary["exact_up_to"] is None and summary["differences"] == []
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    if temperature == "floor_log":
        assert summary["architecture"] == "mistral3" == field(reader, "general.architecture")
        assert field(reader, "mistral3.attention.temperature_scale") == pytest.approx(0.3)
        assert field(reader, "mistral3.rope.scaling.original_context_length") == L
    else:
        assert summary["architecture"] == "llama"
    ids = torch.randint(0, 256, (4 * L + 5,), generator=torch.Generator().manual_seed(2)).tolist()
    np.testing.assert_allclose(llama_cpp_forward(tmp_path / "m.gguf", ids), transformers_logits(folder, ids), atol=3e-4, rtol=0)


def test_plain_llama_and_bfloat16_folders(tmp_path):
    plain = save_folder(tiny_llama(), tmp_path / "plain")
    summary = export_gguf(plain, tmp_path / "plain.gguf")
    reader = gguf.GGUFReader(tmp_path / "plain.gguf")
    assert "rope_freqs.weight" not in {t.name for t in reader.tensors} and summary["exact_up_to"] is None
    ids = list(range(0, 256, 4))  # L tokens: the merged model has the query_log temperature beyond L
    np.testing.assert_allclose(llama_cpp_forward(tmp_path / "plain.gguf", ids), transformers_logits(plain, ids), atol=2e-4, rtol=0)
    assert "at every length" in describe_summary(summary)
    # A stock LlamaForCausalLM with rope_type rope_id: the spectrum, no temperature (stock attention), exact beyond L.
    stock = save_folder(tiny_llama(rope_parameters={"rope_type": "rope_id", "rope_theta": 10_000.0, **ROPE_ID}), tmp_path / "stock")
    summary = export_gguf(stock, tmp_path / "stock.gguf")
    assert summary["architecture"] == "llama" and summary["temperature"] == "none" and summary["exact_up_to"] is None
    long_ids = torch.randint(0, 256, (3 * L,), generator=torch.Generator().manual_seed(3)).tolist()
    np.testing.assert_allclose(llama_cpp_forward(tmp_path / "stock.gguf", long_ids), transformers_logits(stock, long_ids), atol=2e-4, rtol=0)
    # A merged or bf16 folder: weights are widened to float32 on export, so the logits match exactly.
    merged = converted_folder(tmp_path, "merged", dtype=torch.bfloat16)
    export_gguf(merged, tmp_path / "merged.gguf")
    np.testing.assert_allclose(llama_cpp_forward(tmp_path / "merged.gguf", ids), transformers_logits(merged, ids), atol=2e-4, rtol=0)


@pytest.mark.parametrize("dtype,matrix_type,tolerance", [("f16", "F16", 2e-2), ("q8_0", "Q8_0", 0.1)])
def test_f16_and_q8_0(tmp_path, dtype, matrix_type, tolerance):
    folder = converted_folder(tmp_path)
    summary = export_gguf(folder, tmp_path / "m.gguf", dtype=dtype)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == matrix_type and types["token_embd.weight"] == matrix_type
    assert types["rope_freqs.weight"] == "F32" and types["blk.0.attn_norm.weight"] == "F32"
    assert summary["dtype"] == dtype
    ids = list(range(40, 100))
    np.testing.assert_allclose(llama_cpp_forward(tmp_path / "m.gguf", ids), transformers_logits(folder, ids), atol=tolerance, rtol=0)


def test_errors_are_clear_and_leave_nothing_behind(tmp_path):
    window = converted_folder(tmp_path, "window", rotary_window=32, temperature="none")
    with pytest.raises(GGUFExportError, match="rotary_window=32.*no llama.cpp architecture"):
        export_gguf(window, tmp_path / "w.gguf")
    assert list(tmp_path.glob("w.gguf*")) == []

    folder = converted_folder(tmp_path)
    out = tmp_path / "m.gguf"
    out.write_text("keep me")
    with pytest.raises(GGUFExportError, match="exists; pass --force"):
        export_gguf(folder, out)
    assert out.read_text() == "keep me"
    assert export_gguf(folder, out, force=True)["bytes"] > 1000
    with pytest.raises(GGUFExportError, match="Unknown dtype 'bf16'"):
        export_gguf(folder, tmp_path / "x.gguf", dtype="bf16")

    other = tmp_path / "mistral"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}))
    with pytest.raises(GGUFExportError, match="supports Llama checkpoints only"):
        export_gguf(other, tmp_path / "x.gguf")

    # An error while writing (here: a broken weights file) removes the partial file.
    broken = converted_folder(tmp_path, "broken")
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    from safetensors import SafetensorError

    with pytest.raises(SafetensorError):
        export_gguf(broken, tmp_path / "b.gguf")
    assert list(tmp_path.glob("b.gguf*")) == []


@pytest.mark.slow
def test_llama_cpp_runs_exported_smollm2_like_transformers(tmp_path):
    """The real runtime: llama.cpp (llama-cpp-python) on the converted SmolLM2, L = 256, 3L tokens."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    from hf_ropeid.assets import shakespeare_texts, smollm2_checkpoint
    from hf_ropeid.conversion import convert_checkpoint

    source = smollm2_checkpoint("float32")
    tokenizer = AutoTokenizer.from_pretrained(source)
    text = shakespeare_texts()["hamlet"].read_text(encoding="utf-8", errors="replace")
    ids = tokenizer(text[:8000], add_special_tokens=False)["input_ids"][: 3 * 256]
    for temperature, exact_beyond in (("floor_log", True), ("query_log", False)):
        folder = convert_checkpoint(source, tmp_path / temperature, verify=False, training_length=256, temperature=temperature)
        summary = export_gguf(folder, tmp_path / f"{temperature}.gguf")
        assert summary["tokenizer"]["pre"] == "smollm" and summary["tokenizer"]["chat_template"]
        llm = llama_cpp.Llama(model_path=str(tmp_path / f"{temperature}.gguf"), n_ctx=len(ids), logits_all=True, n_threads=2, verbose=False)
        llm.eval(ids)
        theirs = np.array(llm.scores[: len(ids)], dtype=np.float64)
        llm.close()
        ours = transformers_logits(folder, ids)
        delta, agree = np.abs(theirs - ours).max(-1), theirs.argmax(-1) == ours.argmax(-1)
        assert delta[:256].max() < 0.25 and agree[:256].mean() > 0.98, (temperature, delta[:256].max(), agree[:256].mean())
        if exact_beyond:
            assert delta[256:].max() < 0.25 and agree[256:].mean() > 0.98, (delta[256:].max(), agree[256:].mean())
        else:
            assert delta[512:].max() > 0.25  # no query_log temperature in llama.cpp, as the summary says


def test_export_gguf_command_prints_the_summary_and_refuses_an_existing_file(tmp_path):
    from typer.testing import CliRunner

    from hf_ropeid.cli import app

    folder = converted_folder(tmp_path, temperature="floor_log")
    out = tmp_path / "model.gguf"
    result = CliRunner().invoke(app, ["export-gguf", str(folder), str(out), "--dtype", "f16"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and f"wrote {out}" in result.stdout and "context_length 1024" in result.stdout
    assert "training length 64" in result.stdout and "at every length" in result.stdout
    again = CliRunner().invoke(app, ["export-gguf", str(folder), str(out)])
    assert again.exit_code == 2 and again.stderr.startswith("error: ")
    assert len(again.stderr.strip().splitlines()) == 1 and "Traceback" not in again.output
    assert issubclass(GGUFExportError, __import__("hf_ropeid.errors").errors.HfRopeIDError)
