"""Fixtures shared by the benchmark tests."""
import pytest
import torch


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory):
    """A random-weights file with the key names and shapes of torch-fidelity's Inception checkpoint."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    with pytest.MonkeyPatch.context() as m:  # build the network without fetching or loading weights
        m.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state, strict=True: None)
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, v in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = v
        elif key.endswith(("bn.weight", "running_var")):
            state[key] = torch.rand(v.shape, generator=g) + 0.5
        elif key.endswith(("bn.bias", "running_mean", "fc.bias")):
            state[key] = 0.1 * torch.randn(v.shape, generator=g)
        else:  # conv and fc weights, He-scaled so activations stay O(1) through the 17 blocks
            state[key] = torch.randn(v.shape, generator=g) * (2 / v[0].numel()) ** 0.5
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(state, path)
    return path
