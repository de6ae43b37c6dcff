"""A compact tool-calling chat format for crs's tiny environment policies.

TRL's ``environment_factory`` loop needs three things from the tokenizer: a chat template that renders
``user → assistant(tool_calls) → tool`` conversations (``trl.chat_template_utils.supports_tool_calling``),
is prefix-preserving (``is_chat_template_prefix_preserving``), and a ``response_template`` so
``parse_response`` can read tool calls out of generated ids. Hub chat templates (Qwen, Llama) render
the tool JSON schemas into a system prompt hundreds of tokens long — far too long for a 0.3M-parameter
policy — so crs ships its own terse format::

    <|user|>maze
    #..G
    .A#.<|assistant|><call>move direction=up</call></s><|tool|>...<|assistant|>done</s>

Role markers and ``<call>``/``</call>`` are atomic added tokens; arguments are ``key=value`` pairs,
typed by TRL/transformers from the tool's signature (``a=3`` → ``3`` for an ``int`` parameter). Tool
schemas are *not* rendered in the prompt: the policy learns the tools from its SFT traces.
"""

from __future__ import annotations

from typing import Any

ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]
CALL_TOKENS = ["<call>", "</call>"]

CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'system' -%}<|system|>{{ m.content }}"
    "{%- elif m.role == 'user' -%}<|user|>{{ m.content }}"
    "{%- elif m.role == 'assistant' -%}<|assistant|>{{ m.content }}"
    "{%- for tc in (m.tool_calls or []) -%}<call>{{ tc.function.name }}"
    "{%- for k, v in tc.function.arguments.items() %} {{ k }}={{ v }}{%- endfor -%}</call>{%- endfor -%}"
    "</s>"
    "{%- elif m.role == 'tool' -%}<|tool|>{{ m.content }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)

RESPONSE_TEMPLATE: dict[str, Any] = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|assistant|>",
    "fields": {
        "tool_calls": {
            "open_pattern": r"<call>(?P<name>[A-Za-z_]+)",
            "close_pattern": r"</call>\s*",
            "repeats": True,
            "content": "xml-inline",
            "content_args": {
                "tag_pattern": r"\s*(?P<key>[A-Za-z_]+)=(?P<value>[^\s<]*)",
                "value_parser": {"name": "text"},
            },
            "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{content}"}},
        },
        "content": {"close_pattern": r"</s>\s*", "content": "text"},
    },
}


def format_call(name: str, args: dict[str, Any]) -> str:
    """The text of one tool call in this format: ``<call>add a=3 b=4</call>``."""
    return "<call>" + name + "".join(f" {k}={v}" for k, v in args.items()) + "</call>"


def render(messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    """Render messages with :data:`CHAT_TEMPLATE` without a tokenizer (corpus building, tests)."""
    out = []
    for m in messages:
        role = m["role"]
        if role == "assistant":
            calls = "".join(
                format_call(tc["function"]["name"], tc["function"]["arguments"])
                for tc in m.get("tool_calls") or []
            )
            out.append(f"<|assistant|>{m.get('content', '')}{calls}</s>")
        else:
            out.append(f"<|{role}|>{m['content']}")
    if add_generation_prompt:
        out.append("<|assistant|>")
    return "".join(out)


def install_chat_format(tokenizer):
    """Add the role/call tokens, the chat template and the response template to ``tokenizer`` (in place)."""
    from tokenizers import AddedToken

    tokenizer.add_special_tokens({"additional_special_tokens": ROLE_TOKENS})
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in CALL_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.response_template = RESPONSE_TEMPLATE
    return tokenizer


def ensure_response_template(tokenizer):
    """Re-attach the response template after ``from_pretrained`` when the chat template is crs's own."""
    if (
        getattr(tokenizer, "chat_template", None) == CHAT_TEMPLATE
        and getattr(tokenizer, "response_template", None) is None
    ):
        tokenizer.response_template = RESPONSE_TEMPLATE
    return tokenizer


def build_chat_tokenizer(texts: list[str], vocab_size: int = 256):
    """A byte-level BPE tokenizer trained on ``texts`` (single-digit tokens) with the chat format installed.

    The role and call markers are stripped from the corpus before BPE training (they are atomic tokens).
    """
    from crs.embedded import build_tokenizer

    clean = []
    for t in texts:
        for marker in ROLE_TOKENS + CALL_TOKENS + ["</s>"]:
            t = t.replace(marker, "\n")
        clean.append(t)
    tok = build_tokenizer(clean, vocab_size)
    return install_chat_format(tok)
