"""hf_ropeid.data: local files / datasets -> documents -> packed blocks and held-out windows."""

from __future__ import annotations

import json

import pytest

from hf_ropeid.data import (
    DataError,
    DataSource,
    build_training_blocks,
    load_documents,
    load_held_out,
    pack_tokens,
    tokenize_documents,
    window_tokens,
)

from conftest import byte_tokenizer

EOS = 257


@pytest.fixture
def corpus(tmp_path):
    """Five documents in four formats, each with a distinctive text."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha " * 30)
    (root / "sub" / "b.md").write_text("# bravo\n" + "bravo " * 25)
    (root / "c.jsonl").write_text(json.dumps({"text": "charlie " * 20}) + "\n" + json.dumps({"text": "delta " * 22}) + "\n")
    import datasets

    datasets.Dataset.from_dict({"text": ["echo " * 27]}).to_parquet(str(root / "e.parquet"))
    return root


def _doc_ids(text: str) -> list[int]:
    return list(text.encode())


def test_loads_every_format_from_a_folder(corpus):
    documents = load_documents(DataSource((str(corpus),)))
    texts = sorted(documents["text"])
    assert len(texts) == 5
    assert any(t.startswith("# bravo") for t in texts)  # found recursively, whole file is one document
    assert any(t.startswith("echo") for t in texts) and any(t.startswith("delta") for t in texts)


def test_packing_puts_eos_between_documents_and_loses_only_the_tail(corpus):
    tokenizer = byte_tokenizer()
    documents = load_documents(DataSource((str(corpus),)))
    tokenized = tokenize_documents(documents, tokenizer)
    blocks = pack_tokens(tokenized, 32, EOS)["input_ids"]
    stream = [t for text in documents["text"] for t in (*_doc_ids(text), EOS)]
    assert all(len(b) == 32 for b in blocks)
    assert [t for b in blocks for t in b] == stream[: len(blocks) * 32]
    assert len(stream) - len(blocks) * 32 < 32


def test_same_seed_same_blocks_other_seed_other_order(corpus):
    tokenizer = byte_tokenizer()
    source = DataSource((str(corpus),))
    first, _ = build_training_blocks(source, tokenizer, 16, seed=3)
    again, _ = build_training_blocks(source, tokenizer, 16, seed=3)
    other, _ = build_training_blocks(source, tokenizer, 16, seed=4)
    assert first["input_ids"] == again["input_ids"]
    assert first["input_ids"] != other["input_ids"]


def test_held_out_split_is_by_document(corpus):
    tokenizer = byte_tokenizer()
    blocks, held_out = build_training_blocks(DataSource((str(corpus),)), tokenizer, 16, seed=0, eval_fraction=0.4)
    assert len(held_out) == 2
    training_bytes = bytes(t for b in blocks["input_ids"] for t in b if t < 256).decode()
    for ids in held_out["input_ids"]:
        word = bytes(ids).decode().split()[-1]
        assert word not in training_bytes


def test_windows_stay_inside_documents(tmp_path):
    (tmp_path / "short.txt").write_text("x" * 10)
    (tmp_path / "long.txt").write_text("".join(chr(97 + i % 26) for i in range(100)))
    held_out = load_held_out(DataSource((str(tmp_path / "short.txt"), str(tmp_path / "long.txt"))), byte_tokenizer())
    windows = window_tokens(held_out, 30)
    assert len(windows) == 3 and windows[1] == _doc_ids("".join(chr(97 + i % 26) for i in range(30, 60)))
    assert len(window_tokens(held_out, 30, max_windows=2)) == 2
    with pytest.raises(DataError, match="shorter than the evaluation length 200"):
        window_tokens(held_out, 200)


def test_glob_and_explicit_files(corpus):
    documents = load_documents(DataSource((str(corpus / "*.txt"), str(corpus / "c.jsonl"))))
    assert len(documents) == 3


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: [str(root / "missing.txt")], "does not exist"),
        (lambda root: [str(root / "nothing-*.txt")], "matches no file"),
        (lambda root: [str(root / "emptydir")], "holds no files matching"),
        (lambda root: [str(root / "empty.txt")], "holds no text"),
        (lambda root: [str(root / "blank.jsonl")], "holds no text"),
        (lambda root: [str(root / "other.jsonl")], "no column 'text'"),
        (lambda root: [], "No data given"),
    ],
)
def test_unusable_data_raises_an_error_naming_it(tmp_path, make, message):
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.jsonl").write_text(json.dumps({"text": "  "}) + "\n")
    (tmp_path / "other.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataError, match=message):
        load_documents(DataSource(tuple(make(tmp_path))))


def test_too_little_text_for_one_sequence(tmp_path):
    (tmp_path / "a.txt").write_text("tiny")
    with pytest.raises(DataError, match="fewer than one sequence of seq_length=64"):
        build_training_blocks(DataSource((str(tmp_path),)), byte_tokenizer(), 64, seed=0)


def test_split_needs_two_documents(tmp_path):
    (tmp_path / "a.txt").write_text("only one document " * 10)
    with pytest.raises(DataError, match="at least 2 documents"):
        build_training_blocks(DataSource((str(tmp_path),)), byte_tokenizer(), 8, seed=0, eval_fraction=0.5)


def test_unknown_dataset_name_is_a_clear_error():
    with pytest.raises(DataError, match="Could not load dataset 'no-such-dataset-xyz'"):
        load_documents(DataSource(("no-such-dataset-xyz",)))


def test_code_files_in_a_folder_are_documents_like_everywhere_else(tmp_path):
    from hf_ropeid.documents import DOCUMENT_SUFFIXES
    from hf_ropeid.evaluation import read_documents

    (tmp_path / "module.py").write_text("def f():\n    return 1\n")
    (tmp_path / "notes.markdown").write_text("# notes\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    documents = load_documents(DataSource((str(tmp_path),)))
    assert sorted(documents["text"]) == ["# notes\n", "def f():\n    return 1\n"]
    assert sorted(read_documents([tmp_path])) == sorted(documents["text"])  # the evaluation reads the same files
    assert ".py" in DOCUMENT_SUFFIXES
