"""Helpers for tests and benchmarks: a tiny, randomly initialised causal LM with a tokenizer trained on
the given texts, saved as a normal Hugging Face model directory (what tests and quick demos pass as
`--model`), `ftrace serve` started in a subprocess, a CLI command's heavy imports (`cli_imports`), and `record`
for perf/reliability.py's report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch


def make_tiny_model(out_dir: Path, texts: Iterable[str], seed: int = 0, vocab_size: int = 400,
                    hidden_size: int = 32, layers: int = 2) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=fast.vocab_size if len(fast) <= fast.vocab_size else len(fast),
                         hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    return out_dir


HEAVY = ("torch", "transformers", "jnius", "qdrant_edge")  # the model stack, the JVM bridge, the vector store


def cli_imports(args: list[str], cwd: Path, env: dict[str, str] | None = None,
                timeout: float = 120) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`ftrace ARGS` in a fresh process (`env`: its whole environment, default this one's), with its exit status,
    and which of HEAVY it imported (what a cold command pays for)."""
    probe = ("import json, sys\nfrom ftrace.cli import app\ncode = 1\ntry:\n"
             "    code = app(sys.argv[1:], standalone_mode=False)\nfinally:\n"
             f"    print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)\n"
             "sys.exit(code or 0)\n")
    p = subprocess.run([sys.executable, "-c", probe, *args], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, env=env)
    lists = [line for line in p.stderr.splitlines() if line.startswith("[")]
    if not lists:
        raise AssertionError(f"the probe printed no import list: {p.stderr[-2000:]}")
    return p, json.loads(lists[-1])


@dataclass
class ServerProcess:
    index: Path
    url: str
    proc: subprocess.Popen
    log: Path
    startup_s: float

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (uvicorn's graceful shutdown, which closes the index), then its exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=timeout)


def start_server(index: Path, log: Path, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 300) -> ServerProcess:
    """`ftrace serve --index INDEX --port 0 ARGS` in a subprocess, its output in `log` (a file, not a pipe:
    the request log never blocks the server); returns once it accepts requests, with the URL it got."""
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ftrace.cli", "serve", "--index", str(index), "--port", "0",
                                 *args], env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
    url = None
    while time.monotonic() - started < timeout and proc.poll() is None:
        text = Path(log).read_text()
        if url is None and "serving " in text:
            url = text.split("serving ", 1)[1].split(" at ", 1)[1].split()[0]
        if url and "Application startup complete" in text:
            return ServerProcess(Path(index), url, proc, Path(log), time.monotonic() - started)
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    raise RuntimeError(f"ftrace serve did not start: {Path(log).read_text()[-3000:]}")


def record(scenario: str, item: str, outcome: str) -> None:
    """One line of the reliability report (perf/reliability.py), when it asked for one (FTRACE_RELIABILITY_LOG)."""
    path = os.environ.get("FTRACE_RELIABILITY_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"scenario": scenario, "item": item, "outcome": outcome}) + "\n")
