"""Epoch time and peak memory of kftune's trainer against a bare hand-written PyTorch loop (and Flair).

Every measurement runs in its own child process (peak RSS from ``os.wait4``'s ``ru_maxrss`` of exactly
that child; on CUDA also ``torch.cuda.max_memory_allocated``). Variants, on the same model class,
the same hyperparameters, the same encoded data and the same seed:

- ``kftune``: :class:`kftune.nlp.trainer.Trainer` as ``kftune train`` runs it - dev evaluation (loss +
  dev score) every epoch, a checkpoint (model, optimizer, scheduler, RNG, best weights) written
  through the artifact store every epoch, plateau scheduler, gradient clipping, progress logging.
- ``bare``: a hand-written loop: the same length-bucketed batches (``batch_order`` + ``collate``),
  forward, ``(loss / n).backward()``, clip, ``optimizer.step()``, and a dev pass for accuracy. No
  checkpoints, no scheduler, no callbacks. The floor our trainer is compared with.
- ``bare-naive``: the bare loop with plain shuffled batches (no length bucketing), as a loop written
  from a tutorial would do - shows what bucketing saves.
- ``flair``: Flair's ``TextClassifier`` over ``DocumentCNNEmbeddings(OneHotEmbeddings)`` (the same
  Kim CNN on trainable embeddings, no download) and ``ModelTrainer.train`` - only when a Python with
  ``flair`` is given by ``--flair-python``.

Epoch time = (wall time of the whole training) / epochs, everything included (first epoch too), and
the median over ``--repeats`` child processes, run interleaved (kftune, bare, ... , kftune, bare, ...)
so that drifting machine load hits all variants alike.

Tasks: ``trec6`` (TREC_6, full, dev carved from train; Kim CNN classifier, the task defaults),
``ud`` (UD_ENGLISH upos, 30 % of train; BiLSTM-CRF tagger with a char BiLSTM, the task defaults) and
``trec6-bert`` (TREC_6; a BERT fine-tuned with the fine-tune preset: the transformer's [CLS] vector and a
linear layer, AdamW with a linear warm-up; needs the ``transformers`` extra). The BERT is built here, as a
published one is stored (``save_pretrained``): a WordPiece tokenizer trained on the train split and a
randomly initialised ``BertModel`` of ``--transformer-size`` ``tiny`` (2 layers, hidden 128, 2 heads:
bert-tiny's shape) or ``base`` (12 layers, hidden 768, 12 heads: BERT-base's); the default is ``tiny`` on
the CPU, ``base`` on CUDA, where the trainer runs it in bf16 autocast (``precision: auto``) and so does the
bare loop. ``--downsample`` overrides the tasks' train fraction (for a quick run).
Corpora come from the corpus step (``kftune corpus``) through ``KFTUNE_CORPUS_MIRROR``
(default ``../shared/corpora``).

Usage::

    python benchmarks/trainer_throughput.py [--tasks trec6,ud,trec6-bert] [--epochs 3] [--repeats 3] [--threads 1]
        [--device cpu|cuda] [--transformer-size tiny|base] [--downsample F]
        [--flair-python /tmp/flairvenv/bin/python] [--tag NAME]

writes ``benchmarks/results/trainer_throughput[-TAG].json`` and ``.md``. Targets: time ratio
kftune/bare <= 1.05, peak-memory ratio <= 1.2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_corpora.py, also when imported
from _corpora import prepare_corpus  # noqa: E402 - after the path is set
RESULTS = REPO / "benchmarks" / "results"
TIME_TARGET, MEMORY_TARGET = 1.05, 1.2
TASKS = {
    "trec6": {"corpus": "TREC_6", "downsample": 1.0, "overrides": {}},
    "ud": {"corpus": "UD_ENGLISH", "downsample": 0.3, "overrides": {}},
    # the hyperparameters are the fine-tune preset's; "transformer" is set to the BERT built for the run
    "trec6-bert": {"corpus": "TREC_6", "downsample": 1.0, "overrides": {"max_length": 64}, "transformer": True},
}
TRANSFORMER_SIZES = {  # BertConfig fields: bert-tiny's shape and BERT-base's
    "tiny": {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512},
    "base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072},
}


def build_transformer(corpus: Path, size: str, cache: Path) -> Path:
    """``cache/bert-<size>-<corpus>``: a WordPiece tokenizer trained on the corpus' train split and a randomly
    initialised BertModel, both written with ``save_pretrained`` (made once)."""
    out = cache / f"bert-{size}-{corpus.name}"
    if (out / "config.json").exists():
        return out
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    texts = [" ".join(json.loads(line)["tokens"]) for line in (corpus / "train.jsonl").open(encoding="utf-8")]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=8000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]", model_max_length=512).save_pretrained(out)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=512,
                         **TRANSFORMER_SIZES[size])).save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------------------
# corpora through the corpus step


# ------------------------------------------------------------------------------------------------
# workers (one per child process)


def _load(corpus: Path, threads: int, overrides: dict[str, Any]):
    import torch

    torch.set_num_threads(threads)
    from kftune.nlp.config import Hyperparameters
    from kftune.nlp.data import TextEncoder, read_corpus_info, read_split, task_from_corpus_info

    task = task_from_corpus_info(read_corpus_info(corpus))
    hp = Hyperparameters.from_mapping(overrides, task.type)
    train = read_split(corpus / "train.jsonl", task.type)
    dev = read_split(corpus / "dev.jsonl", task.type)
    enc = TextEncoder.build(task, train, min_word_freq=hp.min_word_freq, max_length=hp.max_length,
                            use_chars=hp.char_embeddings != "none")
    return task, hp, enc, enc.encode(train, "train", training=True), enc.encode(dev, "dev")


def _memory(device: str) -> dict[str, float]:
    out = {}
    if device == "cuda":
        import torch

        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def worker_kftune(corpus: Path, epochs: int, threads: int, device: str, overrides: dict[str, Any]) -> dict[str, Any]:
    from kftune.io.store import open_store
    from kftune.nlp.checkpoint import CheckpointStore, seed_everything
    from kftune.nlp.config import TrainerConfig
    from kftune.nlp.models import build_model
    from kftune.nlp.trainer import Trainer

    task, hp, enc, train, dev = _load(corpus, threads, overrides)
    seed_everything(1)
    model = build_model(task.type, hp, enc)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, enc, train, dev, hp,
                          TrainerConfig(max_epochs=epochs, patience=epochs, device=device, seed=1),
                          checkpoints=CheckpointStore(open_store(tmp), "checkpoint.pt"), show_progress=True)
        start = time.perf_counter()
        result = trainer.fit()
        wall = time.perf_counter() - start
        # what one checkpoint costs, measured alone: a synchronous write (the trainer writes in the background)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        trainer.save_checkpoint()
        ckpt = {"checkpoint_write_s": time.perf_counter() - wall0, "checkpoint_write_cpu_s": time.process_time() - cpu0,
                "checkpoint_mb": os.path.getsize(trainer.checkpoints.store.uri_for(trainer.checkpoints.key)) / 2**20}
    return {"wall_s": wall, "epochs": result.epochs, "dev_score": result.history[-1].dev_score,
            "train_samples": train.num_usable, **ckpt, **_memory(device)}


class BareLoop:
    """The hand-written loop: same model class, data and seed; forward, backward, clip, step; a dev
    pass for the score. ``bucketed=False`` cuts plain shuffled batches instead of length buckets. On CUDA
    the forward pass runs under the autocast the trainer uses (bf16 where supported, ``precision: auto``)."""

    def __init__(self, task: Any, hp: Any, enc: Any, train: Any, dev: Any, device: str, bucketed: bool):
        import torch

        from kftune.nlp.checkpoint import seed_everything
        from kftune.nlp.models import build_model

        self.task, self.hp, self.enc, self.train, self.dev, self.bucketed = task, hp, enc, train, dev, bucketed
        self.device = torch.device(device)
        seed_everything(1)
        self.model = build_model(task.type, hp, enc).to(self.device)
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=hp.learning_rate,
                                     weight_decay=hp.weight_decay)
        from kftune.nlp.trainer import resolve_autocast

        self.autocast = resolve_autocast("auto", self.device)

    def epoch(self, epoch: int) -> float:
        import random

        import torch

        from kftune.nlp.data import batch_order, collate
        from kftune.nlp.trainer import dev_score

        hp, model, train, dev, enc = self.hp, self.model, self.train, self.dev, self.enc
        if self.bucketed:
            order = batch_order(train, hp.mini_batch_size, shuffle=True, seed=1_000_003 + epoch)
        else:
            idx = list(train.usable)
            random.Random(epoch).shuffle(idx)
            order = [idx[i:i + hp.mini_batch_size] for i in range(0, len(idx), hp.mini_batch_size)]
        from kftune.nlp.predict import autocast_context

        model.train()
        for indices in order:
            batch = collate(train, indices).to(self.device)
            with autocast_context(self.device, self.autocast):
                loss, n = model.loss(batch)
            (loss / n).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), hp.clip_grad_norm)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        model.eval()
        predicted: list[Any] = [None] * len(dev)
        with torch.no_grad(), autocast_context(self.device, self.autocast):
            for indices in batch_order(dev, 2 * hp.mini_batch_size, shuffle=False):
                _, _, pred = model.loss_and_predict(collate(dev, indices).to(self.device), with_scores=False)
                for row, i in enumerate(indices):
                    predicted[i] = (enc.labels.itos[pred.labels[row]] if self.task.is_classification
                                    else enc.labels.decode(pred.labels[row]))
        predicted = [p if p is not None else ("<unk>" if self.task.is_classification else []) for p in predicted]
        return dev_score(self.task, dev.gold(), predicted)


def worker_bare(corpus: Path, epochs: int, threads: int, device: str, bucketed: bool,
                overrides: dict[str, Any]) -> dict[str, Any]:
    task, hp, enc, train, dev = _load(corpus, threads, overrides)
    loop = BareLoop(task, hp, enc, train, dev, device, bucketed)
    start = time.perf_counter()
    score = 0.0
    for epoch in range(1, epochs + 1):
        score = loop.epoch(epoch)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "epochs": epochs, "dev_score": score, "train_samples": train.num_usable,
            **_memory(device)}


def worker_paired(corpus: Path, epochs: int, threads: int, device: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Both in one process, epoch by epoch: one ordinary ``Trainer.fit()`` runs, and its epoch callback
    runs one epoch of the bare loop, so machine load drifting over time hits both alike. A kftune
    epoch is the time from the end of the previous callback to the start of the next one (training,
    dev evaluation, the previous epoch's background checkpoint write); per epoch: wall time and
    process CPU time (the checkpoint thread's CPU included). Epoch 1 is warm-up."""
    from kftune.io.store import open_store
    from kftune.nlp.checkpoint import CheckpointStore, seed_everything
    from kftune.nlp.config import TrainerConfig
    from kftune.nlp.models import build_model
    from kftune.nlp.trainer import Trainer

    task, hp, enc, train, dev = _load(corpus, threads, overrides)
    bare = BareLoop(task, hp, enc, train, dev, device, bucketed=True)
    seed_everything(1)
    model = build_model(task.type, hp, enc)
    times: dict[str, list[tuple[float, float]]] = {"kftune": [], "bare": []}
    clock = {"wall": 0.0, "cpu": 0.0}
    bare_score = {"value": 0.0}

    def run_bare_epoch(epoch: int, result: Any) -> bool:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        times["kftune"].append((wall0 - clock["wall"], cpu0 - clock["cpu"]))
        bare_score["value"] = bare.epoch(epoch)
        clock["wall"], clock["cpu"] = time.perf_counter(), time.process_time()
        times["bare"].append((clock["wall"] - wall0, clock["cpu"] - cpu0))
        return False

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, enc, train, dev, hp,
                          TrainerConfig(max_epochs=epochs, patience=epochs, device=device, seed=1),
                          checkpoints=CheckpointStore(open_store(tmp), "checkpoint.pt"), callbacks=[run_bare_epoch], show_progress=True)
        clock["wall"], clock["cpu"] = time.perf_counter(), time.process_time()
        trainer.fit()
    return {"epochs": epochs, "times": times, "dev_score_kftune": trainer.history[-1].dev_score,
            "dev_score_bare": bare_score["value"]}


