"""Merge a LoRA adapter into its base, copy tokenizer files, and check the weights moved.

    python -m tasks.finetune.merge merge --base_model BASE --lora_path LORA --merge_path OUT
    python -m tasks.finetune.merge copy --src BASE --dst OUT --pattern 'tokeniz*'
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

# torch is imported where it is used: the flow imports this module for the weight check, and the `copy`
# command needs none of it (both start faster without it).


def merge_lora(base_model: str, lora_path: str, merge_path: str) -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # Merged in float32 whatever the base was saved in: a small LoRA delta added in bf16 is partly rounded away.
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, lora_path).merge_and_unload()
    out = Path(merge_path)
    tmp = out.with_name(out.name + ".partial")  # never leave a half-written merge where a model is expected
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)  # transformers 5 writes safetensors only
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


# A tokenizer's chat template is saved beside it (transformers 5: chat_template.jinja), not in tokenizer*.
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def copy_files(src: str, dst: str, pattern: str) -> list[str]:
    """Copy files matching ``pattern`` (a glob, e.g. the contract's ``tokeniz*``) from ``src`` into ``dst``; a
    tokenizer goes with its chat template."""
    Path(dst).mkdir(parents=True, exist_ok=True)
    paths = sorted(p for p in Path(src).glob(pattern) if p.is_file())
    if any(p.name.startswith("tokenizer") for p in paths):
        paths += [Path(src) / name for name in CHAT_TEMPLATE_FILES if (Path(src) / name).is_file()]
    copied = []
    for path in dict.fromkeys(paths):
        shutil.copy2(path, Path(dst) / path.name)
        copied.append(path.name)
    return copied


def weight_delta(base_model: str, merged_model: str) -> float:
    """Largest absolute difference over all tensors the two checkpoints share."""
    import torch
    from safetensors.torch import load_file

    def tensors(path: str) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for f in sorted(Path(path).glob("*.safetensors")):
            out.update(load_file(f))
        if not out:
            raise FileNotFoundError(f"no .safetensors weights in {path}")
        return out

    base, merged = tensors(base_model), tensors(merged_model)
    shared = set(base) & set(merged)
    if not shared:
        raise ValueError(f"{merged_model} shares no tensor names with {base_model}")
    return max((base[k].float() - merged[k].float()).abs().max().item() for k in shared)


class UnchangedWeightsError(RuntimeError):
    """The merged model is the base model again: training (or the merge) had no effect."""


def check_weights_moved(base_model: str, merged_model: str) -> float:
    """The largest weight change from ``base_model`` to ``merged_model``; an error if nothing changed."""
    delta = weight_delta(base_model, merged_model)
    if delta == 0.0:
        raise UnchangedWeightsError(f"merged weights in {merged_model} are identical to the base {base_model}: "
                                    "training had no effect")
    return delta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("merge")
    m.add_argument("--base_model", required=True)
    m.add_argument("--lora_path", required=True)
    m.add_argument("--merge_path", required=True)
    c = sub.add_parser("copy")
    c.add_argument("--src", required=True)
    c.add_argument("--dst", required=True)
    c.add_argument("--pattern", default="tokeniz*")
    args = parser.parse_args(argv)
    if args.command == "merge":
        out = merge_lora(args.base_model, args.lora_path, args.merge_path)
        print(f"merged {args.lora_path} into {out}; max weight delta {weight_delta(args.base_model, str(out)):.3g}")
    else:
        print(f"copied {copy_files(args.src, args.dst, args.pattern)} to {args.dst}")


if __name__ == "__main__":
    main()
