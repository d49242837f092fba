"""What keeps a cold `ftrace query` short (perf/cold_cli.py measures it): a BM25 query with a given target
imports neither torch nor transformers, and greedy answers stop at the answer's end with the same answers."""

import json
from pathlib import Path

import pytest
import torch

from ftrace.model.answer import _Answered, cut, greedy_answers
from ftrace.testing import cli_imports

ROOT = Path(__file__).resolve().parents[1]
AVANZA = "Toyota Avanza is produced by"


def test_a_bm25_query_with_a_target_loads_no_model_stack(sample_index):
    args = ["query", AVANZA, "--index", str(sample_index), "--method", "bm25", "--target", "Toyota", "--json"]
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    p, heavy = cli_imports(args, ROOT, env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert heavy == ["jnius"]  # Lucene, and nothing of the model's
    rows = json.loads(p.stdout)["rows"]
    assert rows[0]["scores"]["bm25"] > 0 and len(rows) == 10


def answers_without_early_stop(lm, prompts, max_new_tokens=8):
    """Every prompt generated to max_new_tokens, then cut: what the answers were before the early stop."""
    tok, out = lm.tokenizer, []
    for p in prompts:
        enc = tok([p], return_tensors="pt").to(lm.model.device)
        with torch.no_grad():
            gen = lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tok.pad_token_id)
        out.append(cut(tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)))
    return out


def test_a_continuation_is_answered_at_its_first_stop_mark(tiny_model_dir):
    from ftrace.model import load_model

    tok = load_model(tiny_model_dir).tokenizer
    prompt = tok("Toyota Avanza is produced by")["input_ids"]
    rows = [prompt + tok(c)["input_ids"] for c in (" Toyota. It", " Toyota Motor", " Paris\nand")]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    done = _Answered(tok, len(prompt))(ids, torch.zeros(3, 1))
    assert done.dtype == torch.bool and done.tolist() == [True, False, True]


def test_answers_stay_the_same_with_the_tiny_model(tiny_model_dir, sample):
    from ftrace.model import load_model

    lm = load_model(tiny_model_dir)
    prompts = sorted({q.prompt for q in sample.queries})[:12]
    assert greedy_answers(lm, prompts, batch_size=1) == answers_without_early_stop(lm, prompts)


@pytest.mark.slow
def test_answers_of_the_default_model_stop_early_and_stay_the_same(sample, monkeypatch):
    from ftrace.model import answer, load_model

    lm = load_model()
    prompts = sorted({q.prompt for q in sample.queries})[:10]
    steps = []
    real = answer._Answered.__call__

    def counted(self, input_ids, scores, **kwargs):
        steps.append(input_ids.shape[1] - self.start)
        return real(self, input_ids, scores, **kwargs)

    monkeypatch.setattr(answer._Answered, "__call__", counted)
    assert greedy_answers(lm, prompts, batch_size=1) == answers_without_early_stop(lm, prompts)
    assert len(steps) < 8 * len(prompts) * 0.8  # the real model ends most answers well before 8 tokens
