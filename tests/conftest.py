"""Shared pytest fixtures (several helpers add to this file: add, do not remove others')."""

from __future__ import annotations

import pytest


# ------------------------------------------------------------------ engine (training / records)
SMOKE_THREADS = 1  # one thread: fast and stable on 2 shared cores, and the same in subprocesses


@pytest.fixture(scope="session")
def smoke_config():
    """A factory of smoke-budget RunConfigs on the synthetic dataset (``**kw`` override fields)."""
    from engine.train import RunConfig

    def make(**kw):
        base = {"model": "egeunet", "dataset": "synthetic", "protocol": "clean", "budget": "smoke", "seed": 0}
        base.update(kw)
        return RunConfig(**base)

    return make


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, smoke_config):
    """One finished smoke run (with complexity profiling), shared by the record / evaluation tests."""
    from engine.train import run_training

    results = tmp_path_factory.mktemp("smoke_results")
    calls = []
    res = run_training(smoke_config(), results, threads=SMOKE_THREADS, progress=lambda **k: calls.append(k))
    assert res.status == "done", res.reason
    res.progress_calls = calls
    return res


# ------------------------------------------------------------------ data layer (engine/data)
def _write_image(path, w=16, h=12, seed=0, fmt=None):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path, format=fmt)


def _write_mask(path, w=16, h=12, value=255, fmt=None):
    import numpy as np
    from PIL import Image

    m = np.zeros((h, w), dtype=np.uint8)
    m[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m).save(path, format=fmt)


@pytest.fixture
def fake_isic(tmp_path):
    """Factory: a tiny ISIC 2018 (or 2017) layout under tmp_path/<root>; returns (root, dataset_dir)."""

    def make(n=6, dataset="isic2018", w=16, h=12, root_name="root"):
        from engine.data.layouts import LAYOUTS

        root = tmp_path / root_name
        base = root / LAYOUTS[dataset].dirnames[0]
        specs = [s for s in LAYOUTS[dataset].parts if s.required]
        k = 0
        for spec in specs:
            for _ in range(n):
                iid = f"ISIC_{k:07d}"
                _write_image(base / spec.images / f"{iid}.jpg", w, h, seed=k)
                _write_mask(base / spec.masks / f"{iid}_segmentation.png", w, h)
                k += 1
        return root, base

    make.write_image = _write_image
    make.write_mask = _write_mask
    return make


@pytest.fixture
def fake_ph2(tmp_path):
    """Factory: a tiny PH2 layout with small BMPs; returns (root, dataset_dir)."""

    def make(n=5, w=20, h=15):
        root = tmp_path / "ph2root"
        base = root / "PH2Dataset"
        for k in range(n):
            cid = f"IMD{k + 2:03d}"
            case = base / "PH2 Dataset images" / cid
            _write_image(case / f"{cid}_Dermoscopic_Image" / f"{cid}.bmp", w, h, seed=k, fmt="BMP")
            _write_mask(case / f"{cid}_lesion" / f"{cid}_lesion.bmp", w, h, fmt="BMP")
            (case / f"{cid}_roi").mkdir(parents=True, exist_ok=True)
        (base / "PH2_dataset.txt").write_text("metadata\n")
        return root, base

    return make


@pytest.fixture(scope="session")
def real_data_root():
    """The ISIC data root ($EGEUNET_DATA or ../shared/data); skips the test when ISIC 2018/2017 are absent."""
    from engine.data import data_root, dataset_available

    root = data_root()
    if root is None or not (dataset_available("isic2018", root) and dataset_available("isic2017", root)):
        pytest.skip("ISIC data not found (set EGEUNET_DATA or put it in ../shared/data)")
    return root


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory, real_data_root):
    """A session cache dir with ISIC 2018 and 2017 built once at 64x64 (first-build seconds in .build_s)."""
    import time

    from engine.data import load_split

    cache = tmp_path_factory.mktemp("egeunet_cache")
    build_s = {}
    for ds in ("isic2018", "isic2017"):
        t0 = time.perf_counter()
        arr = load_split(ds, "train", size=64, root=real_data_root, cache_dir=cache)
        assert arr.info["cache_built"]
        build_s[ds] = time.perf_counter() - t0
    from types import SimpleNamespace

    return SimpleNamespace(path=cache, build_s=build_s, root=real_data_root)


# ------------------------------------------------------------------ threads
@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module, restored afterwards.

    Test inputs are tiny; on shared 2-core machines multi-threaded OpenMP oversubscribes and spins
    (measured >10x slower). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="session", autouse=True)
def _fused_kernels_built():
    """Build egeunet.fast's C++ kernels once, in the test process, before any subprocess needs them."""
    from kernels import fastops as _fastops

    _fastops.ops()
