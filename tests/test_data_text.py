"""Tokenizer, vocabulary and the Kim (2014) sentence sets on tiny files in their standard formats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chrysalis.data import CorruptDataError, DataNotFoundError, clear_cache, get_dataset
from chrysalis.data.text import OOV, PAD, build_vocab, encode, tokenize


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def test_tokenize_like_kim():
    assert tokenize("It's NOT bad, isn't it?!") == [
        "it",
        "'s",
        "not",
        "bad",
        ",",
        "is",
        "n't",
        "it",
        "?",
        "!",
    ]
    assert tokenize("We've got (3) cats & dogs... they'll do") == [
        "we", "'ve", "got", "(", "3", ")", "cats", "dogs", "they", "'ll", "do",
    ]  # fmt: skip
    assert tokenize("  ") == []


def test_vocab_order_min_freq_max_vocab_and_encode():
    docs = [["b", "a", "c"], ["a", "b"], ["a", "d"]]
    assert build_vocab(docs) == ("<pad>", "<unk>", "a", "b", "c", "d")  # by count, ties alphabetical
    assert build_vocab(docs, min_freq=2) == ("<pad>", "<unk>", "a", "b")
    assert build_vocab(docs, max_vocab=3) == ("<pad>", "<unk>", "a")
    ids = encode([["a", "zzz", "b"], ["d", "d", "d", "d", "d"]], build_vocab(docs), max_len=4)
    assert ids.tolist() == [[2, OOV, 3, PAD], [5, 5, 5, 5]]


def write_lines(path: Path, lines: list[str], encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))


BINARY = {
    "mr": ("rt-polarity.neg", "rt-polarity.pos"),
    "subj": ("plot.tok.gt9.5000", "quote.tok.gt9.5000"),
    "cr": ("custrev.neg", "custrev.pos"),
    "mpqa": ("mpqa.neg", "mpqa.pos"),
}


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_sentence_sets(tmp_path, name):
    neg, pos = BINARY[name]
    write_lines(tmp_path / name / neg, [f"a dull caf\xe9 film number {i} ." for i in range(20)], "latin-1")
    write_lines(tmp_path / name / pos, [f"a lovely film number {i} !" for i in range(20)], "latin-1")
    splits = {s: get_dataset(name, s, root=tmp_path) for s in ("train", "val", "test")}
    # 10% held-out test (4), then 10% of the remaining 36 for val (4), stratified
    assert [len(splits[s]) for s in ("train", "val", "test")] == [32, 4, 4]
    assert splits["test"].targets.tolist().count(1) == 2
    assert sorted(torch.cat([d.indices for d in splits.values()]).tolist()) == list(range(40))
    train = splits["train"]
    assert train.inputs.shape == (32, 64) and train.inputs.dtype == torch.int64
    assert train.info.kind == "text" and train.info.num_classes == 2 and train.info.input_shape == (64,)
    assert train.info.vocab_size == len(train.vocab)
    # the latin-1 byte decodes (no UnicodeDecodeError) and, as in Kim's clean_str, non-ASCII
    # characters are dropped: "caf\xe9" -> "caf"
    assert "caf" in train.vocab and not any("\xe9" in w for w in train.vocab)
    # labels follow the files: "lovely" only in the positive file
    lovely = train.vocab.index("lovely")
    has_lovely = (train.inputs == lovely).any(1)
    assert torch.equal(has_lovely, train.targets == 1)


def test_sst_uses_official_splits_and_train_only_vocab(tmp_path):
    root = tmp_path / "sst"
    write_lines(
        root / "stsa.binary.train",
        [f"{i % 2} common words here {'good' if i % 2 else 'bad'}" for i in range(10)],
    )
    write_lines(root / "stsa.binary.dev", ["1 common devonly", "0 common"])
    write_lines(root / "stsa.binary.test", ["1 common zebra good", "0 bad"])
    train = get_dataset("sst2", "train", root=tmp_path)
    val = get_dataset("sst2", "val", root=tmp_path)
    test = get_dataset("sst2", "test", root=tmp_path)
    assert (len(train), len(val), len(test)) == (10, 2, 2)
    assert (
        train.vocab == val.vocab == test.vocab and "zebra" not in train.vocab and "devonly" not in train.vocab
    )
    v = {w: i for i, w in enumerate(train.vocab)}
    assert test.inputs[0, :4].tolist() == [v["common"], OOV, v["good"], PAD]  # zebra: only in test -> OOV
    assert val.inputs[0, :2].tolist() == [v["common"], OOV]
    assert test.targets.tolist() == [1, 0]
    # max_len truncates and pads
    short = get_dataset("sst2", "train", root=tmp_path, max_len=2)
    assert short.inputs.shape == (10, 2) and short.info.input_shape == (2,)


def test_sst1_five_classes_and_corrupt_line(tmp_path):
    for part in ("train", "dev", "test"):
        write_lines(tmp_path / f"stsa.fine.{part}", [f"{i % 5} sentence {i}" for i in range(10)])
    ds = get_dataset("sst1", "train", root=tmp_path)
    assert ds.info.num_classes == 5 and ds.info.class_names[0] == "very negative"
    assert ds.targets.tolist() == [i % 5 for i in range(10)]
    write_lines(tmp_path / "stsa.fine.dev", ["3 fine", "7 out of range"])
    clear_cache()
    with pytest.raises(CorruptDataError, match=r"stsa\.fine\.dev:2"):
        get_dataset("sst1", "train", root=tmp_path)


def test_trec_coarse_labels(tmp_path):
    write_lines(
        tmp_path / "trec" / "TREC.train.all",
        [
            f"{lab}:sub What is thing {i} ?"
            for i, lab in enumerate(["DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"] * 5)
        ],
        "latin-1",
    )
    write_lines(
        tmp_path / "trec" / "TREC.test.all", ["NUM:date When did it happen ?", "LOC:city Where is Paris ?"]
    )
    test = get_dataset("trec", "test", root=tmp_path)
    assert test.info.num_classes == 6 and test.targets.tolist() == [5, 4]
    assert test.info.class_names == ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
    assert (
        len(get_dataset("trec", "train", root=tmp_path)) + len(get_dataset("trec", "val", root=tmp_path))
        == 30
    )
    write_lines(tmp_path / "trec" / "TREC.test.all", ["FOO:bar Who ?"])
    clear_cache()
    with pytest.raises(CorruptDataError, match="LABEL:sub"):
        get_dataset("trec", "test", root=tmp_path)


def test_missing_sentence_files_message(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        get_dataset("mr", "train", root=tmp_path)
    msg = str(err.value)
    assert "rt-polarity.neg" in msg and str(tmp_path / "mr") in msg and "docs/DATA.md" in msg


def test_vocab_options_recorded_and_applied(tmp_path):
    write_lines(tmp_path / "mpqa.neg", ["bad bad rare1"] * 1 + ["bad"] * 19)
    write_lines(tmp_path / "mpqa.pos", ["good good rare2"] * 1 + ["good"] * 19)
    full = get_dataset("mpqa", "train", root=tmp_path)
    pruned = get_dataset("mpqa", "train", root=tmp_path, min_freq=2, max_vocab=3)
    assert pruned.info.options["min_freq"] == 2 and pruned.info.options["max_vocab"] == 3
    assert len(pruned.vocab) == 3 and pruned.info.vocab_size == 3 and len(full.vocab) > 3
    assert int(pruned.inputs.max()) <= 2
