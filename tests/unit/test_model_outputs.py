"""Model outputs checked against values computed independently in the test: exact match on records whose answers
are and are not the model's greedy output, the prompt-masked loss of a record by hand, merged weights against the
adapter-wrapped base, and the training argv read back by the recipe's own parser."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tasks import inference
from tasks.evaluate import GateConfig, ModelScores, apply_gate, evaluate, perplexity, score
from tasks.finetune import AlpacaloraFinetune
from tasks.finetune.alpacalora import SCRIPT_ARGS
from tasks.finetune.merge import UnchangedWeightsError, check_weights_moved, merge_lora, weight_delta
from tasks.finetune.merge import main as merge_main
from tasks.finetune.train_lora import parse_args
from tests.support.models import greedy_by_hand
from tests.support.paths import TINY_MODEL

STYLE = "alpaca"
RECORDS = [{"instruction": "Convert the word to upper case.", "input": w, "output": ""}
           for w in ("saw", "pen", "cup", "map")]


@pytest.fixture(scope="module")
def tiny():
    return inference.load_model(str(TINY_MODEL))


def test_exact_match_is_the_share_of_greedy_answers(tiny):
    model, tokenizer = tiny
    prompts = inference.render_prompts(STYLE, RECORDS, str(TINY_MODEL))
    answers = [greedy_by_hand(model, tokenizer, p, 8) for p in prompts]
    assert any(a.strip() for a in answers), "the check needs answers that are not empty"
    # Records 0 and 2 expect the model's own greedy answer, 1 and 3 something else: exact match must be 0.5.
    records = [{**r, "output": a if i % 2 == 0 else a + " wrong"} for i, (r, a) in enumerate(zip(RECORDS, answers))]
    result = score(str(TINY_MODEL), records, STYLE, max_new_tokens=8)
    assert result.exact_match == 0.5 and result.n == 4
    assert [s["got"] for s in result.samples] == [a.strip() for a in answers]
    assert [s["expected"] for s in result.samples] == [r["output"] for r in records]
    assert score(str(TINY_MODEL), records[::2], STYLE, max_new_tokens=8).exact_match == 1.0


def response_loss_by_hand(model, tokenizer, prompt: str, output: str, bos: bool = True) -> tuple[float, int]:
    """Summed cross-entropy of output + EOS given (BOS +) prompt, and the number of those tokens."""
    bos_text = tokenizer.bos_token if bos else ""
    head = tokenizer(bos_text + prompt, add_special_tokens=False).input_ids
    full = tokenizer(bos_text + prompt + output + tokenizer.eos_token, add_special_tokens=False).input_ids
    assert full[:len(head)] == head
    with torch.inference_mode():
        logp = F.log_softmax(model(input_ids=torch.tensor([full])).logits[0].float(), dim=-1)
    total = -sum(float(logp[t - 1, full[t]]) for t in range(len(head), len(full)))
    return total, len(full) - len(head)


def test_validation_loss_counts_only_the_response_tokens(tiny):
    model, tokenizer = tiny
    records = [{**RECORDS[0], "output": "SAW"}, {**RECORDS[1], "output": "PEN and a longer answer"}]
    prompts = inference.render_prompts(STYLE, records, str(TINY_MODEL))
    one, n_one = response_loss_by_hand(model, tokenizer, prompts[0], "SAW")
    assert math.isclose(score(str(TINY_MODEL), records[:1], STYLE, max_new_tokens=1).val_loss, one / n_one,
                        rel_tol=1e-5)
    two, n_two = response_loss_by_hand(model, tokenizer, prompts[1], records[1]["output"])
    result = score(str(TINY_MODEL), records, STYLE, max_new_tokens=1)
    assert math.isclose(result.val_loss, (one + two) / (n_one + n_two), rel_tol=1e-5)  # token-weighted mean
    assert math.isclose(result.perplexity, math.exp(result.val_loss), rel_tol=1e-9)


def test_the_token_budget_and_the_samples_kept(tiny):
    model, tokenizer = tiny
    # "the" makes the tiny model write on past 32 tokens, so the budget decides where the answer ends.
    long = greedy_by_hand(model, tokenizer, "the", 32)
    assert long != greedy_by_hand(model, tokenizer, "the", 33)
    result = score(str(TINY_MODEL), [{"instruction": "x", "output": long}], STYLE, prompts=["the"])  # default 32
    assert result.samples[0]["got"] == long.strip() and result.exact_match == 1.0  # one record: 1/1
    one = score(str(TINY_MODEL), RECORDS[:1], STYLE, max_new_tokens=1)
    assert one.samples[0]["got"] == greedy_by_hand(model, tokenizer, one_prompt(), 1).strip()
    six = score(str(TINY_MODEL), RECORDS + RECORDS[:2], STYLE, max_new_tokens=1)
    assert six.n == 6 and len(six.samples) == 5  # the report keeps five examples


def test_batched_generation_equals_one_prompt_at_a_time(tiny):
    """Left padding, batches split by batch_size, answers that end at EOS at different lengths."""
    model, tokenizer = tiny
    prompts = [one_prompt(), "the", inference.render_prompt(STYLE, {"instruction": "Write the word twice.",
                                                                    "input": "map"})]
    expected = [greedy_by_hand(model, tokenizer, p, 12) for p in prompts]
    assert len({len(tokenizer(e).input_ids) for e in expected}) > 1  # they end at different lengths
    for batch_size in (1, 2, 3):
        assert inference.generate(model, tokenizer, prompts, STYLE, 12, batch_size=batch_size) == expected
    assert inference.generate(model, tokenizer, prompts[:1], STYLE) == [greedy_by_hand(model, tokenizer, prompts[0],
                                                                                          32)]


def one_prompt() -> str:
    return inference.render_prompts(STYLE, RECORDS[:1], str(TINY_MODEL))[0]


@pytest.mark.parametrize("budget", [None, 5])
def test_evaluate_prompts_both_models_with_the_candidates_chat_template(chat_model, tiny, budget):
    """The base (no chat template of its own) is prompted with the candidate's template; a chat template carries
    its own special tokens, so no BOS is put in front."""
    model, tokenizer = tiny
    records = [{"instruction": "the", "output": "x"}]
    kw = {} if budget is None else {"max_new_tokens": budget}
    report = evaluate(str(TINY_MODEL), str(chat_model), records, GateConfig(metric="val_loss"), "chat_template", **kw)
    prompt = tokenizer.bos_token + "the"  # what the template renders; nothing is put in front of it
    expected = greedy_by_hand(model, tokenizer, prompt, budget or 32, bos=False).strip()
    assert expected != greedy_by_hand(model, tokenizer, prompt, (budget or 32) + 1, bos=False).strip()
    loss, n = response_loss_by_hand(model, tokenizer, prompt, "x", bos=False)
    for s in (report.base, report.candidate):
        assert s.samples[0]["got"] == expected and math.isclose(s.val_loss, loss / n, rel_tol=1e-5)
    assert report.candidate.model_path == str(chat_model) and report.base.model_path == str(TINY_MODEL)
    alone = score(str(chat_model), records, "chat_template", **kw)  # score renders with the model's own template
    assert alone.samples[0]["got"] == expected


def test_the_loss_of_an_empty_answer_is_the_loss_of_its_eos(tiny):
    model, tokenizer = tiny
    prompt = one_prompt()
    eos_only, n = response_loss_by_hand(model, tokenizer, prompt, "")
    assert n == 1
    assert math.isclose(inference.response_loss(model, tokenizer, STYLE, [prompt], [""]), eos_only, rel_tol=1e-5)
    two, n_two = response_loss_by_hand(model, tokenizer, prompt, "LAMP")
    assert math.isclose(inference.response_loss(model, tokenizer, STYLE, [prompt, prompt], ["", "LAMP"]),
                        (eos_only + two) / (1 + n_two), rel_tol=1e-5)
    # A chat template with an empty prompt: every token but the first is predicted and counts.
    full = tokenizer("ab" + tokenizer.eos_token, add_special_tokens=False).input_ids
    with torch.inference_mode():
        logp = F.log_softmax(model(input_ids=torch.tensor([full])).logits[0].float(), dim=-1)
    by_hand = -sum(float(logp[t - 1, full[t]]) for t in range(1, len(full))) / (len(full) - 1)
    assert math.isclose(inference.response_loss(model, tokenizer, "chat_template", [""], ["ab"]), by_hand,
                        rel_tol=1e-5)


def test_perplexity_is_exp_of_the_loss_capped():
    assert perplexity(2.0) == math.exp(2.0) and perplexity(50.0) == math.exp(50.0)
    assert perplexity(50.5) == perplexity(1000.0) == math.exp(50.0)


def scores(em: float, loss: float) -> ModelScores:
    return ModelScores(model_path="m", n=4, exact_match=em, val_loss=loss, perplexity=math.exp(loss))


@pytest.mark.parametrize("metric,base,at,above,below", [
    ("exact_match", scores(0.25, 3.0), scores(0.5, 3.0), scores(0.75, 3.0), scores(0.25, 3.0)),
    ("val_loss", scores(0.0, 3.0), scores(0.0, 2.75), scores(0.0, 2.5), scores(0.0, 3.0)),
    ("perplexity", ModelScores(model_path="m", n=4, exact_match=0, val_loss=1, perplexity=3.0),
     ModelScores(model_path="m", n=4, exact_match=0, val_loss=1, perplexity=2.75),
     ModelScores(model_path="m", n=4, exact_match=0, val_loss=1, perplexity=2.5),
     ModelScores(model_path="m", n=4, exact_match=0, val_loss=1, perplexity=3.5)),
])
def test_gate_boundary_improvement_equal_to_the_threshold_does_not_pass(metric, base, at, above, below):
    gate = GateConfig(metric=metric, min_improvement=0.25)  # exactly representable: no rounding at the boundary
    passed, reason = apply_gate(base, at, gate)
    assert not passed and "does not beat base" in reason and "by more than 0.25" in reason
    assert apply_gate(base, above, gate) == (True, f"{metric}: candidate {getattr(above, metric):.4f} vs base "
                                                   f"{getattr(base, metric):.4f}")
    assert not apply_gate(base, below, gate)[0]


def test_gate_minimum_value_boundary():
    base = scores(0.0, 3.0)
    assert apply_gate(base, scores(0.5, 3.0), GateConfig(min_value=0.5))[0]  # reaching the minimum is enough
    passed, reason = apply_gate(base, scores(0.25, 3.0), GateConfig(min_value=0.5))
    assert not passed and reason == "exact_match: candidate 0.2500 is below the minimum 0.5"
    # The minimum applies to higher-is-better metrics only: a loss is not held to it.
    assert apply_gate(base, scores(0.0, 1.0), GateConfig(metric="val_loss", min_value=5.0))[0]


def test_evaluate_scores_both_models_on_the_same_prompts(tmp_path):
    records = [{**r, "output": r["input"].upper()} for r in RECORDS[:2]]
    report = evaluate(str(TINY_MODEL), str(TINY_MODEL), records, GateConfig(metric="val_loss"), STYLE, 4)
    assert report.base.model_dump(exclude={"model_path"}) == report.candidate.model_dump(exclude={"model_path"})
    assert not report.passed  # the same model does not beat itself


def make_adapter(path, trained: bool):
    """A LoRA adapter on the tiny model's attention, saved as PEFT saves it: random non-zero B matrices
    (``trained``), or PEFT's initial zero B (an adapter that changes nothing)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(TINY_MODEL), dtype=torch.float32)
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=not trained, task_type="CAUSAL_LM"))
    peft.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return make_adapter(tmp_path_factory.mktemp("adapter"), trained=True)


