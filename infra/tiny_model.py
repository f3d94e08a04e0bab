"""Build the embedded base model: a tiny LLaMA with a locally trained tokenizer.

No model hub is reachable from the machines fineflow is tested on, so the
project builds its own base deterministically (fixed seeds, one thread):

    python -m infra.tiny_model --out infra/models/tiny-llama

hidden 128 with 2 heads gives head_dim 64, the smallest vLLM's CPU build serves.
The model is pretrained briefly on raw skill lines and on alpaca examples of other
instructions (see ``infra.synthetic``), so it is not random but has never seen the
instructions the bundled dataset asks for.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from infra.synthetic import pretraining_lines

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>"]
# Generic prose so the tokenizer covers the words of common prompt templates too.
GENERIC_TEXT = [
    "Below is an instruction that describes a task, paired with an input that provides further context.",
    "Write a response that appropriately completes the request.",
    "### Instruction:\n### Input:\n### Response:\n",
    "You are an AI-Agent developed by LazyLLM. Here are some extra messages you can referred to.",
    "Convert the word to upper case. Write the word twice. Repeat the words.",
]


def train_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()  # keeps spaces on decode
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        model_max_length=256,
    )


def documents(n: int, seed: int, formats: int) -> list[str]:
    """One skill line per document behind 0-2 prose sentences, so the skill works deep into a context."""
    rng = random.Random(seed)
    docs = []
    for line in pretraining_lines(n, seed=seed, formats=formats):
        prose = rng.sample(GENERIC_TEXT, k=rng.randint(0, 2))
        docs.append("\n\n".join([*prose, line]))
    return docs


def build(out: Path, steps: int = 2000, batch_size: int = 32, seed: int = 0, layers: int = 2,
          formats: int = 2) -> Path:
    torch.manual_seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)  # bit-for-bit reproducible
    lines = documents(steps * batch_size, seed=seed, formats=formats)
    tokenizer = train_tokenizer(pretraining_lines(20000, seed=seed, formats=formats) + GENERIC_TEXT * 200,
                                vocab_size=1536)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=256, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=3e-3, total_steps=steps, pct_start=0.05)
    model.train()
    start = time.time()
    for step in range(steps):
        batch = [f"<s>{line}</s>" for line in lines[step * batch_size:(step + 1) * batch_size]]
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False, truncation=True)
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        optim.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f}s)", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "fineflow_build.json").write_text(json.dumps(
        {"builder": "infra.tiny_model", "steps": steps, "batch_size": batch_size, "seed": seed,
         "layers": layers, "formats": formats}, indent=1))
    print(f"saved tiny base model to {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("infra/models/tiny-llama"))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--formats", type=int, default=2)
    args = parser.parse_args()
    build(args.out, steps=args.steps, layers=args.layers, formats=args.formats)


if __name__ == "__main__":
    main()
