"""LoRA adapters made directly for serving tests, and the answers a by-hand PEFT model gives with them."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.servers.adapters import BASE_RECORD
from tests.support.models import greedy_with_gap


def random_adapter(folder: Path, seed: int, base: dict[str, str], base_path: str) -> Path:
    """A LoRA adapter of the model at ``base_path`` with random (not zero) weights, so it changes the answers (what
    serves it is tested, not training), and ``base`` as its base record (``fineflow_base.json``)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(folder))
    (folder / BASE_RECORD).write_text(json.dumps(base))
    return folder


def greedy(base_path: str, adapter_dir: Path, prompts: list[str], tokens: int = 8) -> list[tuple[str, float]]:
    """Each completion prompt's greedy answer by the base with the adapter (PEFT, unmerged), as the built-in server
    decodes it (BOS in front), with its smallest top-two logit gap."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tasks.inference.prompts import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    tokenizer = load_tokenizer(base_path)
    return [greedy_with_gap(model, tokenizer, prompt, tokens) for prompt in prompts]
