#!/usr/bin/env python3
"""Golden fixtures of chat templates: transformers' `apply_chat_template` on several real-world template styles.

What it writes under weights/chat (default `--out weights/chat`):

* three hand-written template directories, each as a checkpoint would carry it (no weights):
  - `strict-roles/tokenizer_config.json`: a Mistral / Llama 2 style template that calls `raise_exception` on a
    conversation whose roles do not alternate user/assistant, with `bos_token`/`eos_token` in the AddedToken
    dict form (`{"__type": "AddedToken", "content": ...}`);
  - `tools-date/chat_template.jinja` (+ a tokenizer_config.json without a template): a Llama 3.1 style template
    written over several indented lines (so `trim_blocks` / `lstrip_blocks` matter), with `strftime_now`, a
    `namespace`, loop controls (`continue`, `break`), `tojson` (with and without `indent`, non-ASCII and HTML
    characters) and Python string methods (`strip`, `startswith`, `split`, `title`);
  - `named-templates/tokenizer_config.json`: the list-of-named-templates form (`[{"name": "default", ...},
    {"name": "tool_use", ...}]`), whose "default" is ChatML with a default system prompt as SmolLM2 writes it;
* `reference.json`: for each case (template directory relative to weights/, messages, add_generation_prompt) the
  text `apply_chat_template(tokenize=False)` renders, or the message of the exception it raises; for the fixture
  weights/llama-tiny also the ids `apply_chat_template(tokenize=True)` gives (the template writes the BOS token
  and transformers encodes without special tokens: one BOS); and `answers`: transformers' text-generation
  pipeline on weights/llama-tiny given chats (greedy, `max_new_tokens` 10), whose assistant message is the answer
  Trident's `generate --chat` and `chat` must print.

`strftime_now` renders today's date: the script renders it, then writes the placeholder `{DATE}` where
`strftime_now(DATE_FORMAT)` of this very moment stands, so that the file does not depend on the day it is made;
a test replaces its own date the same way before comparing.

The tokenizer every template is loaded with is weights/llama-tiny's tokenizer.json (copied into a temp directory
beside the case's files): make_fixtures.py must run first. Deterministic; a rerun writes byte-identical files
(unless it runs across midnight). Run through scripts/fixtures.sh, or directly:

    .venv-fixtures/bin/python scripts/fixtures_chat.py [--out weights/chat]
"""

import argparse
import datetime
import json
import os
import re
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jinja2  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer, pipeline  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMA = os.path.join(ROOT, "weights", "llama-tiny")
DATE_FORMAT = "%d %b %Y"
DATE_PLACEHOLDER = "{DATE}"
MAX_NEW = 10

STRICT_ROLES = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

TOOLS_DATE = """{{ bos_token }}
{% set ns = namespace(system='', count=0) %}
{% if messages[0]['role'] == 'system' %}
    {% set ns.system = messages[0]['content'].strip() %}
{% endif %}
<|start_header_id|>system<|end_header_id|>

Cutting Knowledge Date: December 2023
Today Date: {{ strftime_now("%d %b %Y") }}
{% if ns.system %}
{{ ns.system }}
{% endif %}
<|eot_id|>
{% for message in messages %}
    {% if message['role'] == 'system' %}
        {% continue %}
    {% endif %}
    {% if ns.count >= 4 %}
        {% break %}
    {% endif %}
    {% set ns.count = ns.count + 1 %}
<|start_header_id|>{{ message['role'] }}<|end_header_id|>

    {% if message['role'] == 'tool' %}
{{ message | tojson(indent=2) }}
    {% elif message['content'].startswith('/') %}
{{ message['content'].split(' ', 1) | tojson }}
    {% else %}
{{ message['role'].title() }} says: {{ message['content'] | trim }}
    {% endif %}
<|eot_id|>
{% endfor %}
{% if add_generation_prompt %}
<|start_header_id|>assistant<|end_header_id|>

{% endif %}
"""

# ChatML with a default system prompt, as HuggingFaceTB/SmolLM2-*-Instruct write it.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TOOL_USE = "{{ raise_exception('the tool_use template is not the default') }}"


def added_token(content):
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
            "rstrip": False, "single_word": False, "special": True}


def tokenizer_config(chat_template=None, bos="<|begin_of_text|>", eos="<|end_of_text|>"):
    config = {"bos_token": bos, "clean_up_tokenization_spaces": False, "eos_token": eos,
              "model_max_length": 128, "tokenizer_class": "PreTrainedTokenizerFast"}
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config


# name -> {file name: contents (a dict is written as JSON)}
TEMPLATES = {
    "strict-roles": {
        "tokenizer_config.json": tokenizer_config(STRICT_ROLES, added_token("<|begin_of_text|>"),
                                                  added_token("<|end_of_text|>")),
    },
    "tools-date": {
        "tokenizer_config.json": tokenizer_config(),
        "chat_template.jinja": TOOLS_DATE,
    },
    "named-templates": {
        "tokenizer_config.json": tokenizer_config([{"name": "default", "template": CHATML},
                                                   {"name": "tool_use", "template": TOOL_USE}]),
    },
}


def m(role, content):
    return {"role": role, "content": content}


SYSTEM_CHAT = [m("system", "You are a helpful assistant."),
               m("user", " Where did Angela Merkel meet Emmanuel Macron? ")]