def test_merged_model_gives_the_adapter_wrapped_base_logits(adapter, tmp_path, tiny):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, tokenizer = tiny
    ids = torch.tensor([tokenizer(inference.render_prompts(STYLE, RECORDS[:1], str(TINY_MODEL))[0]).input_ids])
    with torch.inference_mode():
        base = AutoModelForCausalLM.from_pretrained(str(TINY_MODEL), dtype=torch.float32).eval()
        base_logits = base(input_ids=ids).logits
        wrapped = PeftModel.from_pretrained(base, str(adapter)).eval()
        expected = wrapped(input_ids=ids).logits
        out = merge_lora(str(TINY_MODEL), str(adapter), str(tmp_path / "merged"))
        merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        got = merged(input_ids=ids).logits
    assert (expected - base_logits).abs().max() > 1e-2  # the adapter matters, so the comparison can fail
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert check_weights_moved(str(TINY_MODEL), str(out)) == weight_delta(str(TINY_MODEL), str(out)) > 0
    assert not (tmp_path / "merged.partial").exists()


def test_the_merge_command_merges_and_copies_the_tokenizer(adapter, tmp_path, capsys):
    out = tmp_path / "merged"
    merge_main(["merge", "--base_model", str(TINY_MODEL), "--lora_path", str(adapter), "--merge_path", str(out)])
    delta = weight_delta(str(TINY_MODEL), str(out))
    assert f"merged {adapter} into {out}; max weight delta {delta:.3g}" in capsys.readouterr().out and delta > 0
    merge_main(["copy", "--src", str(TINY_MODEL), "--dst", str(out)])  # the default pattern: tokeniz*
    assert f"copied ['tokenizer.json', 'tokenizer_config.json'] to {out}" in capsys.readouterr().out
    nested = tmp_path / "a" / "b" / "cfg"  # folders that do not exist yet are made
    merge_main(["copy", "--src", str(TINY_MODEL), "--dst", str(nested), "--pattern", "*config.json"])
    assert sorted(p.name for p in nested.iterdir()) == ["config.json", "generation_config.json",
                                                        "tokenizer_config.json"]
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.json"}


