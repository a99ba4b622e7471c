"""Test-wide settings: no test may reach the network (the hub is unreachable here anyway), and no test
writes into the user's own latentbench cache or leaves its random state behind."""
import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Suite-trained helpers (the domain classifier for FID-domain, the scan cache) go to a fresh cache per
# session, also when LATENTBENCH_CACHE is set (the user's cache is not the tests'); removed at exit.
_CACHE = tempfile.mkdtemp(prefix="latentbench-cache-")
os.environ["LATENTBENCH_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _restore_global_state():
    """A bench seeds the process (torch's global generator, Lightning's PL_* variables): put them back, so a
    test's random data does not depend on which tests ran before it."""
    import torch

    state = torch.random.get_rng_state()
    env = {k: v for k, v in os.environ.items() if k.startswith("PL_")}
    yield
    torch.random.set_rng_state(state)
    for key in [k for k in os.environ if k.startswith("PL_")]:
        if key not in env:
            del os.environ[key]
    os.environ.update(env)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Empty torch hub and Hugging Face caches: a "weights missing" test holds on a machine that has them."""
    import huggingface_hub.constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    try:
        import diffusers.utils.constants as diffusers_constants
    except ImportError:
        diffusers_constants = None
    if diffusers_constants is not None and hasattr(diffusers_constants, "HF_HUB_CACHE"):
        monkeypatch.setattr(diffusers_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path
