"""Streaming datasets: the torch and tf.data loaders given a remote's URL read samples
straight from object storage (a real S3-protocol server, moto through s3fs, and a
``file://`` folder), and yield exactly what the same loaders yield over the local
repository that was pushed: every column kind, pinned commits, shuffling, resuming,
DataLoader workers under fork and spawn sharing one cache folder, a real two-rank gloo
group, pickling, and the errors a user meets.

The cache bound, damaged caches and remotes, failing servers and request counts are in
``test_streaming_cache.py``.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_remote import IDENTITY, _first_commit, _image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import tensorcask as tc  # noqa: E402
from tensorcask.loaders.plan import epoch_order  # noqa: E402
from tensorcask.loaders.stream import StreamSource  # noqa: E402
from tensorcask.loaders.torch import (  # noqa: E402
    RepoDataset,
    RepoIterableDataset,
    repo_dataset,
    repo_iterable_dataset,
)

# Datasets over every column of dev leave out its one extra name (and say so: see
# test_columns_with_different_keys_warn_naming_what_is_left_out).
pytestmark = pytest.mark.filterwarnings("ignore:the columns hold different keys:UserWarning")

N = 40  # samples of the first commit (keys 0..N-1), as in test_remote
COLUMNS = ["images", "labels", "names", "blobs", "seqs", "feats", "codes"]  # every kind
LABEL0 = 1000  # labels[k] == LABEL0 + k


# -- the pushed repository: a local copy and two remotes ------------------------------


@dataclass
class Pushed:
    """A local repository and a remote it was pushed to."""

    src: Path
    url: str
    options: dict[str, Any] = field(default_factory=dict)
    first: str = ""  # the commit of main (tag v1)
    dev: str = ""  # the head of branch dev (one commit after first)

    def dataset(self, columns: list[str] = COLUMNS, **kwargs: Any) -> RepoDataset:
        return repo_dataset(self.url, columns, storage_options=self.options or None, **kwargs)

    def iterable(self, columns: list[str] = COLUMNS, **kwargs: Any) -> RepoIterableDataset:
        return repo_iterable_dataset(
            self.url, columns, storage_options=self.options or None, **kwargs
        )


def _push_source(src: Path) -> tuple[str, str]:
    """Build the source repository: main (tag v1) and dev one commit further; ids."""
    with tc.init(src, **IDENTITY) as repo:
        with repo.checkout(write=True) as co:
            _first_commit(co, range(N))
            first = co.commit("first")
        repo.create_tag("v1", first)
        repo.create_branch("dev", first)
        with repo.checkout(write=True, branch="dev") as co:
            co["images"][3] = _image(300)
            co["names"][N] = "only on dev"
            dev = co.commit("dev work")
        with repo.checkout(write=True, branch="main"):
            pass  # main is the current branch again
    return first, dev


def _push(src: Path, url: str, options: dict[str, Any]) -> None:
    with tc.Repository(src) as repo:
        repo.add_remote("origin", url, **options)
        repo.push("origin", "main")
        repo.push("origin", "dev")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    src = tmp_path_factory.mktemp("streaming") / "src"
    first, dev = _push_source(src)
    return src, first, dev


@pytest.fixture(scope="module", params=["file", "s3"])
def pushed(
    request: pytest.FixtureRequest,
    source: tuple[Path, str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Pushed:
    """The source repository pushed (main, dev, v1) to a file:// folder or an S3 bucket."""
    src, first, dev = source
    if request.param == "file":
        url, options = (tmp_path_factory.mktemp("remote") / "r").as_uri(), {}
    else:
        server = request.getfixturevalue("s3_server")
        url, options = f"s3://{server.new_bucket()}/repo", server.storage_options
    # Each remote gets its own copy of the source (a repository remembers its remotes).
    copy = tmp_path_factory.mktemp("src") / "src"
    shutil.copytree(src, copy)
    _push(copy, url, options)
    return Pushed(copy, url, options, first, dev)


