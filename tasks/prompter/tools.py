"""How tools are written into a text prompt, as the reference package writes them.

Tools go in as JSON5 (``dumps_json5``) under ``TOOLS_HEADER``, and the instruction gains the
function-call prompt ``FC_PROMPT`` (at ``FC_PROMPT_PLACEHOLDER`` where the instruction has it,
else after it), whose ``{tool_*_token}`` slots are the model's tool tokens.
"""

from __future__ import annotations

import json
from typing import Any

TOOLS_HEADER = "### Function-call Tools. \n\n"
TOOL_TOKENS = ("tool_start_token", "tool_end_token", "tool_args_token")
FC_PROMPT = ("{tool_start_token}tool name (one of {tool_names})\n"
             "{tool_args_token}the input to the tool, in a JSON format representing the kwargs. Can only return json.\n"
             "{tool_end_token}end of tool.\n"
             "(e.g. {tool_start_token}tool_name\n{tool_args_token}{{'input': 'hello world', 'num_beams': 5}}\n"
             "{tool_end_token}).\n")
FC_PROMPT_PLACEHOLDER = "<!lazyllm-fc-prompt!>"
# Reserved words that JSON5 writes quoted even where they are identifiers.
_JSON5_RESERVED = frozenset("""break case catch class const continue debugger default delete do else enum export extends
false finally for function if implements import in instanceof interface let new null package private protected public
return static super switch this throw true try typeof var void while with yield""".split())


def dumps_json5(obj: Any) -> str:
    """``obj`` as JSON5: keys that are identifiers (and not reserved words) unquoted, everything else as JSON."""
    if isinstance(obj, dict):
        def key(k: Any) -> str:
            k = str(k)
            return k if k.replace("$", "_").isidentifier() and k not in _JSON5_RESERVED else json.dumps(
                k, ensure_ascii=False)
        return "{" + ", ".join(f"{key(k)}: {dumps_json5(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(dumps_json5(v) for v in obj) + "]"
    return json.dumps(obj, ensure_ascii=False)


def tool_result(content: Any) -> Any:
    """A tool's output as history shows it: parsed when it is JSON, else the text as it is."""
    try:
        return json.loads(content.strip())
    except Exception:  # noqa: BLE001 (not JSON)
        return content