def test_merging_again_replaces_the_output_and_a_stale_partial_merge(adapter, tmp_path):
    out, stale = tmp_path / "merged", tmp_path / "merged.partial"
    out.mkdir()
    (out / "old-file").write_text("from an earlier merge")
    stale.mkdir()
    (stale / "junk").write_text("left by a merge that died")
    merge_lora(str(TINY_MODEL), str(adapter), str(out))
    assert not stale.exists() and {p.name for p in out.iterdir()} == {"config.json", "generation_config.json",
                                                                     "model.safetensors"}


def test_a_bf16_base_is_merged_in_float32(adapter, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base16 = tmp_path / "base-bf16"
    AutoModelForCausalLM.from_pretrained(str(TINY_MODEL), dtype=torch.bfloat16).save_pretrained(base16)
    assert {t.dtype for t in load_file(base16 / "model.safetensors").values()} == {torch.bfloat16}
    out = merge_lora(str(base16), str(adapter), str(tmp_path / "merged"))
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float32}


def test_weight_delta_compares_the_tensors_both_checkpoints_have(tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(TINY_MODEL / "model.safetensors")
    (tmp_path / "extra").mkdir()
    save_file({**tensors, "extra.weight": torch.ones(2)}, tmp_path / "extra" / "model.safetensors")
    assert weight_delta(str(TINY_MODEL), str(tmp_path / "extra")) == 0.0  # the extra tensor is not compared
    (tmp_path / "other").mkdir()
    save_file({"other.weight": torch.ones(2)}, tmp_path / "other" / "model.safetensors")
    with pytest.raises(ValueError, match=f"{tmp_path / 'other'} shares no tensor names with {TINY_MODEL}"):
        weight_delta(str(TINY_MODEL), str(tmp_path / "other"))


def test_the_merge_command_line_refuses_missing_arguments(capsys, tmp_path):
    for argv in ([], ["merge"], ["merge", "--base_model", "b", "--lora_path", "l"],
                 ["merge", "--lora_path", "l", "--merge_path", "m"],
                 ["merge", "--base_model", "b", "--merge_path", "m"],
                 ["copy", "--src", "s"], ["copy", "--dst", "d"]):
        with pytest.raises(SystemExit) as e:
            merge_main(argv)
        assert e.value.code == 2, argv
    with pytest.raises(SystemExit):
        merge_main(["--help"])
    assert "Merge a LoRA adapter into its base, copy tokenizer files, and check the weights moved." in \
        " ".join(capsys.readouterr().out.split())


def test_a_merge_that_leaves_the_weights_unchanged_fails(tmp_path):
    untrained = make_adapter(tmp_path / "untrained", trained=False)
    out = merge_lora(str(TINY_MODEL), str(untrained), str(tmp_path / "merged"))
    with pytest.raises(UnchangedWeightsError, match=f"identical to the base {TINY_MODEL}: training had no effect"):
        check_weights_moved(str(TINY_MODEL), str(out))
    with pytest.raises(FileNotFoundError, match="no .safetensors weights"):
        weight_delta(str(TINY_MODEL), str(tmp_path / "untrained" / "missing"))


def test_training_argv_reads_back_as_the_components_parameters(tmp_path):
    """Every parameter the recipe takes, set away from its default, reaches train_lora.py's own parser."""
    chosen = dict(batch_size=12, micro_batch_size=3, num_epochs=1.5, learning_rate=1.25e-3, cutoff_len=77,
                  val_set_size=9, lora_r=6, lora_alpha=14, lora_dropout=0.125, lora_target_modules="[q_proj,k_proj]",
                  modules_to_save="[lm_head]", prompt_template_name="llama", train_on_inputs=False, max_steps=13,
                  logging_steps=3, save_steps=7, seed=5, resume=False, deepspeed="infra/deepspeed/zero2.json")
    assert set(SCRIPT_ARGS) | {"deepspeed"} == set(chosen)
    trainer = AlpacaloraFinetune(str(TINY_MODEL), str(tmp_path / "out"), **chosen)
    parser_defaults = vars(parse_args(["--base_model", "b", "--data_path", "d", "--output_dir", "o"]))
    assert all(parser_defaults[k] != v for k, v in chosen.items()), "every value must differ from the default"
    argv = trainer.train_command(str(tmp_path / "train.jsonl"), str(tmp_path / "val.jsonl")).argvs[0]
    args = vars(parse_args(argv[argv.index("tasks.finetune.train_lora") + 1:]))
    assert {k: args[k] for k in chosen} == chosen
    assert (args["base_model"], args["data_path"], args["val_path"], args["output_dir"]) == \
        (str(TINY_MODEL), str(tmp_path / "train.jsonl"), str(tmp_path / "val.jsonl"), trainer.target_path)
