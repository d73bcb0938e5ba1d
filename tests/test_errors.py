"""The exception tree's behaviour beyond its classes (see also test_repository)."""

from __future__ import annotations

import pickle

import tensorcask as tc


def test_corruption_error_rebuilt_from_its_message_names_column_key_and_path() -> None:
    original = tc.CorruptionError(
        "column 'cap tions', key 'k\\'1': stored bytes in /r/data/lmdb fail their checksum",
        column="cap tions",
        key="k'1",
        path="/r/data/lmdb",
    )
    # what DataLoader does with an error raised in a worker: a new one from the text
    rebuilt = tc.CorruptionError(f"Caught CorruptionError in worker 0.\nOriginal {original}")
    assert (rebuilt.column, rebuilt.key, rebuilt.path) == ("cap tions", "k'1", "/r/data/lmdb")
    int_key = tc.CorruptionError("column 'images', key 13 of commit ab: stored bytes in /x fail")
    assert (int_key.column, int_key.key, int_key.path) == ("images", 13, "/x")
    plain = tc.CorruptionError("repository /r failed verification")
    assert (plain.column, plain.key, plain.path) == (None, None, None)


def test_corruption_error_pickles_with_its_fields() -> None:
    error = tc.CorruptionError("column 'x', key 1: bad", column="x", key=1, path="/p")
    again = pickle.loads(pickle.dumps(error))
    assert (again.column, again.key, str(again)) == ("x", 1, "column 'x', key 1: bad")
