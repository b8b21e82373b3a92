"""GalleryIndex: exact and approximate search, stable ids, add/remove, PP-ShiTu's on-disk layout, atomic saves.

The index is pure math, so seeded synthetic unit vectors stand in for embeddings here.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from models.errors import GalleryError
from models.gallery import GalleryIndex

D = 32
METHODS = ("Flat", "IVF", "HNSW32")
DIST_TYPES = ("IP", "L2")


def unit(rng: np.random.Generator, n: int, d: int = D) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def near(rng: np.random.Generator, x: np.ndarray, noise: float = 0.05) -> np.ndarray:
    return unit_rows(x + noise * rng.standard_normal(x.shape).astype(np.float32))


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def lines(n: int, start: int = 0) -> tuple[list[str], list[str]]:
    labels = [f"item {i % 7}" for i in range(start, start + n)]  # labels with spaces, as PaddleClas cuts them
    return [f"img/{i}.jpg\t{label}" for i, label in zip(range(start, start + n), labels)], labels


def gallery(n: int, *, seed: int = 0, index_method: str = "Flat", dist_type: str = "IP") -> tuple[GalleryIndex, np.ndarray]:
    x = unit(np.random.default_rng(seed), n)
    docs, labels = lines(n)
    return GalleryIndex.build(x, docs, labels, index_method=index_method, dist_type=dist_type), x


# ---- search ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dist_type", DIST_TYPES)
def test_flat_is_exact_nearest_neighbour(dist_type: str) -> None:
    g, x = gallery(300, dist_type=dist_type)
    q = unit(np.random.default_rng(1), 40)
    result = g.search(q, 5)
    cosine = q @ x.T
    expected = np.argsort(-cosine, axis=1)[:, :5]
    np.testing.assert_array_equal(result.ids, expected)
    np.testing.assert_allclose(result.scores, np.take_along_axis(cosine, expected, axis=1), atol=1e-5)
    assert result.ids.dtype == np.int64 and result.scores.dtype == np.float32
    _, labels = lines(300)
    assert result.labels == [[labels[i] for i in row] for row in expected.tolist()]


def test_l2_score_equals_ip_score_for_unit_vectors() -> None:
    ip, _ = gallery(200, dist_type="IP")
    l2, _ = gallery(200, dist_type="L2")
    q = unit(np.random.default_rng(2), 25)
    a, b = ip.search(q, 8), l2.search(q, 8)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


@pytest.mark.parametrize("dist_type", DIST_TYPES)
@pytest.mark.parametrize("index_method", ["IVF", "HNSW32"])
def test_approximate_methods_find_near_duplicates(index_method: str, dist_type: str) -> None:
    g, x = gallery(800, index_method=index_method, dist_type=dist_type)
    rng = np.random.default_rng(3)
    chosen = rng.choice(800, size=100, replace=False)
    result = g.search(near(rng, x[chosen]), 3)
    np.testing.assert_array_equal(result.ids[:, 0], chosen)
    assert (result.scores[:, 0] > 0.9).all()


def test_fewer_entries_than_k_and_empty_gallery() -> None:
    g, _ = gallery(3)
    result = g.search(unit(np.random.default_rng(4), 2), 5)
    assert (result.ids[:, 3:] == -1).all() and np.isneginf(result.scores[:, 3:]).all()
    assert [row[3:] for row in result.labels] == [[None, None], [None, None]]
    for method in METHODS:
        empty = GalleryIndex.build(np.empty((0, D), np.float32), [], [], index_method=method)
        out = empty.search(unit(np.random.default_rng(5), 4), 2)
        assert out.ids.shape == (4, 2) and (out.ids == -1).all() and out.labels == [[None, None]] * 4


def test_one_query_as_a_vector() -> None:
    g, x = gallery(50)
    assert g.search(x[7], 1).ids.tolist() == [[7]]


# ---- add / remove ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("index_method", METHODS)
def test_add_continues_ids_and_never_reuses_them(index_method: str) -> None:
    g, _ = gallery(40, index_method=index_method)
    assert g.version == 1
    extra = unit(np.random.default_rng(6), 5)
    docs, labels = lines(5, start=40)
    new_ids = g.add(extra, docs, labels)
    assert new_ids.tolist() == [40, 41, 42, 43, 44] and g.size == 45 and g.version == 2
    assert g.search(extra, 1).ids[:, 0].tolist() == new_ids.tolist()
    assert g.search(extra, 1).labels[0] == [labels[0]]
    g.remove([44])
    again = g.add(extra[:1], docs[:1], labels[:1])
    assert again.tolist() == [45] and g.version == 4


def test_empty_ivf_trains_on_first_add() -> None:
    g = GalleryIndex.build(np.empty((0, D), np.float32), [], [], index_method="IVF")
    x = unit(np.random.default_rng(7), 64)
    docs, labels = lines(64)
    assert g.add(x, docs, labels).tolist() == list(range(64))
    assert g.search(x[:10], 1).ids[:, 0].tolist() == list(range(10))


@pytest.mark.parametrize("index_method", METHODS)
def test_removed_ids_never_come_back(index_method: str, tmp_path: Path) -> None:
    g, x = gallery(400, index_method=index_method)
    removed = np.random.default_rng(8).choice(400, size=60, replace=False)
    assert g.remove(removed) == 60
    assert g.size == 340 and g.version == 2
    kept = np.setdiff1d(np.arange(400), removed)
    result = g.search(x, 20)
    assert not np.isin(result.ids, removed).any()
    # Each kept vector still finds itself, under its own id (IDMap2.remove_ids around IVF would shift them).
    np.testing.assert_array_equal(result.ids[kept, 0], kept)
    g.save(tmp_path / "index")
    loaded = GalleryIndex.load(tmp_path / "index")
    assert not np.isin(loaded.search(x, 20).ids, removed).any()
    assert sorted(loaded.ids.tolist()) == kept.tolist()


def test_remove_unknown_id_changes_nothing() -> None:
    g, _ = gallery(10)
    with pytest.raises(GalleryError, match="gallery has no id 99"):
        g.remove([3, 99])
    assert g.size == 10 and g.version == 1


def test_ids_for_documents_supports_remove_by_line() -> None:
    g, _ = gallery(10)
    docs, _ = lines(10)
    ids = g.ids_for_documents([docs[2], docs[5] + "\n"])
    assert ids.tolist() == [2, 5]


@pytest.mark.parametrize("index_method", METHODS)
def test_rebuild_into_another_method_keeps_ids(index_method: str) -> None:
    g, x = gallery(300)
    g.remove([0, 1])
    g.rebuild(index_method=index_method)
    assert g.index_method == index_method and g.version == 3
    assert g.search(x[2:50], 1).ids[:, 0].tolist() == list(range(2, 50))


# ---- errors ----------------------------------------------------------------------------------------------


def test_user_errors_name_the_thing(tmp_path: Path) -> None:
    g, _ = gallery(10)
    with pytest.raises(GalleryError, match="dimension 16, but the gallery's embedding_size is 32"):
        g.search(np.ones((2, 16), np.float32), 1)
    with pytest.raises(GalleryError, match="dimension 16, but the gallery's embedding_size is 32"):
        g.add(np.ones((1, 16), np.float32), ["x\ty"], ["y"])
    with pytest.raises(GalleryError, match="index_method 'IVFPQ'"):
        GalleryIndex.build(unit(np.random.default_rng(0), 4), *lines(4), index_method="IVFPQ")
    with pytest.raises(GalleryError, match="dist_type 'hamming'"):
        GalleryIndex.build(unit(np.random.default_rng(0), 4), *lines(4), dist_type="hamming")
    with pytest.raises(GalleryError, match="4 embeddings, 3 documents and 4 labels"):
        GalleryIndex.build(unit(np.random.default_rng(0), 4), lines(3)[0], lines(4)[1])
    with pytest.raises(GalleryError, match="row 1 contains NaN"):
        g.search(np.stack([np.ones(D), np.full(D, np.nan)]).astype(np.float32), 1)
    with pytest.raises(GalleryError, match="return_k"):
        g.search(np.ones((1, D), np.float32), 0)
    with pytest.raises(GalleryError, match="nowhere: gallery index directory not found"):
        GalleryIndex.load(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "vector.index").write_bytes(b"")
    with pytest.raises(GalleryError, match="half: missing id_map.pkl"):
        GalleryIndex.load(tmp_path / "half")


# ---- save / load -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dist_type", DIST_TYPES)
@pytest.mark.parametrize("index_method", METHODS)
def test_save_load_round_trip(index_method: str, dist_type: str, tmp_path: Path) -> None:
    g, x = gallery(200, index_method=index_method, dist_type=dist_type)
    g.add(unit(np.random.default_rng(9), 3), *lines(3, start=200))
    g.remove([5])
    g.save(tmp_path / "index")
    loaded = GalleryIndex.load(tmp_path / "index")
    assert (loaded.version, loaded.size, loaded.index_method, loaded.dist_type, loaded.embedding_size) == (
        3, 202, index_method, dist_type, D)
    np.testing.assert_array_equal(loaded.ids, g.ids)
    q = near(np.random.default_rng(10), x[:30])
    a, b = g.search(q, 5), loaded.search(q, 5)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.labels == b.labels
    assert loaded.add(x[:1], ["again.jpg\tagain"], ["again"]).tolist() == [203]


def test_saved_dir_is_paddleclas_layout(tmp_path: Path) -> None:
    g, x = gallery(100, index_method="HNSW32")
    g.save(tmp_path / "index")
    index = faiss.read_index(str(tmp_path / "index" / "vector.index"))
    assert isinstance(faiss.downcast_index(index), faiss.IndexIDMap2)
    with open(tmp_path / "index" / "id_map.pkl", "rb") as handle:
        id_map = pickle.load(handle)
    docs, labels = lines(100)
    assert id_map == dict(enumerate(docs))
    _, found = index.search(x[[4, 17]], 1)
    assert [id_map[i] for i in found[:, 0]] == [docs[4], docs[17]]
    # What PaddleClas's predict_system takes as the label: the second whitespace field ("item", not "item 4").
    assert id_map[found[0, 0]].split()[1] == "item"


@pytest.mark.parametrize(("factory", "method"), [("Flat", "Flat"), ("IVF{nlist},Flat", "IVF"), ("HNSW32", "HNSW32")])
def test_loads_a_paddleclas_made_index_dir(factory: str, method: str, tmp_path: Path) -> None:
    # What build_gallery.py writes, made with faiss and pickle only: IDMap2 over index_factory, np.int64 keys.
    n = 160
    x = unit(np.random.default_rng(11), n)
    inner = faiss.index_factory(D, factory.format(nlist=n // 8), faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexIDMap2(inner)
    index.train(x)
    ids = (np.arange(n) + 1000).astype(np.int64)
    index.add_with_ids(x, ids)
    id_map = {i: f"gallery/{i}.jpg\tred car {i % 3}" for i in ids}
    (tmp_path / "pp").mkdir()
    faiss.write_index(index, str(tmp_path / "pp" / "vector.index"))
    with open(tmp_path / "pp" / "id_map.pkl", "wb") as handle:
        pickle.dump(id_map, handle)

    g = GalleryIndex.load(tmp_path / "pp")
    assert (g.size, g.version, g.index_method, g.dist_type, g.read_only) == (n, 1, method, "IP", False)
    result = g.search(near(np.random.default_rng(12), x[:20]), 1)
    assert result.ids[:, 0].tolist() == ids[:20].tolist()
    assert result.labels[1] == [f"red car {ids[1] % 3}"]
    assert g.add(x[:1], ["dup.jpg\tdup"], ["dup"]).tolist() == [1000 + n]
    g.remove(ids[:10])
    assert not np.isin(g.search(x, 5).ids, ids[:10]).any()
    g.save(tmp_path / "pp")
    assert GalleryIndex.load(tmp_path / "pp").version == 3


def test_paddleclas_dir_with_lossy_index_loads_read_only(tmp_path: Path) -> None:
    x = unit(np.random.default_rng(13), 300)
    index = faiss.IndexIDMap2(faiss.index_factory(D, "PQ8x4", faiss.METRIC_L2))
    index.train(x)
    index.add_with_ids(x, np.arange(300, dtype=np.int64))
    (tmp_path / "pp").mkdir()
    faiss.write_index(index, str(tmp_path / "pp" / "vector.index"))
    with open(tmp_path / "pp" / "id_map.pkl", "wb") as handle:
        pickle.dump({i: f"{i}.jpg\tthing" for i in range(300)}, handle)
    g = GalleryIndex.load(tmp_path / "pp")
    assert g.read_only and g.dist_type == "L2"
    assert g.search(x[:5], 1).labels == [["thing"]] * 5
    with pytest.raises(GalleryError, match="read-only"):
        g.remove([1])
    with pytest.raises(GalleryError, match="read-only"):
        g.add(x[:1], ["a\tb"], ["b"])


def test_paddleclas_dir_with_another_delimiter(tmp_path: Path) -> None:
    g, _ = gallery(5)
    g.save(tmp_path / "index")
    for name in ("embeddings.npy", "ids.npy", "labels.json", "meta.json"):
        (tmp_path / "index" / name).unlink()  # now only PaddleClas's two files
    with pytest.raises(GalleryError, match=r"id_map.pkl: id 0: line 'img/0.jpg\\titem 0' has no '\|'"):
        GalleryIndex.load(tmp_path / "index", delimiter="|")
    assert GalleryIndex.load(tmp_path / "index").search(np.eye(D, dtype=np.float32)[:1], 5).labels[0][0].startswith("item")


def test_id_map_pickle_may_not_carry_code(tmp_path: Path) -> None:
    g, _ = gallery(5)
    g.save(tmp_path / "index")
    with open(tmp_path / "index" / "id_map.pkl", "wb") as handle:
        pickle.dump({0: os.getcwd}, handle)  # a global function: what a malicious pickle would call
    with pytest.raises(GalleryError, match="id_map.pkl: not a pickled .*refusing to load"):
        GalleryIndex.load(tmp_path / "index")


def test_vidrec_files_out_of_step_with_vector_index(tmp_path: Path) -> None:
    g, x = gallery(20)
    g.save(tmp_path / "index")
    # PaddleClas's build_gallery.py "append" rewrites vector.index and id_map.pkl but not vidrec's files.
    index = faiss.read_index(str(tmp_path / "index" / "vector.index"))
    index.add_with_ids(x[:1], np.array([20], dtype=np.int64))
    faiss.write_index(index, str(tmp_path / "index" / "vector.index"))
    with pytest.raises(GalleryError, match="vector.index: its ids no longer match ids.npy"):
        GalleryIndex.load(tmp_path / "index")


# ---- atomic save -----------------------------------------------------------------------------------------


def test_save_refuses_to_replace_a_directory_that_is_not_a_gallery(tmp_path: Path) -> None:
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "notes.txt").write_text("mine")
    g, _ = gallery(5)
    with pytest.raises(GalleryError, match="refusing to replace it, it holds notes.txt"):
        g.save(tmp_path / "index")
    assert (tmp_path / "index" / "notes.txt").read_text() == "mine"


_SAVE_UNDER_FILE_SIZE_LIMIT = textwrap.dedent(
    """
    import resource, signal, sys
    import numpy as np
    from models.errors import GalleryError
    from models.gallery import GalleryIndex

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 256)).astype(np.float32)  # ~4 MB per file: far over the limit below
    g = GalleryIndex.build(x, [f"{i}.jpg\\tbig" for i in range(4000)], ["big"] * 4000)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
    if sys.argv[2] == "crash":
        # Python ignores SIGXFSZ (so the write fails with EFBIG); restore the default: the kernel kills us.
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    try:
        g.save(sys.argv[1])
    except GalleryError as exc:
        print(exc)
        sys.exit(3)
    """
)


@pytest.mark.parametrize("how", ["crash", "error"])
def test_a_failed_save_leaves_the_old_index_intact(how: str, tmp_path: Path, repo_dir: Path) -> None:
    # A real failure mid-write: the file-size limit stops the new vector.index part-way. "crash" is killed by
    # SIGXFSZ as a full disk or power cut would stop it; "error" sees EFBIG and must clean up after itself.
    old, x = gallery(50)
    old.add(x[:2], ["a.jpg\ta", "b.jpg\tb"], ["a", "b"])
    target = tmp_path / "index"
    old.save(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    run = subprocess.run(
        [sys.executable, "-c", _SAVE_UNDER_FILE_SIZE_LIMIT, str(target), how],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(repo_dir)}, capture_output=True, text=True, timeout=120,
    )
    if how == "crash":
        assert run.returncode < 0, run.stderr  # killed by a signal, mid-write
    else:
        assert run.returncode == 3, run.stderr
        assert run.stdout.startswith(f"{target}: cannot save gallery (File too large)"), run.stdout
        assert not list(tmp_path.glob(".index.tmp-*")), "a failed save must remove its temporary directory"

    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    loaded = GalleryIndex.load(target)
    assert (loaded.version, loaded.size) == (2, 52)
    assert loaded.search(x[:5], 1).ids[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_readers_never_see_a_mix_of_two_saves(tmp_path: Path) -> None:
    small, x = gallery(30)
    big, _ = gallery(30)
    big.add(x[:5], *lines(5, start=30))
    target = tmp_path / "index"
    small.save(target)
    done = threading.Event()
    seen: set[tuple[int, int]] = set()
    errors: list[BaseException] = []

    def read() -> None:
        while not done.is_set():
            try:
                g = GalleryIndex.load(target)
                seen.add((g.version, g.size))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            (big if i % 2 else small).save(target)
    finally:
        done.set()
        reader.join()
    assert not errors, errors[0]
    assert seen <= {(1, 30), (2, 35)}


def test_rebuild_over_a_saved_gallery_can_continue_its_version(tmp_path: Path) -> None:
    """A new build replacing a live gallery must not look older to a job that follows versions."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    first = GalleryIndex.build(x, [f"{i}.jpg\tl{i}" for i in range(4)], [f"l{i}" for i in range(4)])
    first.add(x[:1], ["new.jpg\tl9"], ["l9"])
    first.save(tmp_path / "index")
    assert GalleryIndex.stored_version(tmp_path / "index") == 2
    assert GalleryIndex.stored_version(tmp_path / "missing") is None
    again = GalleryIndex.build(x, ["a.jpg\ta"] * 4, ["a"] * 4, version=3)
    assert again.version == 3
    assert [label for _, label, _ in again.entries()] == ["a"] * 4


@pytest.mark.parametrize(
    "queries, entries, threads",
    [
        (1, 3, 1),  # one crop against a small gallery: threads cost more than the search
        (1, 1_000_000, 1),  # one query: faiss gains nothing from a second thread (measured at 50,000 entries)
        (8, 3, 1),  # a batch against a small gallery
        (8, 50_000, 0),  # a batch against a large gallery: faiss's own threads (2x faster measured)
        (64, 2_000, 0),  # 128,000 pairs: worth the threads
    ],
)
def test_search_threads(queries: int, entries: int, threads: int) -> None:
    from models.gallery import _threads_for

    assert _threads_for(queries, entries) == threads


def test_a_search_leaves_faiss_threads_as_they_were() -> None:
    import faiss

    gallery = GalleryIndex.build(np.eye(4, dtype=np.float32), ["a", "b", "c", "d"], ["a", "b", "c", "d"])
    before = faiss.omp_get_max_threads()
    assert gallery.search(np.eye(4, dtype=np.float32)[:1], 1).labels == [["a"]]
    assert faiss.omp_get_max_threads() == before
