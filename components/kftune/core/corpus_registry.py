"""The registry of named corpora: where each file lives, its checksum, its format and its splits.

Pure data and lookup (no I/O). Every checksum below was copied from a published source, never
computed from a file of unknown origin:

- TREC (``train_5500.label``, ``TREC_10.label``): the sha256 values that Hugging Face ``datasets``
  records in ``trec/dataset_infos.json`` for the CogComp URLs; torchtext's MD5s agree.
- WNUT-17 and UD English EWT v2.16: the sha256 of the files in the organisers' repositories at the
  commits named in ``shared/corpora/*/README.md`` (byte-identical to the official releases).
- AG_NEWS, NSMC, SST_2: the ``download_checksums`` (sha256 and byte size) in Hugging Face
  ``datasets``' ``ag_news``, ``nsmc`` and ``glue`` ``dataset_infos.json``; the MD5s are
  torchtext's (``AG_NEWS``, ``SST2``), kept for reference only.

``mirror_path`` is the file's path below a corpus mirror (``KFTUNE_CORPUS_MIRROR``), the layout of
``shared/corpora/``: ``<mirror>/trec/train_5500.label``, ``<mirror>/wnut17/...``,
``<mirror>/ud_english_ewt/...``; the other corpora follow the same pattern (``ag_news/``,
``nsmc/``, ``sst2/``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Mapping

from kftune.core.errors import ConfigError, Problem

Task = Literal["text_classification", "sequence_labeling"]
Format = Literal["fasttext", "csv", "tsv", "trec", "conll", "conllu"]

FORMATS: tuple[str, ...] = ("fasttext", "csv", "tsv", "trec", "conll", "conllu")
TASK_OF_FORMAT: Mapping[str, Task] = {
    "fasttext": "text_classification",
    "csv": "text_classification",
    "tsv": "text_classification",
    "trec": "text_classification",
    "conll": "sequence_labeling",
    "conllu": "sequence_labeling",
}
CONLLU_COLUMNS: tuple[str, ...] = ("lemma", "upos", "xpos", "feats", "head", "deprel", "deps", "misc")
SPLITS: tuple[str, ...] = ("train", "dev", "test")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class CorpusFile:
    """One downloadable file.

    ``sha256=None`` means "not published": the downloader refuses such a file unless the user
    allows unverified downloads, and then pins the checksum seen on first use.
    """

    url: str
    sha256: str | None
    mirror_path: str
    size: int | None = None
    md5: str | None = None

    @property
    def filename(self) -> str:
        return self.mirror_path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class SplitSource:
    """Where a split's examples are: a file of the corpus, or a member inside an archive file."""

    file: str  # CorpusFile.mirror_path of the file
    member: str | None = None  # path inside the archive, when ``file`` is a zip/tar archive


@dataclass(frozen=True)
class CorpusEntry:
    """A named corpus. ``options`` are the reader's keyword arguments (see ``kftune.nlp.corpora``)."""

    name: str
    task: Task
    label_type: str
    format: Format
    files: tuple[CorpusFile, ...]
    splits: Mapping[str, SplitSource]
    license: str
    homepage: str
    citation: str
    description: str
    options: Mapping[str, object] = field(default_factory=dict)
    # For corpora whose label column can be chosen (UD: upos/xpos/deprel...), the choices.
    label_columns: tuple[str, ...] = ()
    default_label_column: str | None = None
    # The tokenizer (a name from ``kftune.core.tokenization.TOKENIZERS``) the corpus gets when the spec names
    # none; ``None``: the format's default (regex for raw text, whitespace for pre-tokenized formats).
    tokenizer: str | None = None
    # Sequence labelling: the tags' scheme, ``BIO``/``BIOES`` (entity spans) or ``none`` (plain tags such as
    # POS), so that corpora trained together (``spec.corpus.corpora``) are checked before any download.
    tag_scheme: str | None = None

    @property
    def raw_labels(self) -> tuple[str, ...]:
        """The labels as the files write them, where the registry knows them (the keys of its ``label_map``:
        NSMC ``("0", "1")``); ``()`` where it does not (the reader's labels are used as they are)."""
        label_map = self.options.get("label_map")
        return tuple(label_map) if isinstance(label_map, Mapping) else ()

    def label_map_problems(self, label_map: Mapping[str, str], path: str) -> list[Problem]:
        """Problems with ``label_map`` replacing this corpus' own map of raw label to label (the spec's
        ``corpus.labelMap``, the corpus step's ``--label-map``): only csv/tsv corpora take one; each key must
        be a raw label of the corpus and every raw label needs a name (an unmapped raw label is an error,
        as for a corpus given by URI). Two raw labels may share a name, as for a URI corpus."""
        if self.format not in ("csv", "tsv"):
            return [Problem(path, f"{self.name} is a {self.format} corpus; a label map renames the raw labels "
                                  "of csv/tsv corpora only")]
        raw = self.raw_labels
        if not raw:
            return []
        shown = ", ".join(repr(r) for r in raw)
        current = ", ".join(f"{r} -> {self.options['label_map'][r]}" for r in raw)  # type: ignore[index]
        problems = [Problem(f"{path}.{key}", f"{key!r} is not a raw label of {self.name}: not one of [{shown}] "
                                             f"(its map today: {current})")
                    for key in label_map if str(key) not in raw]
        missing = [r for r in raw if r not in {str(k) for k in label_map}]
        if missing:
            problems.append(Problem(path, f"raw label{'s' if len(missing) > 1 else ''} "
                                          f"{', '.join(repr(m) for m in missing)} of {self.name} "
                                          f"{'have' if len(missing) > 1 else 'has'} no name: the map replaces "
                                          f"the registry's ({current}), so it names every raw label [{shown}]"))
        return problems

    def file(self, mirror_path: str) -> CorpusFile:
        for f in self.files:
            if f.mirror_path == mirror_path:
                return f
        raise KeyError(mirror_path)

    def __hash__(self) -> int:  # Mapping fields are not hashable; the name identifies an entry
        return hash(self.name)


