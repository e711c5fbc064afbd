"""Benchmarks inside training: the eval suite's prompts encoded on the driver, decoded by the engine on all ranks."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vilaray.config import EvaluationConfig, RecipeError
from vilaray.data.pipeline import PipelineSpec
from vilaray.evals.turns import end_of_turn_ids, reply_text
from vilaray.train.lockstep import deal, evaluating


@dataclass
class EncodedPrompt:
    """One benchmark prompt as training rows are made: token ids with images expanded, decoded pixels, and
    (multiple choice) each choice's continuation ids."""

    key: tuple[str, int, str]  # (task, shots, uid)
    input_ids: np.ndarray
    images: list[bytes]
    choices: list[np.ndarray]
    max_new_tokens: int


@dataclass
class EvalBundle:
    """What every rank needs to run and score the evaluation (shipped once, as one object)."""

    prompts: list[EncodedPrompt]
    tasks: list  # harness TaskData, for scoring on rank 0
    shots: list[int]
    seed: int
    tokenizer_dir: str
    skipped: dict[str, int]  # task -> prompts that could not be encoded (scored as empty answers)


def build_eval_bundle(spec: PipelineSpec, cfg: EvaluationConfig) -> EvalBundle:
    """Load the suite's tasks (failing before training on an unknown task or a malformed file) and encode
    every prompt with the stage's own tokenizer, chat template and image geometry."""
    from vilaray.data.sample import image_part, text_part
    from vilaray.data.tokenize import SampleError
    from vilaray.evals.harness import load_tasks, prompt_items
    from vilaray.evals.tasks import load_suite

    suite, base = load_suite(cfg.suite, cfg.data_root)
    if cfg.tasks is not None:
        unknown = sorted(set(cfg.tasks) - {t.name for t in suite.tasks})
        if unknown:
            raise RecipeError(
                f"evaluation.tasks: {unknown} not in {cfg.suite}; tasks are {[t.name for t in suite.tasks]}"
            )
        suite = suite.model_copy(update={"tasks": [t for t in suite.tasks if t.name in cfg.tasks]})
    tasks = load_tasks(suite, base, cfg.limit)
    encoder = spec.local_encoder()
    prompts, skipped = [], {t.task.name: 0 for t in tasks}
    for item in prompt_items(tasks, cfg.shots, suite.seed):
        files = iter(item.images)
        messages = [
            {
                "role": m["role"],
                "content": [
                    image_part(Path(next(files)).read_bytes())
                    if p["type"] == "image"
                    else text_part(p["text"])
                    for p in m["content"]
                ],
            }
            for m in json.loads(item.messages)
        ]
        try:
            ids, pixels = encoder.encode_prompt(messages)
        except SampleError:
            skipped[item.task] += 1
            continue
        choices = _choice_ids(encoder, messages, item.choices)
        prompts.append(
            EncodedPrompt((item.task, item.shots, item.uid), ids, pixels, choices, item.max_new_tokens)
        )
    return EvalBundle(prompts, tasks, list(cfg.shots), suite.seed, spec.tokenizer_dir, skipped)


def _choice_ids(encoder, messages: list[dict], choices: list[str]) -> list[np.ndarray]:
    """Each choice's continuation ids: tokenized together with the prompt text (as the harness scores
    them, so merges at the boundary match) and cut after the prompt's tokens."""
    if not choices:
        return []
    text, _ = encoder.render_prompt(messages)
    n_text = len(encoder.tok.encode(text)[0])
    return [encoder.tok.encode(text + c)[0][n_text:].astype(np.int64) for c in choices]


def _collate(seqs: list[list[int]], images: list[list[bytes]], pad_id: int, image_size: int, device) -> dict:
    """Right-padded rows for the training forward, padded the way training batches are."""
    from vilaray.data.collate import pad_rows

    length = max(len(s) for s in seqs)
    flat = [img for row in images for img in row]
    pixels = np.frombuffer(b"".join(flat), dtype=np.uint8).reshape(len(flat), image_size, image_size, 3)
    return {
        "input_ids": torch.from_numpy(pad_rows([np.asarray(s) for s in seqs], length, pad_id)).to(device),
        "position_ids": torch.from_numpy(pad_rows([np.arange(len(s)) for s in seqs], length, None)).to(
            device
        ),
        "pixel_values": torch.from_numpy(pixels.copy()).to(device) if flat else None,
        "image_counts": torch.tensor([len(r) for r in images], dtype=torch.long, device=device),
    }


