"""TrackStar's tail-patch influence (Chang et al., ICLR 2025): does one training step on the
sentences a method retrieves raise the model's probability of the query's target?

For a query (prompt, target) and a set S of training sentences (a method's top k):

1. S's training examples as one batch, with the training run's loss (its run.json: the whole
   sentence, or each fact object's tokens given the sentence prefix; `ftrace.model.objective`), and the
   gradient g of the batch's mean token loss at the index's model (a run's final checkpoint);
2. one AdamW step exactly as torch.optim.AdamW takes it, from the run's optimizer state (first and
   second moments, step count: the final checkpoint's trainer.pt, with the run's betas, eps and
   weight decay) at the run's configured (peak) learning rate (TrackStar steps at the end of
   pretraining, but ftrace train's schedule decays linearly to ~0 there, where a step moves nothing;
   `--tailpatch-lr` overrides it). An index that no run made steps from a fresh AdamW (zero moments) at lr 2e-4
   (ftrace train's default) unless `--tailpatch-lr` is given;
3. the change of log p(target | prompt), summed over the target's tokens, and of p.

The step is never applied to the model: the stepped weights are new tensors given to
torch.func.functional_call, so the model's own weights stay bit-identical (tests check it) and
nothing has to be restored.

References per query: "oracle" (the query's proponents, at most k), "random" (k seeded random
sentences) and, when the step starts from a run's state, "momentum" (the step with g = 0, i.e. an
empty S: what the run's momentum alone does to the target; every method's change includes roughly
that much, though not exactly, since Adam's denominator depends on g).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ftrace import FtraceError
from ftrace.config import MAX_TOKENS, TrainConfig
from ftrace.corpus import Example, Sentence
from ftrace.model import LoadedModel
from ftrace.model.batching import IGNORE, LossBatch
from ftrace.model.objective import Objective, lm_loss, target_logprobs
from ftrace.runs import TRAINER, load_trainer, read_run, read_state, traced_run

ORACLE, RANDOM, MOMENTUM = "oracle", "random", "momentum"
FRESH_LR = TrainConfig.model_fields["lr"].default  # for an index that no run made


@dataclass(frozen=True)
class StepSettings:
    """The one optimizer step a tail-patch takes (recorded in the report)."""

    lr: float
    lr_source: str
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    steps_taken: int  # optimizer steps before this one (0: a fresh optimizer)
    example_loss: str  # the training examples' loss: "sentence" or "object"
    state: str  # where the moments come from
    max_tokens: int  # tokens per training example (the run's)


def check_run(train_dir: Path, lr: float | None) -> tuple[Path, dict, dict]:
    """The run's final checkpoint, its config and the checkpoint's state, after the cheap checks (before
    any model work): an AdamW run whose final checkpoint records its lr (or `lr` is given) and keeps its
    optimizer state."""
    run = read_run(train_dir)
    if run is None:
        raise FtraceError(f"{train_dir}: no ftrace train run there (the index's manifest names it)")
    if run["config"].get("optimizer") != "adamw":
        raise FtraceError(f"{train_dir}: tail-patch steps like AdamW; this run used {run['config'].get('optimizer')}")
    final = traced_run(train_dir, "final").final
    state = read_state(final) or {}
    if lr is None and not run["config"].get("lr"):
        raise FtraceError(f"{train_dir}: its run records no learning rate; give --tailpatch-lr")
    if not (final / TRAINER).exists():
        raise FtraceError(f"{final}: has no {TRAINER} (the optimizer state to step from)")
    return final, run["config"], state


def _fresh(lr: float | None, max_tokens: int) -> StepSettings:
    return StepSettings(lr=FRESH_LR if lr is None else lr, lr_source="--tailpatch-lr" if lr is not None else
                        "ftrace train's default (the index was not made from a run)", betas=(0.9, 0.999), eps=1e-8,
                        weight_decay=0.0, steps_taken=0, example_loss="sentence", state="fresh (zero moments)",
                        max_tokens=max_tokens)


class TailPatcher:
    """One model in memory; `patch` measures a tail-patch without changing the model's weights."""

    def __init__(self, lm: LoadedModel, settings: StepSettings, max_tokens: int,
                 moments: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.lm, self.s, self.max_tokens = lm, settings, max_tokens
        self.model = lm.model
        self.device = next(self.model.parameters()).device
        self.names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.moments = moments  # name -> (exp_avg, exp_avg_sq); None: a fresh optimizer
        self.objective = Objective(settings.example_loss, lm.tokenizer, settings.max_tokens)  # the run's

    @classmethod
    def for_index(cls, lm: LoadedModel, train_dir: str | None, max_tokens: int, lr: float | None) -> TailPatcher:
        """The index's model stepping from its training run's final state (or fresh, with no run)."""
        if train_dir is None:
            return cls(lm, _fresh(lr, max_tokens), max_tokens)
        final, cfg, state = check_run(Path(train_dir), lr)
        if Path(lm.name).resolve() != final.resolve():
            raise FtraceError(f"tail-patch: the index's model {lm.name} is not its run's final checkpoint {final}")
        opt = load_trainer(final)["optimizer"]
        group = opt["param_groups"][0]
        if group.get("amsgrad") or group.get("maximize"):
            raise FtraceError(f"{final}/{TRAINER}: tail-patch steps like plain AdamW (no amsgrad, no maximize)")
        if len(opt["state"]) != sum(p.requires_grad for p in lm.model.parameters()):
            raise FtraceError(f"{final}/{TRAINER}: optimizer state for {len(opt['state'])} parameters, not the "
                              "model's")
        # the run's configured (peak) lr: ftrace train decays it linearly to ~0 by the last step, where one step
        # moves nothing (results/attribution/README.md#tail-patch-on-the-trained-model)
        source = "--tailpatch-lr" if lr is not None else (f"the run's configured lr (its peak; the last step's, at "
                                                          f"{final.name}, was {state.get('lr') or 0:.3g})")
        s = StepSettings(lr=float(lr if lr is not None else cfg["lr"]), lr_source=source,
                         betas=tuple(group["betas"]), eps=float(group["eps"]),
                         weight_decay=float(group["weight_decay"]), steps_taken=int(opt["state"][0]["step"]),
                         example_loss=cfg["example_loss"], state=f"{final}/{TRAINER}",
                         max_tokens=int(cfg.get("max_tokens", MAX_TOKENS)))
        moments = {}
        trained = [(n, p) for n, p in lm.model.named_parameters() if p.requires_grad]  # the optimizer's order
        for i, (name, p) in enumerate(trained):
            st = opt["state"][i]
            if st["exp_avg"].shape != p.shape:
                raise FtraceError(f"{s.state}: state {i} has shape {tuple(st['exp_avg'].shape)}, parameter {name} "
                                  f"{tuple(p.shape)}")
            moments[name] = (st["exp_avg"].to(p.device, p.dtype), st["exp_avg_sq"].to(p.device, p.dtype))
        return cls(lm, s, max_tokens, moments)

    # ---- the pieces

    def examples(self, sentences: Sequence[Sentence]) -> list[Example]:
        return self.objective.training_examples(sentences)

    def logprobs(self, prompts: Sequence[str], targets: Sequence[str],
                 params: dict[str, torch.Tensor] | None = None) -> list[float]:
        """log p(target | prompt) per query, summed over the target's tokens (at `params` if given)."""
        return target_logprobs(self.model, self.lm.tokenizer, prompts, targets, self.max_tokens, params)

    def gradient(self, examples: Sequence[Example]) -> list[torch.Tensor | None]:
        """Gradient of the batch's mean token loss (None for a parameter the loss does not touch)."""
        batch, _ = self.objective.batch(examples)
        scored = (batch.labels != IGNORE).any(dim=0).nonzero()
        end = int(scored.max()) + 1 if len(scored) else 1  # a causal LM: later tokens change no scored logit
        batch = LossBatch(batch.input_ids[:, :end], batch.attention_mask[:, :end], batch.labels[:, :end])
        loss = lm_loss(self.model, batch.to(self.device))
        return list(torch.autograd.grad(loss, self.params, allow_unused=True))

    @torch.no_grad()
    def stepped(self, grads: Sequence[torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """The weights after one AdamW step with these gradients (torch.optim.AdamW's update, as new
        tensors; a parameter without a gradient is skipped, as AdamW skips it)."""
        s = self.s
        b1, b2 = s.betas
        t = s.steps_taken + 1
        bc1, bc2_sqrt = 1 - b1 ** t, math.sqrt(1 - b2 ** t)
        out = {}
        for name, p, g in zip(self.names, self.params, grads, strict=True):
            if g is None:
                out[name] = p
                continue
            # AdamW's single-tensor update, op for op, into new tensors (the state is left as it is)
            if self.moments is None:
                m, denom = g * (1 - b1), (g * g).mul_(1 - b2)
            else:
                exp_avg, exp_avg_sq = self.moments[name]
                m, denom = torch.lerp(exp_avg, g, 1 - b1), (exp_avg_sq * b2).addcmul_(g, g, value=1 - b2)
            denom.sqrt_().div_(bc2_sqrt).add_(s.eps)
            new = p * (1 - s.lr * s.weight_decay) if s.weight_decay else p
            out[name] = torch.addcdiv(new, m, denom, value=-s.lr / bc1)
        return out

    def patch(self, prompt: str, target: str, sentences: Sequence[Sentence]) -> dict:
        """One tail-patch: {"n": training examples stepped on, "after": log p(target) after the step, "s": seconds}.
        With no examples (S empty, or no sentence of S has an object in its text under the object
        loss) g = 0: the momentum-only step."""
        t0 = time.perf_counter()
        examples = self.examples(sentences)
        grads = self.gradient(examples) if examples else [torch.zeros_like(p) for p in self.params]
        stepped = self.stepped(grads)
        del grads  # free them before the prompt's forward
        after = self.logprobs([prompt], [target], stepped)[0]
        return {"n": len(examples), "after": after, "s": time.perf_counter() - t0}