def is_sha256(text: str) -> bool:
    """True for 64 lowercase hex digits."""
    return bool(_SHA256.match(text))


_TREC_TRAIN = CorpusFile(
    url="https://cogcomp.seas.upenn.edu/Data/QA/QC/train_5500.label",
    sha256="9e4c8bdcaffb96ed61041bd64b564183d52793a8e91d84fc3a8646885f466ec3",
    mirror_path="trec/train_5500.label",
    size=335_858,
    md5="073462e3fcefaae31e00edb1f18d2d02",
)
_TREC_TEST = CorpusFile(
    url="https://cogcomp.seas.upenn.edu/Data/QA/QC/TREC_10.label",
    sha256="033f22c028c2bbba9ca682f68ffe204dc1aa6e1cf35dd6207f2d4ca67f0d0e8e",
    mirror_path="trec/TREC_10.label",
    size=23_354,
    md5="323a3554401d86e650717e2d2f942589",
)
_TREC_SPLITS = {"train": SplitSource(_TREC_TRAIN.mirror_path), "test": SplitSource(_TREC_TEST.mirror_path)}
_TREC_CITATION = ("Xin Li and Dan Roth. 2002. Learning Question Classifiers. COLING. "
                  "Eduard Hovy et al. 2001. Toward Semantics-Based Answer Pinpointing. HLT.")
_TREC_LICENSE = "none stated (distributed freely by CogComp for research; Hugging Face lists it as unknown)"

_WNUT = "https://raw.githubusercontent.com/leondz/emerging_entities_17/master/"
_UD = "https://raw.githubusercontent.com/UniversalDependencies/UD_English-EWT/r2.16/"