FLAIR_WORKER = r"""
import json, sys, time, tempfile
from pathlib import Path
import torch
corpus_dir, epochs, threads, device = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(threads)
import flair
flair.device = torch.device(device)
from flair.data import Corpus, Sentence
from flair.datasets import FlairDatapointDataset
from flair.embeddings import DocumentCNNEmbeddings, OneHotEmbeddings
from flair.models import TextClassifier
from flair.trainers import ModelTrainer
import flair.nn
if not hasattr(flair.nn.WordDropout, "p"):  # flair 0.15.1: DocumentCNNEmbeddings.to_params reads .p
    flair.nn.WordDropout.p = property(lambda self: self.dropout_rate)
flair.set_seed(1)
def read(name):
    out = []
    for line in (corpus_dir / name).open(encoding="utf-8"):
        obj = json.loads(line)
        s = Sentence(obj["tokens"])
        s.add_label("class", obj["label"])
        out.append(s)
    return out
corpus = Corpus(FlairDatapointDataset(read("train.jsonl")), FlairDatapointDataset(read("dev.jsonl")),
                FlairDatapointDataset(read("test.jsonl")), sample_missing_splits=False)
labels = corpus.make_label_dictionary("class", add_unk=False)
words = OneHotEmbeddings.from_corpus(corpus, field="text", embedding_length=128, min_freq=1)
doc = DocumentCNNEmbeddings([words], kernels=((100, 3), (100, 4), (100, 5)), dropout=0.5, word_dropout=0.05)
model = TextClassifier(doc, label_type="class", label_dictionary=labels)
with tempfile.TemporaryDirectory() as tmp:
    trainer = ModelTrainer(model, corpus)
    start = time.perf_counter()
    trainer.train(tmp, learning_rate=1e-3, mini_batch_size=32, max_epochs=epochs, optimizer=torch.optim.AdamW,
                  patience=epochs, anneal_factor=0.5, main_evaluation_metric=("micro avg", "f1-score"),
                  save_final_model=False, create_file_logs=False, embeddings_storage_mode="none",
                  create_loss_file=False)
    wall = time.perf_counter() - start
result = model.evaluate(corpus.dev, gold_label_type="class", mini_batch_size=64)
out = {"wall_s": wall, "epochs": epochs, "dev_score": result.main_score, "flair_version": flair.__version__,
       "train_samples": len(corpus.train)}
if device == "cuda":
    out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
print("RESULT " + json.dumps(out))
"""


