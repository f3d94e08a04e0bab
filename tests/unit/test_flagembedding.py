"""FlagembeddingFinetune's commands and refusals, the retrieval metrics, and the finished-model layout.

The real training runs in ``tests/component/test_flagembedding.py`` and ``tests/e2e/test_embedding_pipeline.py``
(through the worker); here, what can be checked without training: the argv for this machine and for several
processes, metric lines, and the bad inputs the issue lists."""

from __future__ import annotations

import json
import math

import pytest

from infra.embed_models import EMBED, RERANK
from tasks import launchers
from tasks.data import DatasetError, load_dataset
from tasks.evaluate import GateConfig, apply_gate
from tasks.evaluate.retrieval import (RetrievalScores, embedder_set, mean_metrics, mrr_at, ndcg_at, recall_at,
                                      reranker_set)
from tasks.finetune import FlagembeddingFinetune
from tasks.finetune.st_layout import drop_checkpoints, write_layout
from tasks.models.local import EMBEDDED_MODELS


def argv_of(trainer) -> list[str]:
    return trainer.train_command("/data/train.jsonl").argvs[0]


def value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_an_embed_model_trains_with_the_embedder_on_this_cpu(tmp_path):
    t = FlagembeddingFinetune(EMBED, str(tmp_path), max_steps=3, sentence_pooling_method="mean")
    argv = argv_of(t)
    assert argv[1:3] == ["-m", "FlagEmbedding.finetune.embedder.encoder_only.base"] and argv[0].endswith("python")
    assert t.target_path == str(tmp_path / "embed")  # target_path/<type>, as the reference package does
    assert value(argv, "--model_name_or_path") == str(EMBEDDED_MODELS / EMBED)
    assert value(argv, "--use_cpu") == "True" and value(argv, "--sentence_pooling_method") == "mean"
    assert value(argv, "--train_group_size") == "8" and value(argv, "--learning_rate") == "1e-05"  # the contract's
    # No CUDA: no fp16. transformers 5: no --overwrite_output_dir. One process: no cross-device negatives.
    assert not {"--fp16", "--overwrite_output_dir", "--negatives_cross_device", "--deepspeed"} & set(argv)
    assert "--gradient_checkpointing" in argv and value(argv, "--max_steps") == "3"
    env = t.train_command("/data/train.jsonl").env
    assert env["WANDB_MODE"] == "disabled" and env["HF_HUB_OFFLINE"] == "1"


def test_a_rerank_model_trains_with_the_reranker_under_torchrun_when_asked(tmp_path):
    t = FlagembeddingFinetune(RERANK, str(tmp_path), launcher=launchers.remote(ngpus=2), deepspeed="ds.json")
    argv = argv_of(t)
    assert argv[0].endswith("torchrun") and value(argv, "--nproc_per_node") == "2"
    assert value(argv, "-m") == "FlagEmbedding.finetune.reranker.encoder_only.base"
    assert value(argv, "--query_max_len") == "256" and value(argv, "--learning_rate") == "6e-05"
    assert value(argv, "--deepspeed") == "ds.json" and "--temperature" not in argv
    assert t.target_path.endswith("/rerank") and t.formats() == ("triplets", "rerank")


def test_the_embedder_gets_cross_device_negatives_with_more_than_one_process(tmp_path):
    t = FlagembeddingFinetune(EMBED, str(tmp_path), launcher=launchers.remote(ngpus=2))
    assert "--negatives_cross_device" in argv_of(t)


def test_an_llm_base_and_foreign_keywords_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'tiny-llama' is a llm model"):
        FlagembeddingFinetune("tiny-llama", str(tmp_path))
    with pytest.raises(ValueError, match="temperature do not apply to a rerank model"):
        FlagembeddingFinetune(RERANK, str(tmp_path), temperature=0.1)
    with pytest.raises(TypeError, match="learning_rat"):
        FlagembeddingFinetune(EMBED, str(tmp_path), learning_rat=1e-4)


def test_trainer_log_lines_become_step_metrics(tmp_path):
    t = FlagembeddingFinetune(EMBED, str(tmp_path), logging_steps=4)
    assert t.parse_metrics("{'loss': '0.7565', 'grad_norm': '10.17', 'learning_rate': '3.5e-05', 'epoch': '0.17'}") \
        == {"step": 4, "loss": 0.7565, "grad_norm": 10.17, "learning_rate": 3.5e-05, "epoch": 0.17}
    assert t.parse_metrics("{'loss': 0.5, 'epoch': 0.3}")["step"] == 8
    assert t.parse_metrics("{'train_runtime': '48.5', 'train_loss': '0.13', 'epoch': '2'}") == \
        {"step": 8, "train_loss": 0.13, "train_runtime": 48.5, "epoch": 2.0}
    assert t.parse_metrics("INFO loading data") is None and t.parse_metrics("{'loss': nan") is None


@pytest.mark.parametrize("row,field,words", [
    ({"query": "q", "pos": [], "neg": ["n"]}, "pos", "non-empty"),
    ({"query": "q", "pos": [""], "neg": []}, "pos[0]", "empty"),
])
def test_a_triplet_without_a_positive_names_line_and_field(tmp_path, row, field, words):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"query": "a", "pos": ["b"]}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DatasetError, match=words) as e:
        load_dataset(str(path), "triplets")
    assert e.value.line == 2 and e.value.field == field and str(path) in str(e.value)


def test_a_rerank_label_out_of_range_names_line_and_field(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"query": "q", "passage": "p", "label": 1}) + "\n"
                    + json.dumps({"query": "q", "passage": "p2", "label": 1.5}) + "\n")
    with pytest.raises(DatasetError, match=r"1.5 is outside \[0, 1\]") as e:
        load_dataset(str(path), "rerank")
    assert e.value.line == 2 and e.value.field == "label"


