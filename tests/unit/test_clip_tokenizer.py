"""CLIP tokenizer on the real BPE vocabulary: OpenAI CLIP's ids."""

from __future__ import annotations

import ast
import gzip
from pathlib import Path

import pytest

from clipmodel import tokenizer, vocab
from clipmodel.tokenizer import CONTEXT_LENGTH, END_OF_TEXT, START_OF_TEXT, ClipTokenizer


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return ClipTokenizer(vocab.path())


# Ids as OpenAI's clip.tokenize gives them (cross-checked against the vocabulary below).
KNOWN = {
    "a photo of a cat": [START_OF_TEXT, 320, 1125, 539, 320, 2368, END_OF_TEXT],
    "a photo of a dog": [START_OF_TEXT, 320, 1125, 539, 320, 1929, END_OF_TEXT],
    "A  Photo of a CAT": [START_OF_TEXT, 320, 1125, 539, 320, 2368, END_OF_TEXT],
}


@pytest.mark.parametrize("text", sorted(KNOWN))
def test_known_ids(tok: ClipTokenizer, text: str) -> None:
    assert tok.encode_batch([text])[0].tolist() == KNOWN[text]


def test_ids_are_the_vocabulary_entries(tok: ClipTokenizer) -> None:
    # In CLIP's vocabulary, ids 0..255 are the bytes, 256..511 the bytes ending a word, then
    # one id per merge in file order: "cat</w>" is the merge on line 2368 - 512 + 1.
    lines = gzip.decompress(vocab.path().read_bytes()).decode().split("\n")
    assert "".join(lines[2368 - 512 + 1].split()) == "cat</w>"
    assert "".join(lines[1125 - 512 + 1].split()) == "photo</w>"
    assert tok.decode([START_OF_TEXT, 320, 1125, 539, 320, 2368, END_OF_TEXT]) == "a photo of a cat"


def test_cleaning_matches_clip(tok: ClipTokenizer) -> None:
    assert tok.encode("it’s  &amp; Café") == tok.encode("it's & café")  # ftfy, HTML, case
    assert tok.decode(tok.encode("naïve résumé 42")) == "naïve résumé 4 2"  # digits one by one


def test_special_spellings_in_text_are_plain_text(tok: ClipTokenizer) -> None:
    ids = tok.encode_batch(["hello <|endoftext|> world"])[0].tolist()
    assert ids[0] == START_OF_TEXT and ids[-1] == END_OF_TEXT
    assert END_OF_TEXT not in ids[1:-1] and START_OF_TEXT not in ids[1:-1]


def test_batch_pads_with_zero_to_longest_row(tok: ClipTokenizer) -> None:
    ids = tok.encode_batch(["a", "a photo of a cat"])
    assert ids.shape == (2, 7) and ids.dtype.name == "int64"
    assert ids[0].tolist() == [START_OF_TEXT, 320, END_OF_TEXT, 0, 0, 0, 0]


def test_long_text_truncated_to_context_with_end_token_last(tok: ClipTokenizer) -> None:
    ids = tok.encode_batch(["cat " * 500])
    assert ids.shape == (1, CONTEXT_LENGTH)
    assert ids[0, 0] == START_OF_TEXT and ids[0, -1] == END_OF_TEXT and set(ids[0, 1:-1].tolist()) == {2368}


def test_hugging_face_merges_file_gives_same_ids(tok: ClipTokenizer, tmp_path: Path) -> None:
    merges = tmp_path / "merges.txt"
    merges.write_text(gzip.decompress(vocab.path().read_bytes()).decode())
    assert ClipTokenizer(merges).encode("a red bicycle by a wall") == tok.encode("a red bicycle by a wall")


def test_not_a_vocabulary_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "merges.txt"
    bad.write_text("#version\na b\n")
    with pytest.raises(ValueError, match="not a CLIP BPE merges file"):
        ClipTokenizer(bad)


def test_missing_vocabulary_says_how_to_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VS_CACHE_DIR", str(tmp_path))
    with pytest.raises(vocab.VocabMissingError, match=r"python -m clipmodel\.vocab"):
        vocab.path()
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / vocab.FILENAME).write_bytes(b"not it")
    with pytest.raises(vocab.VocabMissingError, match="not the pinned"):
        vocab.path()


def test_module_is_self_contained() -> None:
    # The export copies tokenizer.py beside the Triton model: it must not import this package.
    tree = ast.parse(Path(tokenizer.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "gzip", "html", "functools", "pathlib", "ftfy", "numpy", "numpy.typing", "regex"}
