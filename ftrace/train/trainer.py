"""`train(config, corpus, out)`: fine-tune a causal LM on a corpus, saving checkpoints to trace with.

The loss of a batch is the mean token cross-entropy over its scored positions (ftrace.model.objective
says which). Order of events (plan.py fixes the steps and batches):

1. If `out` holds a run: refuse a different identity (config except device, base weights, corpus,
   training examples) with nothing touched; if it is complete, say so and return.
2. Seed torch with `seed`, turn on deterministic algorithms (warn-only where an op has none), save
   the base model as step-0 (or, resuming, remove half-written checkpoints and continue from the
   latest complete one, or from resume/ where --save-every saved a later step: its weights,
   optimizer, scheduler and RNG states).
3. Train, writing a checkpoint at each planned step (and resume/ every --save-every steps between
   them); mark run.json complete at the end.

On the same device and software, a run resumed from any checkpoint ends with bit-identical weights
to an uninterrupted one, and two runs with the same seed are identical.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ftrace.config import DEFAULT_MODEL, TrainConfig
from ftrace.corpus import Corpus, Example, Query
from ftrace.index.manifest import versions
from ftrace.model.corpus import load_selection
from ftrace.model.loading import DTYPES, LoadedModel, load_model, resolve_device
from ftrace.model.objective import Objective, accumulate_gradient
from ftrace.plumbing import log
from ftrace.runs.checkpoints import checkpoint_dirs, load_trainer, read_state
from ftrace.runs.errors import TrainError
from ftrace.runs.layout import FORMAT, LOSS, PLOT, RESUME, RUN, checkpoint_step, read_run
from ftrace.train import checkpoints as ckpt
from ftrace.train.examples import build_examples
from ftrace.train.facts import fact_sample, facts_right
from ftrace.train.layout import check_identity, locked, remove_partial, write_json
from ftrace.train.losslog import LossLog, read_losses, truncate_losses
from ftrace.train.optim import make_optimizer, second_moments, state_names
from ftrace.train.plan import Plan
from ftrace.train.plot import plot_losses


@dataclass
class TrainRun:
    out: Path
    checkpoints: list[Path]  # complete checkpoints, step 0 first
    total_steps: int
    examples: int
    skipped_sentences: int  # loss "object": sentences without a fact object in their text
    resumed_from: int | None  # the step a resumed run continued from; None when it started afresh
    already_complete: bool  # nothing was done: the directory held this run, finished


@contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic kernels for the duration (warn-only: an op without one still runs)."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    if device.type == "cuda":  # cuBLAS is only deterministic with a fixed workspace
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _resume_from(out: Path, last: Path) -> Path:
    """Where a stopped run goes on from: resume/ where it holds a step after the last checkpoint `last`."""
    saved = read_state(out / RESUME)
    return out / RESUME if saved is not None and saved["step"] > checkpoint_step(last) else last


def train_command(config: TrainConfig) -> TrainRun:
    """`ftrace train`: the training sentences and model of --index (output INDEX/train), or of
    --corpus and --model (output --out)."""
    if config.index is not None:  # TrainConfig validated the combination
        from ftrace.index.layout import IndexDir  # here: the index layer brings Lucene's JVM set-up

        index = IndexDir(Path(config.index))
        built_with = index.manifest.model.name
        if config.model is not None and config.model != built_with:
            raise TrainError(f"--model {config.model}: the index {index.path} was built with {built_with!r}; "
                             "train that model, or use --corpus")
        config = config.model_copy(update={"model": built_with})
        return train(config, index.corpus, config.out or index.train_dir)
    if config.corpus is None or config.out is None:
        raise TrainError("give --index INDEX, or --corpus CORPUS with --out DIR")
    return train(config, load_selection(config.corpus, config.model, config.max_tokens), config.out)


def train(config: TrainConfig, corpus: Corpus, out: Path | str) -> TrainRun:
    out = Path(out)
    if config.model is None:
        config = config.model_copy(update={"model": DEFAULT_MODEL})
    elif Path(config.model).exists():  # a local model: recorded absolute, so indexes work from anywhere
        config = config.model_copy(update={"model": str(Path(config.model).resolve())})
    run = read_run(out)
    if run is not None:  # cheap checks first: no model load to refuse a different run
        check_identity(out, run["identity"], {"config": config.identity(),
                                              "corpus_fingerprint": corpus.fingerprint()})
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    base = load_model(config.model)
    if base.is_seq2seq:
        raise TrainError(f"--model {config.model}: ftrace train fine-tunes causal LMs, not encoder-decoders")
    objective = Objective(config.example_loss, base.tokenizer, config.max_tokens)
    exset = build_examples(corpus, objective)
    plan = Plan(len(exset.examples), config.batch_size, config.epochs, config.max_steps, config.seed,
                config.checkpoints, tuple(config.checkpoint_at or ()))
    identity = {"config": config.identity(), "corpus_fingerprint": corpus.fingerprint(),
                "model_fingerprint": base.fingerprint, "examples_fingerprint": exset.fingerprint()}
    result = TrainRun(out, [], plan.total_steps, len(exset.examples), exset.skipped_sentences, None, False)
    if run is not None:
        check_identity(out, run["identity"], identity)
        if run.get("complete"):
            log(f"{out}: already complete ({plan.total_steps} steps); nothing to do")
            result.checkpoints, result.already_complete = checkpoint_dirs(out), True
            return result
    # the disk the checkpoints still to write need: refused (one line, nothing written) where it lacks the room
    written = {checkpoint_step(d) for d in checkpoint_dirs(out)}  # resuming: those it has
    todo = [s for s in (0, *plan.checkpoint_steps()) if s not in written]
    sizes = ckpt.CheckpointSizes.of(base.model, DTYPES[config.dtype], config.optimizer)
    saves = config.save_every if plan.resume_steps(config.save_every) else 0
    disk = ckpt.check_disk(out, sizes, todo, saves) if todo else None
    mixed = f" (forward and backward in {config.autocast})" if config.autocast else ""
    log(f"model {base.name} ({base.fingerprint}) on {device} in {config.dtype}{mixed}; {config.optimizer}, "
        f"lr {config.lr:g}, loss {config.example_loss}")
    skipped = f"; {exset.skipped_sentences} sentences skipped (no fact object in their text)" \
        if config.example_loss == "object" else ""
    log(f"{len(exset.examples)} examples from {len(corpus.sentences)} sentences ({corpus.source}){skipped}")
    log(f"{plan.total_steps} steps ({plan.steps_per_epoch} per epoch, batch {config.batch_size}); "
        f"checkpoints at steps 0, {', '.join(map(str, plan.checkpoint_steps()))}")
    if disk:
        log(disk)
    out.mkdir(parents=True, exist_ok=True)
    with locked(out), deterministic(device):
        record = run or {
            "format": FORMAT, "identity": identity, "config": config.model_dump(mode="json"),
            "model": {"name": base.name, "fingerprint": base.fingerprint},
            "corpus": {"source": corpus.source, "fingerprint": corpus.fingerprint(),
                       "sentences": len(corpus.sentences)},
            "examples": len(exset.examples), "skipped_sentences": exset.skipped_sentences,
            "steps_per_epoch": plan.steps_per_epoch, "total_steps": plan.total_steps,
            "checkpoint_steps": [0, *plan.checkpoint_steps()], "checkpoints": [], "complete": False,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": versions(("torch", "transformers")),
        }
        facts = fact_sample(corpus, config.eval_facts, config.seed) if config.eval_facts else []
        if config.eval_facts and not facts:
            log(f"--eval-facts {config.eval_facts}: the corpus has no queries; no learning curve")
        result.resumed_from = _run(config, plan, base, objective, exset.examples, record, out, device, facts)
    result.checkpoints = checkpoint_dirs(out)
    log(f"{out}: done, {plan.total_steps} steps; final weights in {result.checkpoints[-1]}")
    return result


def _run(config: TrainConfig, plan: Plan, base: LoadedModel, objective: Objective, examples: list[Example],
         record: dict[str, Any], out: Path, device: torch.device, facts: list[Query]) -> int | None:
    """The training loop proper (inside the lock); returns the step it resumed from, if any."""
    removed = remove_partial(out)
    done = checkpoint_dirs(out)
    model, resumed = base.model, None
    since: list[float] = []  # the losses of the steps since the last checkpoint
    if done:
        source = _resume_from(out, done[-1])
        state = read_state(source)
        assert state is not None  # complete: checkpoint_dirs and _resume_from say so
        resumed = state["step"]
        trainer = load_trainer(source)
        model = load_model(str(source)).model  # the exact saved weights
        base.model = None  # free the base copy
        truncate_losses(out / LOSS, resumed)
        # from resume/: its steps since the last checkpoint count in the next one's train_loss (flushed before)
        since = [r["loss"] for r in read_losses(out / LOSS) if r["step"] > checkpoint_step(done[-1])]
        if len(since) != resumed - checkpoint_step(done[-1]):
            log(f"{out / LOSS}: lacks some of the steps since {done[-1].name}; the next checkpoint's train_loss "
                "is the mean of those it has")
        partial = f" (removed partial {', '.join(removed)})" if removed else ""
        at = f" (step {resumed}; the last checkpoint is {done[-1].name})" if source != done[-1] else ""
        log(f"resuming from {source.name}{at}{partial}")
    else:
        (out / LOSS).unlink(missing_ok=True)
    record["checkpoints"] = [read_state(d) for d in done]
    write_json(out / RUN, record)
    model.to(device=device, dtype=DTYPES[config.dtype]).train()
    optimizer, scheduler = make_optimizer(model, config, plan.total_steps)
    if resumed is not None:
        optimizer.load_state_dict(trainer["optimizer"])
        scheduler.load_state_dict(trainer["scheduler"])
        _set_rng_state(trainer["rng"], device)
    targets, saves = set(plan.checkpoint_steps()), set(plan.resume_steps(config.save_every))

    def trainer_state(step: int) -> dict[str, Any]:
        return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                "rng": _rng_state(device)}

    def checkpoint(step: int, train_loss: float | None, lr: float | None) -> None:
        state: dict[str, Any] = {"step": step, "epoch": plan.epoch_of(step), "train_loss": train_loss, "lr": lr,
                                 "optimizer": config.optimizer, "device": str(device)}
        if facts:  # the learning curve; reads the weights only (no RNG, no gradient)
            state["facts"] = facts_right(model, base.tokenizer, facts, config.max_tokens)
        moments = second_moments(optimizer, model) if step > 0 else None
        path = ckpt.write_checkpoint(out, step, model, base.tokenizer, state, moments, trainer_state(step),
                                     state_names(optimizer, model))
        record["checkpoints"].append(read_state(path))
        write_json(out / RUN, record)
        plot_losses(out / PLOT, read_losses(out / LOSS), record["checkpoints"], title=f"{base.name} on "
                    f"{record['corpus']['source']}")
        right = f"; facts right {state['facts']['right']} of {state['facts']['of']}" if facts else ""
        if step > 0:
            log(f"checkpoint {path.name}: epoch {state['epoch']:.2f}, loss {train_loss:.4f}, lr {lr:.3g}{right}")
        elif right:
            log(f"base model{right}")

    start = resumed or 0
    if not done:
        checkpoint(0, None, None)
    losses = LossLog(out / LOSS)
    try:
        with tqdm(total=plan.total_steps, initial=start, desc="train", unit="step", file=sys.stderr) as bar:
            for step in range(start, plan.total_steps):
                batch, _ = objective.batch([examples[i] for i in plan.batch(step)])
                lr = scheduler.get_last_lr()[0]
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=DTYPES[config.autocast or config.dtype],
                                    enabled=config.autocast is not None):
                    value = accumulate_gradient(model, batch)
                optimizer.step()
                scheduler.step()
                if not math.isfinite(value):
                    raise TrainError(f"step {step + 1}: the loss is {value}; try a lower --lr")
                since.append(value)
                losses.add(step + 1, plan.epoch_of(step + 1), value, lr)
                bar.update()
                bar.set_postfix(loss=f"{sum(since) / len(since):.4f}", refresh=False)
                if step + 1 in targets:
                    losses.flush()
                    checkpoint(step + 1, sum(since) / len(since), lr)
                    since = []
                elif step + 1 in saves:
                    losses.flush()
                    ckpt.write_resume(out, step + 1, model, base.tokenizer, trainer_state(step + 1))
    finally:
        losses.close()
    record["complete"] = True
    write_json(out / RUN, record)
    shutil.rmtree(out / RESUME, ignore_errors=True)  # the final checkpoint removes it; a kill just after may not
    return resumed