_ENTRIES: tuple[CorpusEntry, ...] = (
    CorpusEntry(
        name="TREC_6",
        task="text_classification",
        label_type="question_class",
        format="trec",
        files=(_TREC_TRAIN, _TREC_TEST),
        splits=_TREC_SPLITS,
        options={"level": "coarse"},
        license=_TREC_LICENSE,
        homepage="https://cogcomp.seas.upenn.edu/Data/QA/QC/",
        citation=_TREC_CITATION,
        description="TREC question classification, 6 coarse classes (Li & Roth); Latin-1 label lines.",
    ),
    CorpusEntry(
        name="TREC_50",
        task="text_classification",
        label_type="question_class_fine",
        format="trec",
        files=(_TREC_TRAIN, _TREC_TEST),
        splits=_TREC_SPLITS,
        options={"level": "fine"},
        license=_TREC_LICENSE,
        homepage="https://cogcomp.seas.upenn.edu/Data/QA/QC/",
        citation=_TREC_CITATION,
        description="TREC question classification, 50 fine classes written COARSE:fine (Li & Roth).",
    ),
    CorpusEntry(
        name="WNUT_17",
        task="sequence_labeling",
        label_type="ner",
        format="conll",
        files=(
            CorpusFile(_WNUT + "wnut17train.conll",
                       "731820e13f71af324c6b55a1575ec2ce59fbaa2a0806f8f0400b98d56cd6a7a5",
                       "wnut17/wnut17train.conll", 493_781),
            CorpusFile(_WNUT + "emerging.dev.conll",
                       "e053b752b8155113ca66e7db08af5f2f5f43ab993694e4774f1ec5bad42312d8",
                       "wnut17/emerging.dev.conll", 114_749),
            CorpusFile(_WNUT + "emerging.test.annotated",
                       "2aa79b764e56ec9264a1b30fdd9b70195bd00ff400b62edd8f399d5f13c178f0",
                       "wnut17/emerging.test.annotated", 192_425),
        ),
        splits={
            "train": SplitSource("wnut17/wnut17train.conll"),
            "dev": SplitSource("wnut17/emerging.dev.conll"),
            "test": SplitSource("wnut17/emerging.test.annotated"),
        },
        options={"token_column": 0, "tag_column": 1},
        license="CC BY 4.0",
        homepage="https://noisy-text.github.io/2017/emerging-rare-entities.html",
        citation=("Leon Derczynski, Eric Nichols, Marieke van Erp, Nut Limsopatham. 2017. Results of the "
                  "WNUT2017 Shared Task on Novel and Emerging Entity Recognition. W-NUT at EMNLP."),
        description="WNUT-17 emerging and rare entities: NER on noisy user-generated text, 6 types, BIO.",
        tag_scheme="BIO",
    ),
    CorpusEntry(
        name="UD_ENGLISH",
        task="sequence_labeling",
        label_type="upos",
        format="conllu",
        files=(
            CorpusFile(_UD + "en_ewt-ud-train.conllu",
                       "3fb78e2b55482c8ee00caa653af436c88c9e5bc9a73ce26e4ae3ddc79d2b7e7b",
                       "ud_english_ewt/en_ewt-ud-train.conllu", 14_203_025),
            CorpusFile(_UD + "en_ewt-ud-dev.conllu",
                       "531a54ff90d6ab12201c5a50c3e78e6ddac4de69abc4bce5d275d3cd29efe2b6",
                       "ud_english_ewt/en_ewt-ud-dev.conllu", 1_805_545),
            CorpusFile(_UD + "en_ewt-ud-test.conllu",
                       "e266e515a0a7547657ed3d90d9ba46487d6bd251f27ad4269d4e8a427c8555cd",
                       "ud_english_ewt/en_ewt-ud-test.conllu", 1_804_515),
        ),
        splits={
            "train": SplitSource("ud_english_ewt/en_ewt-ud-train.conllu"),
            "dev": SplitSource("ud_english_ewt/en_ewt-ud-dev.conllu"),
            "test": SplitSource("ud_english_ewt/en_ewt-ud-test.conllu"),
        },
        options={},
        label_columns=CONLLU_COLUMNS,
        default_label_column="upos",
        license="CC BY-SA 4.0",
        homepage="https://github.com/UniversalDependencies/UD_English-EWT",
        citation=("Natalia Silveira et al. 2014. A Gold Standard Dependency Corpus for English. LREC. "
                  "Universal Dependencies v2.16."),
        description="Universal Dependencies English Web Treebank v2.16 (CoNLL-U); the tag column is selectable.",
        tag_scheme="none",
    ),
    CorpusEntry(
        name="AG_NEWS",
        task="text_classification",
        label_type="topic",
        format="csv",
        files=(
            CorpusFile("https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/train.csv",
                       "76a0a2d2f92b286371fe4d4044640910a04a803fdd2538e0f3f29a5c6f6b672e",
                       "ag_news/train.csv", 29_470_338, "b1a00f826fdfbd249f79597b59e1dc12"),
            CorpusFile("https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/test.csv",
                       "521465c2428ed7f02f8d6db6ffdd4b5447c1c701962353eb2c40d548c3c85699",
                       "ag_news/test.csv", 1_857_427, "d52ea96a97a2d943681189a97654912d"),
        ),
        splits={"train": SplitSource("ag_news/train.csv"), "test": SplitSource("ag_news/test.csv")},
        # class index, title, description; no header. Text = title + " " + description (as HF and torchtext).
        options={"delimiter": ",", "header": False, "text_columns": ("1", "2"), "label_column": "0",
                 "quoting": "minimal",
                 "label_map": {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"}},
        license="no formal license; the AG corpus is provided for research and non-commercial use",
        homepage="http://groups.di.unipi.it/~gulli/AG_corpus_of_news_articles.html",
        citation=("Xiang Zhang, Junbo Zhao, Yann LeCun. 2015. Character-level Convolutional Networks for "
                  "Text Classification. NIPS."),
        description="AG's news topic classification: 4 classes, 120,000 train / 7,600 test (title + description).",
    ),
    CorpusEntry(
        name="NSMC",
        task="text_classification",
        label_type="sentiment",
        format="tsv",
        files=(
            CorpusFile("https://raw.githubusercontent.com/e9t/nsmc/master/ratings_train.txt",
                       "e03b7d14e9e41be8d464a28057cd25d7396c53e67aa7fd5f7e552c59b0ee2940",
                       "nsmc/ratings_train.txt", 14_628_807),
            CorpusFile("https://raw.githubusercontent.com/e9t/nsmc/master/ratings_test.txt",
                       "8ac9f64052f11dbf6ae0acb5e038f03d90a76f0eda7820cfb3a92d02edfcebda",
                       "nsmc/ratings_test.txt", 4_893_335),
        ),
        splits={"train": SplitSource("nsmc/ratings_train.txt"), "test": SplitSource("nsmc/ratings_test.txt")},
        # id<TAB>document<TAB>label with a header; one review per line, no quoting.
        options={"delimiter": "\t", "header": True, "text_columns": ("document",), "label_column": "label",
                 "quoting": "none", "label_map": {"0": "negative", "1": "positive"}},
        license="CC0 1.0 Universal",
        homepage="https://github.com/e9t/nsmc",
        citation="Lucy Park. 2016. Naver Sentiment Movie Corpus. https://github.com/e9t/nsmc",
        description="Naver Sentiment Movie Corpus: Korean movie reviews, binary sentiment, 150,000 train / 50,000 test.",
        tokenizer="morpheme",
    ),
    CorpusEntry(
        name="SST_2",
        task="text_classification",
        label_type="sentiment",
        format="tsv",
        files=(
            CorpusFile("https://dl.fbaipublicfiles.com/glue/data/SST-2.zip",
                       "d67e16fb55739c1b32cdce9877596db1c127dc322d93c082281f64057c16deaa",
                       "sst2/SST-2.zip", 7_439_277, "9f81648d4199384278b86e315dac217c"),
        ),
        # GLUE's test.tsv has no labels, so GLUE's labelled dev set (872) is our test split and
        # dev is carved from train (67,349), the usual practice for SST-2 without the GLUE server.
        splits={"train": SplitSource("sst2/SST-2.zip", "SST-2/train.tsv"),
                "test": SplitSource("sst2/SST-2.zip", "SST-2/dev.tsv")},
        options={"delimiter": "\t", "header": True, "text_columns": ("sentence",), "label_column": "label",
                 "quoting": "none", "label_map": {"0": "negative", "1": "positive"}},
        license="unknown (none stated by GLUE or the Stanford Sentiment Treebank; Hugging Face lists it as unknown)",
        homepage="https://nlp.stanford.edu/sentiment/",
        citation=("Richard Socher et al. 2013. Recursive Deep Models for Semantic Compositionality over a "
                  "Sentiment Treebank. EMNLP. Alex Wang et al. 2019. GLUE. ICLR."),
        description="Stanford Sentiment Treebank, binary (GLUE SST-2): train 67,349; GLUE dev (872) used as test.",
    ),
)

_BY_KEY: dict[str, CorpusEntry] = {e.name: e for e in _ENTRIES}


def _key(name: str) -> str:
    return name.strip().upper().replace("-", "_")


def corpus_names() -> list[str]:
    """The registered names, sorted."""
    return sorted(_BY_KEY)


def get_corpus(name: str, *, field_path: str = "corpus.name") -> CorpusEntry:
    """The entry for ``name`` (case-insensitive; ``-`` and ``_`` are the same: ``trec-6`` is TREC_6).

    Raises :class:`ConfigError` naming the known corpora when there is no such entry.
    """
    entry = _BY_KEY.get(_key(name))
    if entry is None:
        raise ConfigError([Problem(field_path, f"unknown corpus {name!r}; known corpora: "
                                               f"{', '.join(corpus_names())} (or give --uri and --format)")])
    return entry