def test_retrieval_metrics_by_hand():
    ranking, relevant = [3, 1, 2, 7], {1}
    assert recall_at(ranking, relevant, 1) == 0 and recall_at(ranking, relevant, 5) == 1
    assert mrr_at(ranking, relevant) == 0.5
    assert ndcg_at(ranking, relevant) == pytest.approx(1 / math.log2(3))
    assert ndcg_at([1, 3], {1, 3}) == pytest.approx(1.0) and ndcg_at([9] * 10 + [1], {1}) == 0.0
    means = mean_metrics([[1, 2], [2, 1]], [{1}, {1}])
    assert means["mrr_at_10"] == 0.75 and means["recall_at_1"] == 0.5
    with pytest.raises(ValueError, match="^every query needs at least one relevant passage$"):
        mean_metrics([[1]], [set()])


def test_retrieval_metrics_with_several_relevant_passages_and_none_found():
    """Worked by hand where one relevant passage per query would hide a wrong formula (a recall that multiplies,
    an MRR that is not 0 when nothing relevant ranks in the top k, a mean that is not over the queries)."""
    ranking, relevant = [5, 1, 9, 3, 7, 2], {1, 2, 3, 4}
    assert recall_at(ranking, relevant, 1) == 0 and recall_at(ranking, relevant, 4) == 0.5
    assert recall_at(ranking, relevant, 10) == 0.75
    assert mrr_at(ranking, relevant) == 0.5 and mrr_at([8] * 10 + [1], {1}) == 0.0
    assert ndcg_at(ranking, relevant) == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(5) + 1 / math.log2(7)) / sum(1 / math.log2(i + 2) for i in range(4)))
    means = mean_metrics([[1, 2, 3], [3, 2, 1], [9, 8, 7]], [{1}, {1}, {1}])
    assert set(means) == {"mrr_at_10", "ndcg_at_10", "recall_at_1", "recall_at_5", "recall_at_10"}
    assert means["mrr_at_10"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert means["ndcg_at_10"] == pytest.approx((1 + 1 / math.log2(4) + 0) / 3)
    assert means["recall_at_1"] == pytest.approx(1 / 3) and means["recall_at_5"] == pytest.approx(2 / 3)
    assert set(mean_metrics([[1]], [{1}], with_recall=False)) == {"mrr_at_10", "ndcg_at_10"}


def test_rerank_pairs_are_judged_by_query():
    judged = reranker_set([{"query": "a", "passage": "x", "label": 1.0}, {"query": "a", "passage": "y", "label": 0.0},
                           {"query": "b", "passage": "z", "label": 0.2}])  # b has nothing relevant: left out
    assert judged.queries == ["a"] and judged.candidates == [["x", "y"]] and judged.relevant == [{0}]


def test_a_label_of_exactly_one_half_is_relevant():
    judged = reranker_set([{"query": "a", "passage": "x", "label": 0.4}, {"query": "a", "passage": "y", "label": 0.5},
                           {"query": "b", "passage": "z", "label": 0.5}])
    assert judged.queries == ["a", "b"] and judged.relevant == [{1}, {0}]


def test_triplets_judge_their_positives_against_their_negatives_and_negatives_are_optional():
    judged = reranker_set([{"query": "a", "pos": ["p1"], "neg": ["n1", "n2"]}, {"query": "b", "pos": ["p2", "p3"]},
                           {"query": "a", "pos": ["p4"]}])  # a second record of a query adds to its candidates
    assert judged.queries == ["a", "b"]
    assert judged.candidates == [["n1", "n2", "p1", "p4"], ["p2", "p3"]]
    assert judged.relevant == [{2, 3}, {0, 1}]


def test_the_embedder_corpus_is_every_passage_once_and_queries_find_their_positives_in_it():
    val = [{"query": "q1", "pos": ["a"], "neg": ["b", "c"]}, {"query": "q2", "pos": ["c", "d"]}]
    judged = embedder_set(val, [{"query": "q0", "pos": ["e"]}, *val])  # records without negatives too
    assert judged.corpus == ["e", "a", "b", "c", "d"] and judged.queries == ["q1", "q2"]
    assert judged.relevant == [{1}, {3, 4}] and judged.candidates == []


def test_the_gate_defaults_to_ndcg_for_retrieval_and_names_unknown_metrics():
    base = RetrievalScores(model_path="b", n=2, mrr_at_10=0.5, ndcg_at_10=0.6)
    better = RetrievalScores(model_path="c", n=2, mrr_at_10=0.9, ndcg_at_10=0.95)
    passed, reason = apply_gate(base, better, GateConfig())
    assert passed and reason.startswith("ndcg_at_10")
    assert not apply_gate(better, base, GateConfig(metric="mrr_at_10"))[0]
    with pytest.raises(ValueError, match="'exact_match' is not measured"):
        apply_gate(base, better, GateConfig(metric="exact_match"))


def test_a_finished_embedder_pools_as_it_was_trained(tmp_path):
    from sentence_transformers import SentenceTransformer

    model = tmp_path / "embed"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (model / name).symlink_to(EMBEDDED_MODELS / EMBED / name)
    (model / "checkpoint-96").mkdir()
    assert drop_checkpoints(model) == ["checkpoint-96"] and not (model / "checkpoint-96").exists()
    write_layout(model, "cls", normalize=True, max_seq_length=64)
    st = SentenceTransformer(str(model), device="cpu")
    assert st[1].get_config_dict()["pooling_mode"] == "cls" and st.max_seq_length == 64 and len(st) == 3
    with pytest.raises(ValueError, match="pooling must be one of"):
        write_layout(model, "max", normalize=False, max_seq_length=64)


