"""Bad inputs raise the documented classes, with messages that name the actual type or value.

Keys: ``TypeError`` for a wrong type, ``ValueError`` for a malformed value.
Names, shapes, ``max_shape`` and values: ``SchemaError``. Text that cannot
be stored as UTF-8 (a lone surrogate) is a ``ValueError`` naming it, never a
raw ``UnicodeEncodeError``; nothing is written in any of these cases.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tensorcask as tc
from tensorcask.cli import main

SURROGATE = "bad\ud800text"


def _commit(repo: tc.Repository) -> str:
    with repo.checkout(write=True) as co:
        co.add_str_column("s")["k"] = "v"
        return co.commit("first")


# -- keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "type_name"),
    [(1.5, "float"), (None, "NoneType"), (b"k", "bytes"), ((1,), "tuple"), ([1], "list")],
)
def test_key_of_wrong_type_names_its_type(repo, key, type_name):
    with repo.checkout(write=True) as co:
        col = co.add_str_column("s")
        for attempt in (
            lambda: col.__setitem__(key, "v"),
            lambda: col.update({key: "v"} if not isinstance(key, list) else [key], ["v"]),
            lambda: col[key],
            lambda: col.digest(key),
        ):
            with pytest.raises(TypeError) as info:
                attempt()
            message = str(info.value)
            assert f"has type {type_name}" in message
            assert "(not bool)" not in message
        assert len(col) == 0


def test_bool_key_message_says_why(repo):
    with repo.checkout(write=True) as co:
        col = co.add_str_column("s")
        with pytest.raises(TypeError, match=r"has type bool.*True and 1"):
            col[True] = "v"
        with pytest.raises(TypeError, match="not bool"):
            col.update(np.array([True]), ["v"])


def test_float_key_suggests_int(repo):
    with repo.checkout(write=True) as co:
        col = co.add_str_column("s")
        with pytest.raises(TypeError, match=r"int\(2\.0\)"):
            col[2.0] = "v"
        with pytest.raises(TypeError, match="has type float"):
            col.update(np.array([1.0, 2.0]), ["a", "b"])
        assert len(col) == 0


def test_surrogate_key_is_a_value_error_naming_it(repo):
    with repo.checkout(write=True) as co:
        col = co.add_str_column("s")
        for attempt in (
            lambda: col.__setitem__(SURROGATE, "v"),
            lambda: col.update({"fine": "v", SURROGATE: "v"}),
            lambda: col[SURROGATE],
        ):
            with pytest.raises(ValueError, match="lone surrogate") as info:
                attempt()
            assert not isinstance(info.value, UnicodeError)
            assert repr(SURROGATE) in str(info.value)
        assert SURROGATE not in col
        assert len(col) == 0


# -- values and names --------------------------------------------------------------------------


def test_surrogate_in_a_str_value_is_a_schema_error(repo):
    with repo.checkout(write=True) as co:
        col = co.add_str_column("s")
        with pytest.raises(tc.SchemaError, match="lone surrogate") as info:
            col["k"] = SURROGATE
        assert "column 's', key 'k'" in str(info.value)
        with pytest.raises(tc.SchemaError, match="lone surrogate"):
            col.update(["a", "b"], ["fine", SURROGATE])
        assert len(col) == 0 and not co.diff().columns


@pytest.mark.parametrize(
    "add",
    [
        lambda co, name: co.add_str_column(name),
        lambda co, name: co.add_bytes_column(name),
        lambda co, name: co.add_ndarray_column(name, shape=(2,), dtype="int64"),
    ],
)
def test_bad_column_names_are_schema_errors(repo, add):
    with repo.checkout(write=True) as co:
        for name in (SURROGATE, "", "a/b", "nl\n", "x" * 256):
            with pytest.raises(tc.SchemaError) as info:
                add(co, name)
            assert not isinstance(info.value, UnicodeError)
        with pytest.raises(TypeError, match="int"):
            add(co, 5)
        assert list(co.columns) == []


def test_surrogate_in_a_commit_message(repo):
    with repo.checkout(write=True) as co:
        co.add_str_column("s")["k"] = "v"
        with pytest.raises(ValueError, match=r"commit message.*lone surrogate") as info:
            co.commit(SURROGATE)
        assert not isinstance(info.value, UnicodeError)
        with pytest.raises(TypeError, match="not bytes"):
            co.commit(b"message")  # type: ignore[arg-type]
        assert repo.branches == {}
        commit = co.commit("fine")  # the staged changes survived
    assert repo.log()[0].id == commit
    with repo.checkout() as rc:
        assert rc["s"]["k"] == "v"


def test_surrogate_in_a_merge_message(repo):
    base = _commit(repo)
    repo.create_branch("dev")
    with repo.checkout(write=True, branch="dev") as co:
        co["s"]["d"] = "dev"
        co.commit("dev")
    with repo.checkout(write=True, branch="main") as co:
        co["s"]["m"] = "main"
        main_head = co.commit("main")
    with pytest.raises(ValueError, match=r"merge message.*lone surrogate"):
        repo.merge("dev", into="main", message=SURROGATE)
    with pytest.raises(TypeError, match="merge message"):
        repo.merge("dev", into="main", message=3)  # type: ignore[arg-type]
    assert repo.branches["main"] == main_head and base in {c.id for c in repo.log()}


# -- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"shape": (None,), "max_shape": (-5,)}, "-5"),
        ({"shape": (None, 3), "max_shape": (-1, 3)}, "-1"),
        ({"shape": (None,), "max_shape": (2.5,)}, "float"),
        ({"shape": (None,), "max_shape": ("3",)}, "str"),
        ({"shape": (None,), "max_shape": (None,)}, "None"),
        ({"shape": (None,), "max_shape": (True,)}, "bool"),
        ({"shape": (None,), "max_shape": 1.5}, "float"),
        ({"shape": (-3,)}, "-3"),
        ({"shape": (2.0, 3)}, "float"),
        ({"shape": ("28",)}, "str"),
        ({"shape": 28.0}, "float"),
        ({"shape": (True,)}, "bool"),
    ],
)
def test_bad_shape_entries_are_schema_errors(repo, kwargs, named):
    with repo.checkout(write=True) as co:
        with pytest.raises(tc.SchemaError) as info:
            co.add_ndarray_column("x", dtype="float32", **kwargs)
        assert named in str(info.value)
        assert "x" not in co


@pytest.mark.parametrize(
    ("kwargs", "dtype"),
    [
        ({"shape": (2**31, 2**31)}, "uint8"),
        ({"shape": (2**20, 2**20)}, "uint16"),
        ({"shape": (None, 2**31), "max_shape": (2**31, 2**31)}, "uint8"),
        ({"shape": (None, 2**41)}, "uint8"),  # the fixed part alone is too big
    ],
)
def test_absurd_sample_sizes_are_refused(repo, kwargs, dtype):
    with repo.checkout(write=True) as co:
        with pytest.raises(tc.SchemaError, match=r"at most 1099511627776 bytes"):
            co.add_ndarray_column("huge", dtype=dtype, **kwargs)
        assert "huge" not in co


def test_largest_sample_size_is_accepted(repo):
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column("big", shape=(2**20, 2**20), dtype="uint8")
        assert col.shape == (2**20, 2**20)
        var = co.add_ndarray_column("var", shape=(None,), dtype="uint8", max_shape=4)
        assert var.max_shape == (4,)
        var[0] = np.zeros(4, dtype="uint8")
        with pytest.raises(tc.SchemaError, match="max_shape"):
            var[1] = np.zeros(5, dtype="uint8")


def test_numpy_ints_in_shapes_are_fine(repo):
    with repo.checkout(write=True) as co:
        col = co.add_ndarray_column(
            "x", shape=(None, np.int64(3)), dtype="int8", max_shape=(np.int32(4), 3)
        )
        assert col.shape == (None, 3) and col.max_shape == (4, 3)


# -- log, init ---------------------------------------------------------------------------------


def test_log_limit_must_be_a_non_negative_int(repo):
    _commit(repo)
    with pytest.raises(ValueError, match="-1"):
        repo.log(limit=-1)
    for bad in (1.5, True, "2"):
        with pytest.raises(TypeError, match=type(bad).__name__):
            repo.log(limit=bad)  # type: ignore[arg-type]
    assert repo.log(limit=0) == []
    assert len(repo.log(limit=np.int64(1))) == 1  # type: ignore[arg-type]


def test_init_on_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("not a directory")
    with pytest.raises(tc.CaskError, match="is a file") as info:
        tc.init(target)
    assert not isinstance(info.value, NotADirectoryError)
    assert target.read_text() == "not a directory"
    with pytest.raises(tc.CaskError, match="in the way"):
        tc.init(target / "below")
    assert target.read_text() == "not a directory"


def test_cli_init_on_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    code = main(["init", str(target)])
    lines = capsys.readouterr().err.splitlines()
    assert code == 1 and len(lines) == 1 and "is a file" in lines[0]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"user_name": "Ada\nEvil: header"}, ValueError),
        ({"user_name": "nul\x00"}, ValueError),
        ({"user_email": "ada@example.org\r"}, ValueError),
        ({"user_name": SURROGATE}, ValueError),
        ({"user_email": SURROGATE}, ValueError),
        ({"user_name": 42}, TypeError),
    ],
)
def test_init_refuses_bad_identities(tmp_path: Path, kwargs, error):
    target = tmp_path / "repo"
    with pytest.raises(error, match=r"user_name|user_email") as info:
        tc.init(target, **kwargs)
    assert not isinstance(info.value, UnicodeError)
    assert not target.exists()


def test_identity_survives_a_commit(tmp_path):
    with tc.init(tmp_path / "r", user_name="Zoë Ünïcode", user_email="z@ex.org") as repo:
        _commit(repo)
        assert repo.log()[0].author == "Zoë Ünïcode"
