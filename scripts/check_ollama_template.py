"""The Modelfile's TEMPLATE renders in Go what the chat template renders in Jinja: `python scripts/check_ollama_template.py`.

Ollama runs a Modelfile's TEMPLATE with Go's text/template, giving it `.System` (the system messages,
joined by a blank line) and `.Messages` (every message, with `.Role` and `.Content`). This script
writes the TEMPLATE that `scratch-gpt export --to gguf` puts in the Modelfile for the book's Alpaca
chat template and for ChatML, executes it with Go's own text/template (a few lines of Go, run with
`go run`; install Go first, e.g. `apt-get install golang-go`) on several conversations, and compares
each result with the Jinja rendering that transformers makes (`add_generation_prompt=True`).
"""

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from scratch_gpt.gguf_export import ollama_template, turn_pieces
from scratch_gpt.tokenizer import CHAT_TEMPLATE, train_tokenizer

GO_PROGRAM = """package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

type Case struct {
	Template string
	System   string
	Messages []Message
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	var rendered []string
	for _, c := range cases {
		t := template.Must(template.New("modelfile").Parse(c.Template))
		var out strings.Builder
		if err := t.Execute(&out, map[string]any{"System": c.System, "Messages": c.Messages}); err != nil {
			panic(err)
		}
		rendered = append(rendered, out.String())
	}
	json.NewEncoder(os.Stdout).Encode(rendered)
}
"""

CHATML = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CONVERSATIONS = [
    [{"role": "user", "content": "Rewrite the word in capitals.\n\n### Input:\nfox"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Say \"hi\" {{ twice }}."}],
    [{"role": "user", "content": "  leading and trailing spaces  "}, {"role": "assistant", "content": "ok\n"},
     {"role": "user", "content": "Tabs\tand ünïcödé 🦙"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}],
]


def main() -> int:
    if shutil.which("go") is None:
        print("Go is not installed (e.g. apt-get install golang-go); nothing checked.")
        return 1
    tokenizer = train_tokenizer(["a few words to train on"] * 10, vocab_size=270, show_progress=False)
    cases, expected = [], []
    for name, template in (("Alpaca (the book's)", CHAT_TEMPLATE), ("ChatML", CHATML)):

        def render(messages, add_generation_prompt, template=template):
            return tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=template
            )

        pieces = turn_pieces(render)
        assert pieces is not None, name
        for messages in CONVERSATIONS:
            system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
            cases.append({"Template": ollama_template(pieces), "System": system,
                          "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]})  # fmt: skip
            expected.append((name, render(messages, True)))
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "render.go").write_text(GO_PROGRAM)
        done = subprocess.run(["go", "run", "render.go"], cwd=folder, input=json.dumps(cases), capture_output=True, text=True,
                              env={"HOME": folder, "GOCACHE": f"{folder}/cache", "GOFLAGS": "-mod=mod", "PATH": "/usr/bin:/bin"})  # fmt: skip
    if done.returncode:
        print(done.stderr)
        return 1
    rendered = json.loads(done.stdout)
    wrong = [(name, jinja, go) for (name, jinja), go in zip(expected, rendered) if jinja != go]
    for name, jinja, go in wrong:
        print(f"{name}: Jinja {jinja!r}\n{' ' * len(name)}  Go    {go!r}")
    print(f"{len(rendered) - len(wrong)} of {len(rendered)} conversations render the same in Go (Ollama's TEMPLATE) and Jinja")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