LONG_CHAT = [m("system", "  Answer briefly.  "), m("user", "Hello!"), m("assistant", "Hi. How can I help?"),
             m("user", "Tell me a joke about cats.")]

CASES = [
    ("llama-tiny", SYSTEM_CHAT, True),
    ("llama-tiny", LONG_CHAT, True),
    ("llama-tiny", LONG_CHAT, False),
    ("llama-tiny", [m("user", "Hi")], True),
    ("chat/strict-roles", [m("user", "Hello"), m("assistant", "Hi there"), m("user", "Bonjour, ça va ?")], True),
    ("chat/strict-roles", [m("user", "Hello"), m("user", "Anyone?")], True),
    ("chat/strict-roles", [m("user", "Hello"), m("system", "Be terse.")], False),
    ("chat/tools-date", [m("system", "  You are Trident.  "), m("user", "What is <b>bold</b>? "),
                         m("tool", "café ☕ \"quoted\" <tag> & \\ back"), m("user", "/weather in Paris today"),
                         m("assistant", "Sunny."), m("user", "Thanks"), m("user", "not shown: after the break")],
     True),
    ("chat/tools-date", [m("user", "Hello")], False),
    ("chat/named-templates", [m("user", "What is the capital of France?")], True),
    ("chat/named-templates", [m("system", "You are a pirate."), m("user", "Hello"), m("assistant", "Arr!"),
                              m("user", "Bye")], False),
]

ANSWER_CHATS = [SYSTEM_CHAT, [m("user", "Hi")], LONG_CHAT]


def write_json(path, obj):
    # Insertion order kept (the messages' keys are role, content, as users write them), non-ASCII as is.
    text = json.dumps(obj, ensure_ascii=False, indent=1)
    # A list of numbers on one line.
    text = re.sub(r"\[\n[\d,\s]+\]", lambda l: "[" + ", ".join(l.group(0)[1:-1].split()).replace(",,", ",") + "]", text)
    json.loads(text)  # sanity
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text + "\n")


def write_templates(out_dir):
    for name, files in TEMPLATES.items():
        d = os.path.join(out_dir, name)
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
        for file, contents in files.items():
            if isinstance(contents, dict):
                write_json(os.path.join(d, file), contents)
            else:
                with open(os.path.join(d, file), "w", encoding="utf-8", newline="\n") as f:
                    f.write(contents)


def load_tokenizer(weights, template_dir, tmp):
    """The tokenizer of `template_dir` (relative to weights/): llama-tiny itself, or llama-tiny's tokenizer.json
    with the case's template files beside it."""
    if template_dir == "llama-tiny":
        return AutoTokenizer.from_pretrained(LLAMA)
    d = os.path.join(tmp, template_dir.replace("/", "_"))
    if not os.path.isdir(d):
        shutil.copytree(os.path.join(weights, template_dir), d)
        shutil.copy(os.path.join(LLAMA, "tokenizer.json"), d)
    return AutoTokenizer.from_pretrained(d)


def render_case(tok, template_dir, messages, add_generation_prompt):
    case = {"template": template_dir, "messages": messages, "add_generation_prompt": add_generation_prompt}
    try:
        date = datetime.datetime.now().strftime(DATE_FORMAT)
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except jinja2.exceptions.TemplateError as e:
        case["error"] = str(e)
        return case
    if "strftime_now" in tok.get_chat_template():
        assert date in text, (date, text)
        text = text.replace(date, DATE_PLACEHOLDER)
        case["date_format"] = DATE_FORMAT
    case["rendered"] = text
    if template_dir == "llama-tiny":
        ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        case["input_ids"] = list(ids)
    return case


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "weights", "chat"))
    args = parser.parse_args()
    out_dir = os.path.abspath(args.out)
    weights = os.path.dirname(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    write_templates(out_dir)
    torch.manual_seed(0)
    torch.set_num_threads(1)

    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for template_dir, messages, add_generation_prompt in CASES:
            tok = load_tokenizer(weights, template_dir, tmp)
            cases.append(render_case(tok, template_dir, messages, add_generation_prompt))
    # Every kind of case is there: renders, refusals, the date.
    assert any("error" in c for c in cases) and any("date_format" in c for c in cases)

    generator = pipeline("text-generation", model=LLAMA, device="cpu")
    answers = []
    for messages in ANSWER_CHATS:
        out = generator(messages, max_new_tokens=MAX_NEW, do_sample=False)
        reply = out[0]["generated_text"][-1]
        assert reply["role"] == "assistant"
        answers.append({"messages": messages, "max_new_tokens": MAX_NEW, "answer": reply["content"]})

    write_json(os.path.join(out_dir, "reference.json"), {
        "note": "transformers' apply_chat_template (tokenize=False; input_ids with tokenize=True) per case, or the "
                "TemplateError's message; {DATE} stands for strftime_now(date_format) at render time. answers: "
                "the text-generation pipeline on weights/llama-tiny, greedy, given each chat.",
        "versions": {"jinja2": jinja2.__version__, "python": "%d.%d.%d" % sys.version_info[:3],
                     "tokenizers": tokenizers.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "cases": cases,
        "answers": answers,
    })


if __name__ == "__main__":
    main()
