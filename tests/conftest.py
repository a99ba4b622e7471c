"""Test-wide settings: no test may reach the network (the hub is unreachable here anyway)."""
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Suite-trained helpers (the domain classifier for FID-domain) go to a fresh cache per session.
os.environ.setdefault("LATENTBENCH_CACHE", tempfile.mkdtemp(prefix="latentbench-cache-"))
