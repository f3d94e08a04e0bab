from tasks.data import prepare, read_jsonl
from tasks.evaluate import GateConfig, ModelScores, apply_gate, score
from tests.support.paths import DATASET, TINY_MODEL


def scores(em: float, loss: float) -> ModelScores:
    return ModelScores(model_path="m", n=10, exact_match=em, val_loss=loss, perplexity=2.718 ** loss)


def test_gate_compares_candidate_with_base():
    base = scores(0.10, 3.0)
    assert apply_gate(base, scores(0.40, 2.0), GateConfig(min_improvement=0.05))[0]
    passed, reason = apply_gate(base, scores(0.12, 2.0), GateConfig(min_improvement=0.05))
    assert not passed and "does not beat base" in reason
    assert not apply_gate(base, scores(0.40, 2.0), GateConfig(min_value=0.5))[0]
    assert apply_gate(base, scores(0.0, 2.0), GateConfig(metric="val_loss"))[0]  # lower is better
    assert not apply_gate(base, scores(0.9, 3.5), GateConfig(metric="val_loss"))[0]


def test_score_reports_exact_match_and_loss(tmp_path):
    prepared = prepare(DATASET, tmp_path, val_set_size=10)
    result = score(str(TINY_MODEL), read_jsonl(prepared.val_path), "alpaca", max_new_tokens=8)
    assert result.n == 10 and 0.0 <= result.exact_match <= 1.0
    assert result.val_loss > 0 and abs(result.perplexity - 2.718281828 ** result.val_loss) < 1e-3 * result.perplexity
    assert {"instruction", "input", "expected", "got", "answer"} == set(result.samples[0])
