"""Model answers computed by hand, independent of ``tasks.inference``: what the tests hold the code to."""

from __future__ import annotations

import filecmp
from pathlib import Path


def greedy_by_hand(model, tokenizer, prompt: str, n: int, bos: bool = True) -> str:
    """Greedy decoding written out: BOS (unless not ``bos``) + prompt, then the argmax of the last position, ``n``
    times or until EOS; one prompt at a time, no padding."""
    return greedy_with_gap(model, tokenizer, prompt, n, bos)[0]


def greedy_with_gap(model, tokenizer, prompt: str, n: int, bos: bool = True) -> tuple[str, float]:
    """``greedy_by_hand``'s answer, and the smallest gap between the two largest logits over it: a near tie is an
    answer another summation order (another batch beside it) could change."""
    import torch

    ids = tokenizer((tokenizer.bos_token if bos else "") + prompt, add_special_tokens=False).input_ids
    out: list[int] = []
    gaps: list[float] = []
    with torch.inference_mode():
        for _ in range(n):
            top = model(input_ids=torch.tensor([ids + out])).logits[0, -1].topk(2)
            gaps.append(float(top.values[0] - top.values[1]))
            nxt = int(top.indices[0])
            if nxt == tokenizer.eos_token_id:
                break
            out.append(nxt)
    return tokenizer.decode(out, skip_special_tokens=True), min(gaps, default=float("inf"))


def same_tree(a: Path, b: Path) -> bool:
    """Whether two folders hold the same files with the same bytes."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and \
        all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)