class TrainingEval:
    """This rank's share of the prompts (dealt round-robin), decoded greedily by the training engine.

    Synchronised generation: every rank runs the same number of forwards, going on (with finished or
    filler rows) until no row on any rank is still generating, so ZeRO-3's parameter gathers line up."""

    def __init__(self, bundle: EvalBundle, rank: int, world: int, batch: int, pad_id: int, image_size: int):
        from transformers import AutoTokenizer

        self.bundle, self.rank, self.batch = bundle, rank, batch
        self.pad_id, self.image_size = pad_id, image_size
        self.tok = AutoTokenizer.from_pretrained(bundle.tokenizer_dir)
        self.stop_ids = set(end_of_turn_ids(self.tok))
        gen = [p for p in bundle.prompts if not p.choices]
        self.gen, self.gen_rounds = deal(gen, rank, world, batch)
        self.max_new = max((p.max_new_tokens for p in gen), default=0)
        # Multiple choice: one row per (prompt, choice), dealt like the prompts; argmax after gathering.
        rows = [(p, j) for p in bundle.prompts for j in range(len(p.choices))]
        self.mc, self.mc_rounds = deal(rows, rank, world, batch)
        # What a rank out of work forwards so the others' collectives still line up.
        self.gen_filler = gen[0] if gen else None
        self.mc_filler = rows[0] if rows else None

    def evaluate(self, strategy, device: torch.device) -> dict[str, float]:
        """`eval/<task>/<k>-shot` scores on rank 0 (empty elsewhere); every rank must call it."""
        t0 = time.perf_counter()
        found: dict = {}
        with evaluating(strategy.module):
            for r in range(self.gen_rounds):
                batch = self.gen[r * self.batch : (r + 1) * self.batch]
                for p, text in zip(batch, self._greedy(strategy, device, batch)):
                    found[p.key] = text
            for r in range(self.mc_rounds):
                rows = self.mc[r * self.batch : (r + 1) * self.batch]
                for (p, j), ll in zip(rows, self._choice_logliks(strategy, device, rows)):
                    found[(*p.key, j)] = ll
        merged = {k: v for part in strategy.gather_objects(found) for k, v in part.items()}
        if self.rank != 0:
            return {}
        return self._score(merged) | {"eval_time_s": time.perf_counter() - t0}

    def _greedy(self, strategy, device, prompts: list[EncodedPrompt]) -> list[str]:
        live = prompts or [self.gen_filler]  # a rank out of prompts still runs the forwards, on a filler
        seqs = [list(map(int, p.input_ids)) for p in live]
        images = [p.images for p in live]
        new: list[list[int]] = [[] for _ in live]
        done = [not prompts] * len(live)
        for _ in range(self.max_new):
            out = strategy.forward(**_collate(seqs, images, self.pad_id, self.image_size, device))
            last = torch.tensor([len(s) - 1 for s in seqs], device=out.logits.device)
            picks = out.logits[torch.arange(len(seqs), device=last.device), last].argmax(-1).tolist()
            for i, tok in enumerate(picks):
                if done[i]:
                    continue
                new[i].append(tok)
                seqs[i].append(tok)
                done[i] = tok in self.stop_ids or len(new[i]) >= live[i].max_new_tokens
            if not strategy.any_rank(not all(done)):
                break
        if not prompts:
            return []
        return [reply_text(self.tok, n, self.stop_ids) for n in new]

    def _choice_logliks(self, strategy, device, rows: list[tuple[EncodedPrompt, int]]) -> list[float]:
        live = rows or [self.mc_filler]
        seqs = [list(map(int, p.input_ids)) + list(map(int, p.choices[j])) for p, j in live]
        out = strategy.forward(
            **_collate(seqs, [p.images for p, _ in live], self.pad_id, self.image_size, device)
        )
        logp = torch.log_softmax(out.logits.float(), dim=-1)
        result = []
        for i, (p, j) in enumerate(live):
            start, ids = len(p.input_ids), torch.as_tensor(p.choices[j], device=logp.device)
            result.append(float(logp[i, start - 1 : start - 1 + len(ids)].gather(-1, ids[:, None]).sum()))
        return result if rows else []

    def _score(self, found: dict) -> dict[str, float]:
        from vilaray.evals.harness import score_predictions

        b = self.bundle
        preds: dict = {}
        for t in b.tasks:
            for k in b.shots:
                for s in t.samples:
                    key = (t.task.name, k, s.uid)
                    lls = [found.get((*key, j), -math.inf) for j in range(len(s.choices))]
                    if any(ll > -math.inf for ll in lls):
                        text = s.choices[max(range(len(lls)), key=lls.__getitem__)]
                    else:
                        text = found.get(key, "")  # a prompt that could not be encoded: an empty answer
                    preds[key] = {"prediction": text}
        result = score_predictions("training", b.tasks, b.shots, preds, b.seed)
        return {f"eval/{name}": s.value for name, s in result.scores.items()}