@pytest.fixture(scope="module")
def s3_pushed(source: tuple[Path, str, str], request: pytest.FixtureRequest) -> Pushed:
    """The source repository pushed to an S3 bucket of the moto server."""
    src, first, dev = source
    server = request.getfixturevalue("s3_server")
    url = f"s3://{server.new_bucket()}/repo"
    copy = Path(str(src) + "-s3")
    shutil.copytree(src, copy)
    _push(copy, url, server.storage_options)
    return Pushed(copy, url, server.storage_options, first, dev)


# -- comparing samples -------------------------------------------------------------


def _raw(value: Any) -> Any:
    """A sample's column value as plain, comparable data (dtype, shape and bytes)."""
    if isinstance(value, torch.Tensor):
        array = value.numpy()
        return ("tensor", array.dtype.str, array.shape, array.tobytes())
    assert isinstance(value, str | bytes), type(value)
    return (type(value).__name__, value)


def _raw_sample(sample: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(_raw(v) for v in sample)


def _raw_batch(batch: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """A DataLoader ``collate_fn`` (module level: picklable under spawn)."""
    return [_raw_sample(s) for s in batch]


def _all(ds: RepoDataset) -> list[tuple[Any, ...]]:
    return _raw_batch(ds.__getitems__(list(range(len(ds)))))


def _label(sample: tuple[Any, ...], at: int = 1) -> int:
    return int(sample[at]) - LABEL0


# -- 1. map-style: the same samples as the local dataset ----------------------------


@pytest.mark.parametrize("cached", [False, True])
def test_map_dataset_equals_the_local_one(pushed: Pushed, cached: bool, tmp_path: Path) -> None:
    local = repo_dataset(pushed.src, COLUMNS, commit="main")
    cache = tmp_path / "cache" if cached else None
    ds = pushed.dataset(cache_dir=cache)
    assert isinstance(ds, RepoDataset) and isinstance(ds.source, StreamSource)
    assert ds.commit == local.commit == pushed.first
    assert ds.columns == COLUMNS and len(ds) == len(local) == N
    expected = _all(local)
    assert _all(ds) == expected  # one batched read of every sample
    assert [_raw_sample(ds[i]) for i in range(N)] == expected  # and one at a time
    assert _raw_sample(ds[-1]) == expected[-1]
    shuffled = np.random.default_rng(0).permutation(N).tolist()
    assert _raw_batch(ds.__getitems__(shuffled)) == [expected[i] for i in shuffled]
    assert [ds.key(i) for i in range(N)] == [local.key(i) for i in range(N)]
    # The kinds came through as they were written.
    image, label, name, blob, seq, feat, code = ds[6]
    assert image.dtype == torch.uint8 and np.array_equal(image.numpy(), _image(6))
    assert label.dtype == torch.int64 and label.shape == () and int(label) == LABEL0 + 6
    assert name == "name-6-é" and type(name) is str
    assert blob == bytes([6, 0, 255]) * 2 and type(blob) is bytes
    assert seq.dtype == torch.int32 and seq.tolist() == list(range(6, 13))
    assert feat.dtype == torch.float32 and feat.tolist() == [6.0, 2.0, -6.0]
    assert code.dtype == torch.uint16 and code.tolist() == [6, 59994]
    # Column order is the order named; keys= restricts and orders, as locally.
    picked = pushed.dataset(["names", "labels"], keys=[9, 3], cache_dir=cache)
    assert [(s[0], int(s[1])) for s in picked.__getitems__([0, 1])] == [
        ("name-9-é", LABEL0 + 9),
        ("name-3-é", LABEL0 + 3),
    ]
    with pytest.raises(IndexError):
        ds[N]
    if cached:
        assert list((tmp_path / "cache" / "samples").rglob("*.*-*"))  # pieces were cached
        again = pushed.dataset(cache_dir=cache)
        assert _all(again) == expected
        assert again.source.fetcher.requests == 0  # all from the cache folder


def test_commit_may_be_a_branch_a_tag_an_id_or_a_prefix(pushed: Pushed) -> None:
    local_first = _all(repo_dataset(pushed.src, COLUMNS, commit=pushed.first))
    local_dev = _all(repo_dataset(pushed.src, COLUMNS, commit=pushed.dev))
    assert local_first != local_dev
    for ref, commit, expected in [
        ("main", pushed.first, local_first),
        ("v1", pushed.first, local_first),
        (pushed.first, pushed.first, local_first),
        (pushed.first.upper(), pushed.first, local_first),
        (pushed.first[:10], pushed.first, local_first),
        ("dev", pushed.dev, local_dev),
        (pushed.dev, pushed.dev, local_dev),
    ]:
        ds = pushed.dataset(commit=ref)
        assert ds.commit == commit, ref
        assert _all(ds) == expected, ref
    dev_names = pushed.dataset(["names"], commit="dev")
    assert len(dev_names) == N + 1 and dev_names[N] == ("only on dev",)


def test_later_pushes_do_not_change_a_built_dataset(tmp_path: Path) -> None:
    src = tmp_path / "src"
    first, _ = _push_source(src)
    url = (tmp_path / "remote").as_uri()
    _push(src, url, {})
    cache = tmp_path / "cache"
    by_default = repo_dataset(url, COLUMNS)
    cached = repo_dataset(url, COLUMNS, cache_dir=cache)
    tagged = repo_dataset(url, ["images", "labels"], commit="v1")
    iterable = repo_iterable_dataset(url, ["labels"], shuffle=True, seed=1)
    expected = _all(by_default)
    with tc.Repository(src) as repo:
        with repo.checkout(write=True) as co:
            co["images"][0] = _image(77)
            co["images"][N] = _image(78)
            co["labels"][N] = np.int64(-1)
            co["names"][N] = "new"
            second = co.commit("second")
        repo.push("origin", "main")
        repo.create_tag("v1-moved", second)
        repo.push("origin", "main")
    for ds in (by_default, cached, pickle.loads(pickle.dumps(cached))):
        assert ds.commit == first and len(ds) == N
        assert _all(ds) == expected
    assert tagged.commit == first and np.array_equal(tagged[0][0].numpy(), _image(0))
    assert iterable.commit == first
    assert sorted(_label(s, 0) for s in iterable) == list(range(N))
    # A dataset built now reads the new head.
    fresh = repo_dataset(url, ["images", "labels"], cache_dir=cache)
    assert fresh.commit == second and len(fresh) == N + 1
    assert np.array_equal(fresh[0][0].numpy(), _image(77)) and int(fresh[N][1]) == -1


# -- 2. iterable: the same order as locally, resumable ------------------------------


def _keys_of(it: RepoIterableDataset) -> list[int]:
    return [_label(s) for s in it]


@pytest.mark.parametrize("cached", [False, True])
def test_iterable_dataset_yields_what_the_local_one_yields(
    pushed: Pushed, cached: bool, tmp_path: Path
) -> None:
    cache = tmp_path / "cache" if cached else None
    settings: dict[str, Any] = {"shuffle": True, "seed": 3, "batch_size": 4}
    for epoch in (0, 1, 5):
        local = repo_iterable_dataset(pushed.src, COLUMNS, **settings)
        remote = pushed.iterable(cache_dir=cache, **settings)
        assert remote.commit == local.commit
        local.set_epoch(epoch)
        remote.set_epoch(epoch)
        expected = [_raw_sample(s) for s in local]
        assert [_raw_sample(s) for s in remote] == expected
        keys = [_label(s) for s in remote]
        assert keys == epoch_order(N, seed=3, epoch=epoch, shuffle=True).tolist()
    plain = pushed.iterable(["labels", "names"], cache_dir=cache)
    assert [(_label(s, 0), s[1]) for s in plain] == [(k, f"name-{k}-é") for k in range(N)]
    # Ranks split alike.
    for rank in range(3):
        split = {"rank": rank, "world_size": 3, "even_ranks": "none", **settings}
        local = repo_iterable_dataset(pushed.src, ["labels"], **split)
        remote = pushed.iterable(["images", "labels"], cache_dir=cache, **split)
        assert _keys_of(remote) == [_label(s, 0) for s in local]


@pytest.mark.parametrize("stop", [1, 13])
def test_iterable_resumes_mid_epoch_with_exactly_the_rest(
    pushed: Pushed, stop: int, tmp_path: Path
) -> None:
    settings: dict[str, Any] = {"shuffle": True, "seed": 21, "batch_size": 4}
    local = repo_iterable_dataset(pushed.src, COLUMNS, **settings)
    local.set_epoch(2)
    epoch = [_raw_sample(s) for s in local]

    first = pushed.iterable(cache_dir=tmp_path / "cache", **settings)
    first.set_epoch(2)
    iterator = iter(first)
    consumed = [_raw_sample(next(iterator)) for _ in range(stop)]
    state = json.loads(json.dumps(first.state_dict()))  # plain values
    assert state["commit"] == pushed.first and state["position"] == stop and state["epoch"] == 2

    resumed = pushed.iterable(**settings)  # another process: no cache folder this time
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    rest = [_raw_sample(s) for s in resumed]
    assert consumed + rest == epoch
    # A state taken over the local repository resumes the stream (the same commit) ...
    mirror = repo_iterable_dataset(pushed.src, COLUMNS, **settings)
    mirror.set_epoch(2)
    mirror_it = iter(mirror)
    for _ in range(stop):
        next(mirror_it)
    streamed = pushed.iterable(**settings)
    streamed.load_state_dict(mirror.state_dict())
    assert [_raw_sample(s) for s in streamed] == epoch[stop:]
    # ... and one of another commit does not load.
    other = pushed.iterable(commit="dev", **settings)
    with pytest.raises(ValueError, match="commit"):
        other.load_state_dict(state)


# -- 3. tf.data ----------------------------------------------------------------------


def _tf_value(t: Any) -> tuple[Any, ...]:
    value = t.numpy()  # bytes for tf.string, else an array
    return (t.dtype.name, tuple(t.shape), value if isinstance(value, bytes) else value.tobytes())


def _tf_raw(ds: Any) -> list[tuple[Any, ...]]:
    return [tuple(_tf_value(t) for t in sample) for sample in ds]


def test_tf_dataset_equals_the_local_one(pushed: Pushed, tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    from tensorcask.loaders.tensorflow import repo_dataset as tf_repo_dataset

    cache = tmp_path / "cache" if pushed.options else None  # S3 with a cache folder
    options = pushed.options or None

    def both(**kwargs: Any) -> tuple[Any, Any]:
        local = tf_repo_dataset(pushed.src, COLUMNS, **kwargs)
        remote = tf_repo_dataset(
            pushed.url, COLUMNS, storage_options=options, cache_dir=cache, **kwargs
        )
        return local, remote

    local, remote = both()
    assert remote.commit == local.commit == pushed.first
    assert remote.element_spec == local.element_spec
    assert remote.element_spec[0] == tf.TensorSpec(shape=(8, 8), dtype=tf.uint8)
    assert remote.element_spec[4] == tf.TensorSpec(shape=(None,), dtype=tf.int32)
    expected = _tf_raw(local)
    assert len(expected) == N and _tf_raw(remote) == expected
    seen: list[int] = []
    for index in range(3):
        local, remote = both(shuffle=True, seed=4, shard=(index, 3), batch_read=5)
        got = _tf_raw(remote)
        assert got == _tf_raw(local)
        seen += [int(s[1].numpy()) - LABEL0 for s in remote]
    assert sorted(seen) == list(range(N))
    order = epoch_order(N, seed=4, epoch=0, shuffle=True).tolist()
    assert seen[: len(order[0::3])] == order[0::3]
    _, dev = both(commit="dev", batch_read=7)
    assert dev.commit == pushed.dev
    assert _tf_raw(dev) == _tf_raw(tf_repo_dataset(pushed.src, COLUMNS, commit="dev"))
    pipeline = remote.map(lambda *sample: (sample[0], sample[1])).batch(4)
    labels = [k - LABEL0 for _, batch in pipeline for k in batch.numpy().tolist()]
    assert labels == order[2::3]


# -- 4. DataLoader workers under fork and spawn, one cache folder --------------------


def _loader_run(
    ds: RepoDataset, num_workers: int, context: str | None
) -> list[list[tuple[Any, ...]]]:
    loader = DataLoader(
        ds,
        batch_size=6,
        shuffle=True,
        generator=torch.Generator().manual_seed(99),
        num_workers=num_workers,
        multiprocessing_context=context,
        collate_fn=_raw_batch,
    )
    return list(loader)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_share_one_cache_folder(
    s3_pushed: Pushed, context: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    local = _loader_run(repo_dataset(s3_pushed.src, COLUMNS), 0, None)
    ds = s3_pushed.dataset(cache_dir=cache)
    assert _loader_run(ds, 2, context) == local
    flat = [s for batch in local for s in batch]
    assert sorted(flat) == sorted(_all(repo_dataset(s3_pushed.src, COLUMNS)))
    # The workers filled the shared folder: a new reader asks the server nothing.
    again = s3_pushed.dataset(cache_dir=cache)
    assert _all(again) == _all(repo_dataset(s3_pushed.src, COLUMNS))
    assert again.source.fetcher.requests == 0
    if context == "spawn":
        return  # spawning workers is slow; the iterable dataset goes through forked ones
    # The iterable dataset through workers: every sample once, in the local order.
    it = s3_pushed.iterable(["images", "labels"], cache_dir=cache, shuffle=True, batch_size=4)
    local_it = repo_iterable_dataset(
        s3_pushed.src, ["images", "labels"], shuffle=True, batch_size=4
    )
    runs = [
        list(DataLoader(x, batch_size=4, num_workers=2, multiprocessing_context=context))
        for x in (it, local_it)
    ]
    keys = [[k - LABEL0 for b in run for k in b[1].tolist()] for run in runs]
    assert keys[0] == keys[1] and sorted(keys[0]) == list(range(N))
    for batch in runs[0]:
        for image, label in zip(batch[0], batch[1], strict=True):
            assert np.array_equal(image.numpy(), _image(int(label) - LABEL0))


# -- 5. a real two-rank gloo group, two workers each, streaming from moto -----------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(
    rank: int, port: int, url: str, options: dict[str, Any], cache: str, out: str
) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        result: dict[str, Any] = {}
        for epoch in (0, 1):
            it = repo_iterable_dataset(
                url,
                ["labels", "images", "names"],
                shuffle=True,
                seed=11,
                even_ranks="none",
                batch_size=4,
                storage_options=options,
                cache_dir=cache,
            )
            assert it.topology() == (rank, 2)
            it.set_epoch(epoch)
            loader = DataLoader(it, batch_size=4, num_workers=2, multiprocessing_context="fork")
            samples = []
            for labels, images, names in loader:
                for label, image, name in zip(labels, images, names, strict=True):
                    k = int(label) - LABEL0
                    right = np.array_equal(image.numpy(), _image(k)) and name == f"name-{k}-é"
                    samples.append([k, right])
            result[str(epoch)] = samples
        dist.barrier()
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


@pytest.mark.timeout(180)
def test_two_gloo_ranks_stream_every_sample_exactly_once(s3_pushed: Pushed, tmp_path: Path) -> None:
    cache = tmp_path / "cache"  # one folder for both ranks and their workers
    torch.multiprocessing.spawn(
        _rank_main,
        args=(_free_port(), s3_pushed.url, s3_pushed.options, str(cache), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in ("0", "1"):
        mine = [[k for k, _ in r[epoch]] for r in ranks]
        assert all(right for r in ranks for _, right in r[epoch])
        assert sorted(mine[0] + mine[1]) == list(range(N))  # none lost, none repeated
        assert abs(len(mine[0]) - len(mine[1])) <= 1 and set(mine[0]).isdisjoint(mine[1])
    assert [k for k, _ in ranks[0]["0"]] != [k for k, _ in ranks[0]["1"]]


# -- 11. errors ----------------------------------------------------------------------


def test_errors_name_what_is_wrong(pushed: Pushed, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="'nope'"):
        pushed.dataset(["labels", "nope"])
    with pytest.raises(KeyError, match="'nope'"):
        pushed.iterable(["nope"])
    with pytest.raises(tc.RefNotFoundError, match="no-such-branch"):
        pushed.dataset(["labels"], commit="no-such-branch")
    with pytest.raises(tc.RefNotFoundError):
        pushed.dataset(["labels"], commit="0" * 40)
    with pytest.raises(tc.RefNotFoundError):
        pushed.dataset(["labels"], commit="beefbeef")
    with pytest.raises(IndexError):
        pushed.dataset(["labels"]).__getitems__([0, N])
    for option in ({"storage_options": {}}, {"cache_dir": tmp_path}, {"cache_limit_bytes": 1}):
        name = next(iter(option))
        with pytest.raises(TypeError, match=f"{name}="):
            repo_dataset(pushed.src, ["labels"], **option)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=f"{name}="):
            repo_iterable_dataset(pushed.src, ["labels"], **option)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cache_limit_bytes"):
        pushed.dataset(["labels"], cache_limit_bytes=0)


def test_a_remote_with_nothing_pushed_is_a_remote_error(tmp_path: Path) -> None:
    empty = (tmp_path / "empty").as_uri()
    with pytest.raises(tc.RemoteError, match="push"):
        repo_dataset(empty, ["labels"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(tc.RemoteError, match=re.escape(str(tmp_path / "empty"))):
        repo_iterable_dataset(empty, ["labels"])


def test_an_empty_bucket_is_a_remote_error(s3_server: Any, s3_url: str) -> None:
    with pytest.raises(tc.RemoteError, match=s3_url.removeprefix("s3://")):
        repo_dataset(s3_url, ["labels"], storage_options=s3_server.storage_options)


def test_a_remote_without_main_needs_commit(tmp_path: Path) -> None:
    with tc.init(tmp_path / "src", **IDENTITY) as repo:
        with repo.checkout(write=True, branch="zeta") as co:
            co.add_ndarray_column("labels", shape=(), dtype="int64").update([0, 1], [5, 6])
            head = co.commit("z")
        url = (tmp_path / "remote").as_uri()
        repo.add_remote("origin", url)
        repo.push("origin", "zeta")
    with pytest.raises(tc.RefNotFoundError, match="commit="):
        repo_dataset(url, ["labels"])
    with pytest.raises(tc.RefNotFoundError, match="commit="):
        repo_iterable_dataset(url, ["labels"])
    ds = repo_dataset(url, ["labels"], commit="zeta")
    assert ds.commit == head and [int(s[0]) for s in ds.__getitems__([0, 1])] == [5, 6]


def test_tf_errors_name_what_is_wrong(pushed: Pushed, tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    from tensorcask.loaders.tensorflow import repo_dataset as tf_repo_dataset

    options = pushed.options or None
    with pytest.raises(KeyError, match="'nope'"):
        tf_repo_dataset(pushed.url, ["nope"], storage_options=options)
    with pytest.raises(tc.RefNotFoundError):
        tf_repo_dataset(pushed.url, ["labels"], commit="nope", storage_options=options)
    with pytest.raises(TypeError, match="cache_dir="):
        tf_repo_dataset(pushed.src, ["labels"], cache_dir=tmp_path)
    with pytest.raises(tc.RemoteError):
        tf_repo_dataset((tmp_path / "nothing").as_uri(), ["labels"])


# -- 12. pickling --------------------------------------------------------------------


@pytest.mark.parametrize("cached", [False, True])
def test_pickled_datasets_read_the_same_samples(
    pushed: Pushed, cached: bool, tmp_path: Path
) -> None:
    cache = tmp_path / "cache" if cached else None
    ds = pushed.dataset(cache_dir=cache)
    expected = _all(repo_dataset(pushed.src, COLUMNS))
    before = pickle.dumps(ds)  # before any read: no connection yet in the copy
    assert _all(pickle.loads(before)) == expected
    assert ds[0] is not None
    copy = pickle.loads(pickle.dumps(ds))  # after a read: handles are not pickled
    assert copy.commit == ds.commit and copy.columns == COLUMNS
    assert _all(copy) == expected
    assert _all(pickle.loads(pickle.dumps(copy))) == expected
    it = pushed.iterable(["labels"], cache_dir=cache, shuffle=True, seed=2)
    it.set_epoch(3)
    it_copy = pickle.loads(pickle.dumps(it))
    assert [_label(s, 0) for s in it_copy] == epoch_order(N, seed=2, epoch=3, shuffle=True).tolist()
    if cached:
        # the tables are read from the cache folder, not carried in the pickle
        assert len(pickle.dumps(ds)) < len(pickle.dumps(pushed.dataset()))
    assert "storage_options" not in repr(ds) and pushed.url in repr(ds)


def test_columns_with_different_keys_warn_naming_what_is_left_out(pushed: Pushed) -> None:
    """On dev, "names" holds one key more than "images": never silently fewer samples."""
    expected = r"leaving out 1 of column 'names'; pass keys= to choose them"
    with pytest.warns(UserWarning, match=expected) as local:
        local_ds = repo_dataset(pushed.src, ["images", "names"], commit="dev")
    with pytest.warns(UserWarning, match=expected) as streamed:
        ds = pushed.dataset(["images", "names"], commit="dev")
    assert [w.filename for w in (*local, *streamed)] == [__file__, __file__]  # the user's line
    assert len(ds) == len(local_ds) == N
    with pytest.warns(UserWarning, match=expected):
        pushed.iterable(["names", "images"], commit="dev")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # equal key sets, or keys= given: no warning
        pushed.dataset(["images", "names"], commit=pushed.first)
        pushed.dataset(["images", "names"], commit="dev", keys=list(range(N)))
        pickle.loads(pickle.dumps(ds))  # a copy (a worker) does not warn again


def test_an_empty_column_streams_no_samples(tmp_path: Path) -> None:
    with tc.init(tmp_path / "src", **IDENTITY) as repo:
        with repo.checkout(write=True) as co:
            co.add_ndarray_column("empty", shape=(3,), dtype="float32")
            co.add_str_column("words").update({"a": "x", "b": "y"})
            co.commit("one empty column")
        url = (tmp_path / "remote").as_uri()
        repo.add_remote("origin", url)
        repo.push("origin", "main")
    for cache in (None, tmp_path / "cache", tmp_path / "cache"):  # the last loads saved tables
        ds = repo_dataset(url, ["empty"], cache_dir=cache)
        assert len(ds) == 0 and ds.__getitems__([]) == []
        assert list(repo_iterable_dataset(url, ["empty"], cache_dir=cache)) == []
    assert [repo_dataset(url, ["words"])[i] for i in range(2)] == [("x",), ("y",)]


def test_a_file_url_of_a_local_repository_says_to_pass_its_path(
    source: tuple[Path, str, str],
) -> None:
    src = source[0]
    with pytest.raises(tc.RemoteError, match="is a local repository, not a remote: pass its path"):
        repo_dataset(src.as_uri(), ["images"])
