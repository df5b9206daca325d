"""The chunked exact kNN (gspdml.evaluation.knn) against a float64 brute force, and the streaming
(memory-mapped, tiny-chunk) evaluation against the in-memory path and the brute-force metrics."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from gspdml.engine.evaluate import check_not_collapsed, embed_dataset, evaluate_model
from gspdml.errors import InputError
from gspdml.evaluation import knn as knn_mod
from gspdml.evaluation.knn import CPU_DEFAULT, KNNFunc, faiss_gpu_available, knn_search, resolve_backend
from gspdml.evaluation.metrics import compute_retrieval_metrics
from gspdml.evaluation.naive import naive_retrieval_metrics

cuda = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def brute_knn(q, k, ref=None):
    """Float64 squared distances, self set to +inf, stable sort (ties -> lower index)."""
    self_mode = ref is None
    ref = q if ref is None else ref
    d = torch.cdist(q.double(), ref.double()) ** 2
    if self_mode:
        d.fill_diagonal_(float("inf"))
    order = torch.sort(d, dim=1, stable=True).indices[:, :k]
    return d.gather(1, order), order


def clustered(n=300, dim=12, classes=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centers = torch.randn(classes, dim, generator=g)
    x = torch.nn.functional.normalize(centers[y] + 0.8 * torch.randn(n, dim, generator=g), dim=1)
    return x, y


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("chunks", [(None, None), (7, 11), (1, 300), (64, 5)])
@pytest.mark.parametrize("self_mode", [True, False])
def test_knn_matches_brute_force(backend, chunks, self_mode):
    x, _ = clustered(n=157, dim=9)
    q, ref = (x, None) if self_mode else (x[:61], x[61:])
    d, i = knn_search(q, 10, ref, backend=backend, query_chunk=chunks[0], gallery_chunk=chunks[1])
    bd, bi = brute_knn(q, 10, ref)
    assert d.shape == i.shape == (len(q), 10) and i.dtype == torch.int64 and d.dtype == torch.float32
    assert torch.equal(i, bi)
    torch.testing.assert_close(d.double(), bd, atol=1e-5, rtol=1e-5)
    if self_mode:
        assert not (i == torch.arange(len(q))[:, None]).any()


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_self_excluded_exactly_and_ties_by_lower_index(backend):
    # rows 0, 3, 5 identical; rows 1, 4 identical: the query's own row goes, its twins stay, in index order
    base = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    for chunks in [(None, None), (1, 1), (2, 3)]:
        _, i = knn_search(base, 2, backend=backend, query_chunk=chunks[0], gallery_chunk=chunks[1])
        assert i[0].tolist() == [3, 5] and i[3].tolist() == [0, 5] and i[5].tolist() == [0, 3]
        assert i[1].tolist() == [4, 6] and i[4].tolist() == [1, 6]


def test_memmap_inputs_equal_tensor_inputs(tmp_path):
    x, _ = clustered(n=120, dim=8)
    np.save(tmp_path / "x.npy", x.numpy())
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    for backend in ("torch", "faiss"):
        assert torch.equal(knn_search(mm, 5, backend=backend, query_chunk=13, gallery_chunk=17)[1],
                           knn_search(x, 5, backend=backend)[1])


def test_bad_arguments():
    x = torch.randn(10, 4)
    with pytest.raises(InputError, match="k=10 exceeds the 9"):
        knn_search(x, 10)
    with pytest.raises(InputError, match="dimensions differ"):
        knn_search(x, 2, torch.randn(5, 3))
    with pytest.raises(InputError, match="unknown kNN backend"):
        knn_search(x, 2, backend="annoy")
    with pytest.raises(InputError, match="query_chunk must be a positive int"):
        knn_search(x, 2, query_chunk=0)
    with pytest.raises(InputError, match="must have shape"):
        knn_search(torch.randn(10), 2)


def test_auto_choice_is_logged_and_documented(caplog):
    if torch.cuda.is_available():
        pytest.skip("the CPU choice is tested without CUDA")
    name, dev = resolve_backend("auto")
    assert name == ("faiss-gpu" if faiss_gpu_available() else CPU_DEFAULT) and dev.type == "cpu"
    assert CPU_DEFAULT in ("torch", "faiss")
    with caplog.at_level(logging.INFO, logger="gspdml"):
        knn_search(torch.randn(20, 4), 3)
    assert f"kNN: backend {CPU_DEFAULT}" in caplog.text and "(requested auto)" in caplog.text


@pytest.mark.skipif(faiss_gpu_available(), reason="a GPU faiss is installed here")
def test_faiss_gpu_refused_without_a_gpu_build():
    with pytest.raises(InputError, match="faiss-gpu"):
        resolve_backend("faiss-gpu")


@pytest.mark.parametrize("knn", ["auto", "torch", "faiss"])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_metrics_equal_brute_force_reference_for_every_backend(knn, chunk_size):
    x, y = clustered(n=260, dim=10, classes=30, seed=3)
    ref = naive_retrieval_metrics(x, y)
    got = compute_retrieval_metrics(x, y, knn=knn, chunk_size=chunk_size)
    for key, val in ref.items():
        assert got[key] == pytest.approx(val, abs=1e-9), key
    gq = naive_retrieval_metrics(x[:90], y[:90], x[90:], y[90:])
    got = compute_retrieval_metrics(x[:90], y[:90], x[90:], y[90:], knn=knn, chunk_size=chunk_size)
    for key, val in gq.items():
        assert got[key] == pytest.approx(val, abs=1e-9), key


def test_pml_knn_func_protocol():
    x, _ = clustered(n=50, dim=6)
    d, i = KNNFunc("torch")(x, 4, x, True)
    assert torch.equal(i, brute_knn(x, 4)[1])
    d, i = KNNFunc("faiss")(x[:10], 4, x[10:], False)
    assert torch.equal(i, brute_knn(x[:10], 4, x[10:])[1])


# ---------------------------------------------------------------------------- streaming evaluation
class TinyModel(torch.nn.Module):
    def __init__(self, dim_in=6, dim=5):
        super().__init__()
        self.lin = torch.nn.Linear(dim_in, dim)

    def forward(self, x, mask=None, return_details=False):
        return torch.nn.functional.normalize(self.lin(x), dim=1)


def _data(n, seed, classes=15):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(classes, 6, generator=g)[y] + 0.7 * torch.randn(n, 6, generator=g)
    return torch.utils.data.TensorDataset(x, y)


def test_embed_dataset_out_writes_a_memmap(tmp_path):
    torch.manual_seed(0)
    model, ds = TinyModel(), _data(37, 1)
    emb, lab = embed_dataset(model, ds, batch_size=8, progress=False)
    mm, lab2 = embed_dataset(model, ds, batch_size=8, progress=False, out=tmp_path / "sub" / "e.npy")
    assert isinstance(mm, np.memmap) and mm.shape == (37, 5) and mm.dtype == np.float32
    assert torch.equal(lab, lab2)
    np.testing.assert_allclose(mm, emb.numpy(), atol=0, rtol=0)
    check_not_collapsed(mm, "memmap")
    np.save(tmp_path / "z.npy", np.zeros((9, 3), np.float32))
    with pytest.raises(InputError, match="zero norm"):
        check_not_collapsed(np.load(tmp_path / "z.npy", mmap_mode="r"), "zeros")


@pytest.mark.parametrize("gallery", [False, True])
def test_streaming_evaluation_equals_in_memory(tmp_path, gallery):
    torch.manual_seed(0)
    model = TinyModel()
    query, gal = _data(83, 2), (_data(131, 3) if gallery else None)
    extras = ("map_at_10",)
    ref = evaluate_model(model, query, gal, batch_size=16, progress=False, extra_metrics=extras)
    run_dir = tmp_path / "run"
    got = evaluate_model(model, query, gal, batch_size=16, progress=False, extra_metrics=extras,
                         chunk_size=3, memmap_dir=run_dir)
    assert set(got) == set(ref)
    for key in ref:
        assert got[key] == pytest.approx(ref[key], abs=1e-6), key
    assert run_dir.is_dir() and list(run_dir.iterdir()) == []  # the temporary folder is gone
    # and the in-memory path equals the independent brute force
    qe, ql = embed_dataset(model, query, progress=False)
    brute = (naive_retrieval_metrics(qe, ql) if gal is None
             else naive_retrieval_metrics(qe, ql, *embed_dataset(model, gal, progress=False)))
    for key, val in brute.items():
        assert got[key] == pytest.approx(val, abs=1e-6), key


def test_chunked_metrics_on_memmap_files(tmp_path):
    x, y = clustered(n=240, dim=8, classes=25, seed=5)
    np.save(tmp_path / "g.npy", x.numpy())
    mm = np.load(tmp_path / "g.npy", mmap_mode="r")
    ref = compute_retrieval_metrics(x, y)
    got = compute_retrieval_metrics(mm, y, chunk_size=5)
    assert got == pytest.approx(ref, abs=1e-6)
    ref = compute_retrieval_metrics(x[:40], y[:40], x[40:], y[40:])
    np.save(tmp_path / "q.npy", x[:40].numpy())
    np.save(tmp_path / "r.npy", x[40:].numpy())
    got = compute_retrieval_metrics(np.load(tmp_path / "q.npy", mmap_mode="r"), y[:40],
                                    np.load(tmp_path / "r.npy", mmap_mode="r"), y[40:], chunk_size=4)
    assert got == pytest.approx(ref, abs=1e-6)
    bad = np.array(x.numpy())
    bad[7, 1] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(InputError, match="NaN"):
        compute_retrieval_metrics(np.load(tmp_path / "bad.npy", mmap_mode="r"), y, chunk_size=5)


# ------------------------------------------------------------------------------------------ CUDA
@pytest.mark.parametrize("self_mode", [True, False])
def test_torch_on_cuda_matches_cpu(self_mode):
    x, _ = clustered(n=500, dim=16)
    q, ref = (x, None) if self_mode else (x[:200], x[200:])
    d, i = knn_search(q, 8, ref, backend="torch", device="cuda", query_chunk=64, gallery_chunk=100)
    bd, bi = brute_knn(q, 8, ref)
    assert torch.equal(i, bi)
    torch.testing.assert_close(d.double(), bd, atol=1e-4, rtol=1e-4)


test_torch_on_cuda_matches_cpu = cuda[0](cuda[1](test_torch_on_cuda_matches_cpu))


@pytest.mark.cuda
@pytest.mark.skipif(not faiss_gpu_available(), reason="needs a GPU build of faiss (gspdml[gpu])")
def test_faiss_gpu_matches_brute_force():
    x, y = clustered(n=400, dim=16)
    assert torch.equal(knn_search(x, 6, backend="faiss-gpu", gallery_chunk=150)[1], brute_knn(x, 6)[1])
    assert resolve_backend("auto")[0] == "faiss-gpu"
    got = compute_retrieval_metrics(x, y, knn="faiss-gpu")
    assert got == pytest.approx(naive_retrieval_metrics(x, y), abs=1e-9)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_uses_the_gpu_when_there():
    name, dev = resolve_backend("auto")
    assert dev.type == "cuda" and name in ("torch", "faiss-gpu")
    assert knn_mod.resolve_backend("torch")[1].type == "cuda"