# ------------------------------------------------------------------------------------------------
# parent


def run_child(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    # output goes to files, not pipes: a chatty child (Flair) would block on a full pipe before wait4 returns
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[:4]} failed:\n{stderr[-3000:]}")
    line = [x for x in stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    result["cpu_s"] = usage.ru_utime + usage.ru_stime  # the whole child: imports, data, training
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    per_epoch = [r["wall_s"] / r["epochs"] for r in runs]
    out = {"epoch_s_median": statistics.median(per_epoch), "epoch_s_all": per_epoch,
           "epoch_s_min": min(per_epoch), "child_cpu_s_median": statistics.median(r["cpu_s"] for r in runs),
           "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs),
           "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in runs),
           "samples_per_s_median": statistics.median(r["train_samples"] / (r["wall_s"] / r["epochs"]) for r in runs),
           "dev_score_last": runs[-1]["dev_score"], "runs": runs}
    if "cuda_max_allocated_mb" in runs[0]:
        out["cuda_max_allocated_mb_max"] = max(r["cuda_max_allocated_mb"] for r in runs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="trec6,ud")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--flair-python", help="a Python with flair installed (adds the flair variant, trec6 only)")
    parser.add_argument("--cache", default=str(REPO / "benchmarks" / ".work"))
    parser.add_argument("--tag", default="", help="suffix of the results files (e.g. cuda)")
    parser.add_argument("--paired-epochs", type=int, default=7,
                        help="epochs of the in-process paired comparison (the first is warm-up)")
    parser.add_argument("--transformer-size", choices=sorted(TRANSFORMER_SIZES),
                        help="the BERT of trec6-bert (default: tiny on cpu, base on cuda)")
    parser.add_argument("--downsample", type=float, help="train fraction of every task (default: each task's own)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        corpus = Path(args.corpus)
        overrides = json.loads(args.overrides)
        if args.worker == "kftune":
            res = worker_kftune(corpus, args.epochs, args.threads, args.device, overrides)
        elif args.worker == "paired":
            res = worker_paired(corpus, args.paired_epochs, args.threads, args.device, overrides)
        else:
            res = worker_bare(corpus, args.epochs, args.threads, args.device, bucketed=args.worker == "bare",
                              overrides=overrides)
        print("RESULT " + json.dumps(res))
        return 0

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, KFTUNE_PROGRESS="log", PYTHONPATH=str(REPO / "components"))
    env.pop("KFTUNE_PUSHGATEWAY_URL", None)
    report: dict[str, Any] = {"epochs": args.epochs, "repeats": args.repeats, "threads": args.threads,
                              "device": args.device, "python": platform.python_version(),
                              "platform": platform.platform(), "cpus": os.cpu_count(), "tasks": {}}
    import torch

    report["torch"] = torch.__version__
    if args.device == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
    for task in [t for t in args.tasks.split(",") if t]:
        spec = dict(TASKS[task])
        if args.downsample is not None:
            spec["downsample"] = args.downsample
        corpus = prepare_corpus(spec["corpus"], spec["downsample"], cache)
        overrides = dict(spec["overrides"])
        model_note = None
        if spec.get("transformer"):
            size = args.transformer_size or ("base" if args.device == "cuda" else "tiny")
            overrides["transformer"] = str(build_transformer(corpus, size, cache))
            shape = TRANSFORMER_SIZES[size]
            model_note = (f"BERT {size} ({shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, "
                          f"{shape['num_attention_heads']} heads; random init, WordPiece trained on the train split), "
                          "fine-tuned with the fine-tune preset: [CLS] vector + linear layer, AdamW, linear warm-up, "
                          "batches of 16")
        variants = ["kftune", "bare", "bare-naive"]
        if args.flair_python and task == "trec6":
            variants.append("flair")
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        notes = {}
        for r in range(args.repeats):
            for v in variants:
                if v == "flair":
                    argv_v = [args.flair_python, "-c", FLAIR_WORKER, str(corpus), str(args.epochs), str(args.threads),
                              args.device]
                    try:
                        runs[v].append(run_child(argv_v, env))
                    except RuntimeError as exc:
                        notes["flair"] = str(exc)[-1500:]
                        variants.remove("flair")
                        runs.pop("flair")
                    continue
                argv_v = [sys.executable, __file__, "--worker", v, "--corpus", str(corpus), "--epochs", str(args.epochs),
                          "--threads", str(args.threads), "--device", args.device, "--overrides", json.dumps(overrides)]
                runs[v].append(run_child(argv_v, env))
                print(f"{task} {v} repeat {r + 1}: {runs[v][-1]['wall_s'] / args.epochs:.2f} s/epoch, "
                      f"{runs[v][-1]['peak_rss_mb']:.0f} MB", flush=True)
        summary = {v: summarize(rs) for v, rs in runs.items() if rs}
        ours, bare = summary["kftune"], summary["bare"]
        paired = run_child([sys.executable, __file__, "--worker", "paired", "--corpus", str(corpus), "--paired-epochs",
                            str(args.paired_epochs), "--threads", str(args.threads), "--device", args.device,
                            "--overrides", json.dumps(overrides)], env)
        measured = {k: v[1:] for k, v in paired["times"].items()}  # epoch 1 is warm-up
        paired["wall_ratio_median"] = statistics.median(a[0] / b[0] for a, b in zip(measured["kftune"], measured["bare"]))
        paired["cpu_ratio_median"] = statistics.median(a[1] / b[1] for a, b in zip(measured["kftune"], measured["bare"]))
        paired["wall_ratio_of_sums"] = sum(a[0] for a in measured["kftune"]) / sum(b[0] for b in measured["bare"])
        print(f"{task} paired: wall ratio {paired['wall_ratio_median']:.3f}, cpu ratio {paired['cpu_ratio_median']:.3f}",
              flush=True)
        entry = {"corpus": spec["corpus"], "downsample": spec["downsample"], "variants": summary, "paired": paired,
                 "time_ratio": ours["epoch_s_median"] / bare["epoch_s_median"],
                 "time_ratio_min": ours["epoch_s_min"] / bare["epoch_s_min"],
                 "cpu_ratio": ours["child_cpu_s_median"] / bare["child_cpu_s_median"],
                 "memory_ratio": ours["peak_rss_mb_max"] / bare["peak_rss_mb_max"], "notes": notes}
        if model_note:
            entry["model"] = model_note
        if "cuda_max_allocated_mb_max" in ours:
            entry["cuda_memory_ratio"] = ours["cuda_max_allocated_mb_max"] / bare["cuda_max_allocated_mb_max"]
        if "flair" in summary:
            entry["time_ratio_vs_flair"] = ours["epoch_s_median"] / summary["flair"]["epoch_s_median"]
        report["tasks"][task] = entry
    write_results(report, args.tag)
    return 0


def write_results(report: dict[str, Any], tag: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "trainer_throughput" + (f"-{tag}" if tag else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    lines = [f"# Trainer throughput: kftune vs a bare PyTorch loop ({report['device']})", "",
             f"{report['epochs']} epochs per run, {report['repeats']} interleaved child processes per variant, "
             f"torch {report['torch']} on {report['threads']} thread(s); {report['platform']}, {report['cpus']} CPUs"
             + (f", GPU {report['gpu']}" if report.get("gpu") else "") + ".",
             "Epoch time = wall time of the whole training / epochs (dev evaluation, checkpoints and the first "
             "epoch included), median over the runs. Peak RSS: `ru_maxrss` of each child, max over the runs.", ""]
    for task, entry in report["tasks"].items():
        lines += [f"## {task}: {entry['corpus']} (train downsample {entry['downsample']})", ""]
        if entry.get("model"):
            lines += [f"Model: {entry['model']}.", ""]
        lines += [
                  "| variant | epoch s (median) | epoch s (min) | child CPU s (median) | train sentences/s | peak RSS MB (max) |"
                  + (" CUDA max allocated MB |" if report["device"] == "cuda" else "") + " last dev score |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if report["device"] == "cuda" else "") + " ---: |"]
        for v, s in entry["variants"].items():
            cuda = f" {s.get('cuda_max_allocated_mb_max', 0):.1f} |" if report["device"] == "cuda" else ""
            lines.append(f"| {v} | {s['epoch_s_median']:.2f} | {s['epoch_s_min']:.2f} | {s['child_cpu_s_median']:.1f} | "
                         f"{s['samples_per_s_median']:.0f} | "
                         f"{s['peak_rss_mb_max']:.0f} |{cuda} {s['dev_score_last']:.4f} |")
        pr = entry["paired"]
        ok_p = "meets" if pr["wall_ratio_median"] <= TIME_TARGET else "MISSES"
        lines += ["", f"**Paired, in one process** ({pr['epochs'] - 1} epochs each after a warm-up epoch; the bare "
                  f"loop's epoch runs inside kftune's epoch callback): kftune / bare per-epoch wall-time ratio, median **{pr['wall_ratio_median']:.3f}** "
                  f"({ok_p} the target <= {TIME_TARGET}); ratio of the summed wall times {pr['wall_ratio_of_sums']:.3f}; "
                  f"CPU-time ratio (process, checkpoint thread included) median {pr['cpu_ratio_median']:.3f}. "
                  f"Dev score after the last epoch: kftune {pr['dev_score_kftune']:.4f}, bare {pr['dev_score_bare']:.4f} "
                  "(here the two draw dropout masks from one shared RNG, so they differ a little).",
                  "", "Separate child processes (also what the memory numbers come from):"]
        ok_t = "meets" if entry["time_ratio"] <= TIME_TARGET else "MISSES"
        ok_m = "meets" if entry["memory_ratio"] <= MEMORY_TARGET else "MISSES"
        lines += ["", f"- time ratio kftune / bare: **{entry['time_ratio']:.3f}** ({ok_t} the target <= {TIME_TARGET})",
                  f"- same ratio on the fastest run of each: {entry['time_ratio_min']:.3f}; on the child processes' "
                  f"CPU time (user + sys, less sensitive to other load): {entry['cpu_ratio']:.3f}",
                  f"- peak RSS ratio kftune / bare: **{entry['memory_ratio']:.3f}** ({ok_m} the target <= {MEMORY_TARGET})"]
        if "cuda_memory_ratio" in entry:
            lines.append(f"- CUDA max-allocated ratio kftune / bare: **{entry['cuda_memory_ratio']:.3f}**")
        ck = entry["variants"]["kftune"]["runs"]
        lines.append(f"- one checkpoint ({statistics.median(r['checkpoint_mb'] for r in ck):.1f} MB: model, optimizer, "
                     f"scheduler, RNG, best weights) written alone: "
                     f"{statistics.median(r['checkpoint_write_s'] for r in ck) * 1000:.0f} ms wall, "
                     f"{statistics.median(r['checkpoint_write_cpu_s'] for r in ck) * 1000:.0f} ms CPU (median); "
                     "the trainer writes it in a background thread while the next epoch runs")
        if "time_ratio_vs_flair" in entry:
            lines.append(f"- time ratio kftune / Flair {entry['variants']['flair']['runs'][0].get('flair_version', '')}: "
                         f"**{entry['time_ratio_vs_flair']:.3f}**")
        for name, note in entry.get("notes", {}).items():
            lines.append(f"- {name}: not measured: `{note.splitlines()[-1] if note else ''}`")
        lines.append("")
    lines.append("Regenerate: `python benchmarks/trainer_throughput.py` (see its docstring for options).")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
