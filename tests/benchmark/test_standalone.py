"""`latentbench metrics` on two image folders, against scikit-image."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from latentbench.benchmark.standalone import folder_metrics
from latentbench.cli import main


def _folders(tmp_path, n=5, size=40, seed=0):
    rng = np.random.default_rng(seed)
    real, fake = tmp_path / "real", tmp_path / "fake"
    (real / "sub").mkdir(parents=True)
    (fake / "sub").mkdir(parents=True)
    pairs = []
    for i in range(n):
        a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        b = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
        name = f"sub/{i}.png" if i % 2 else f"{i}.png"
        Image.fromarray(a).save(real / name)
        Image.fromarray(b).save(fake / name)
        pairs.append((a, b))
    return real, fake, pairs


def test_paired_metrics_match_skimage(tmp_path):
    real, fake, pairs = _folders(tmp_path)
    out = folder_metrics(real, fake, psnr=True, ssim=True)
    psnr = np.mean([peak_signal_noise_ratio(a, b, data_range=255) for a, b in pairs])
    ssim = np.mean([structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                          data_range=255, channel_axis=-1) for a, b in pairs])
    assert out["psnr"] == {"value": pytest.approx(psnr, rel=1e-12), "n": 5}  # the README's 1e-12
    assert out["ssim"]["value"] == pytest.approx(ssim, rel=1e-12)


def test_fid_with_a_domain_extractor(tmp_path):
    real, fake, _ = _folders(tmp_path, n=12, size=32)
    out = folder_metrics(real, fake, fid=True, extractor="domain-mnist", bootstrap=10)
    assert out["fid"]["label"] == "FID-domain(mnist)" and out["fid"]["n"] == 12 and out["fid"]["n_real"] == 12
    assert out["fid"]["value"] > 0 and len(out["fid"]["weights_sha256"]) == 64
    assert out["fid"]["resampled"] == "pairs of same-named images, jointly"


def test_fid_bootstrap_resamples_both_folders_as_the_bench_does(tmp_path):
    """Two folders: the real side is resampled too (pairs by name, or each folder on its own), so the interval is the
    bench's paired one, not the fake side's alone against fixed real statistics (which the reviewer measured as
    [0, 8.08] around 0.69, against [0.09, 1.89] paired); a statistics file can only be taken as exact."""
    from latentbench.benchmark.extractors import create_extractor
    from latentbench.benchmark.fid import FrechetDistance
    from latentbench.benchmark.standalone import folder_features, list_images, save_folder_stats

    real, fake, _ = _folders(tmp_path, n=30, size=32)
    paired = folder_metrics(real, fake, fid=True, extractor="domain-mnist", bootstrap=20)["fid"]
    extractor = create_extractor("domain-mnist")
    names = list(list_images(real))  # pairs follow the real folder's listing: row i is its file i
    feats = [torch.cat(list(folder_features(d, extractor, files=[d / n for n in names]))) for d in (real, fake)]
    bench_way = FrechetDistance(extractor.dim, bootstrap=20)  # the bench's rFID: (fake, real) rows together
    bench_way.update(feats[1], real=feats[0], index=torch.arange(30))
    expected = bench_way.compute()
    assert paired["value"] == pytest.approx(expected["value"], rel=1e-9)
    np.testing.assert_allclose(paired["interval"], expected["interval"], rtol=1e-9)

    for extra in range(3):  # a real folder of other file names: unpaired, each side resampled on its own
        Image.fromarray(np.zeros((32, 32, 3), np.uint8) + 60 * extra).save(real / f"extra{extra}.png")
    sides = folder_metrics(real, fake, fid=True, extractor="domain-mnist", bootstrap=20)["fid"]
    assert sides["resampled"].startswith("each folder on its own") and (sides["n"], sides["n_real"]) == (30, 33)
    assert sides["interval"][0] < sides["value"] < sides["interval"][1]

    stats = save_folder_stats(real, tmp_path / "real.npz", "domain-mnist")
    fixed = folder_metrics(stats, fake, fid=True, bootstrap=20)["fid"]
    assert fixed["resampled"].startswith("the fake images only") and fixed["value"] == pytest.approx(sides["value"], rel=1e-9)
    assert fixed["reference_sha256"] == sides["reference_sha256"]  # the same real statistics either way


def test_too_few_bootstrap_replicates_are_refused(tmp_path):
    real, fake, _ = _folders(tmp_path, n=4, size=32)
    result = _cli("--real", str(real), "--fake", str(fake), "--fid", "--extractor", "domain-mnist", "--bootstrap", "3")
    assert result.returncode == 2 and "--bootstrap must be 0 (no interval) or at least 10 replicates, got 3" in result.stderr


def test_cli_json_and_bare_flags(tmp_path, capsys):
    real, fake, _ = _folders(tmp_path)
    main(["metrics", "--real", str(real), "--fake", str(fake), "--psnr", "--ssim", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"psnr", "ssim"} and out["psnr"]["n"] == 5


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "latentbench.cli", "metrics", *args], capture_output=True, text=True, timeout=120)


def test_mismatched_folders_fail_clearly(tmp_path):
    real, fake, _ = _folders(tmp_path)
    (fake / "0.png").unlink()
    proc = _cli("--real", str(real), "--fake", str(fake), "--psnr")
    assert proc.returncode == 2 and "only in real: ['0.png']" in proc.stderr and "Traceback" not in proc.stderr
    Image.open(real / "0.png").save(fake / "0.jpg")  # the same image under another format's name
    with pytest.raises(ValueError, match=r"1 differ only in their extension \(e.g. 0.png against 0.jpg\)"):
        folder_metrics(real, fake, psnr=True)


def test_names_that_differ_only_in_unicode_normalisation_are_explained(tmp_path):
    """macOS and some archive tools write 'café' decomposed (NFD): the error listed 'café.png' as only in real and
    'café.png' as only in fake, two names that print the same."""
    real, fake, _ = _folders(tmp_path, n=2)
    (real / "0.png").rename(real / "caf\u00e9.png")  # composed (NFC)
    (fake / "0.png").rename(fake / "cafe\u0301.png")  # decomposed (NFD)
    with pytest.raises(ValueError, match=re.escape("1 differ only in their Unicode normalisation (e.g. 'caf\\xe9.png' "
                                                   "against 'cafe\\u0301.png': the same text")):
        folder_metrics(real, fake, psnr=True)


def test_a_missing_statistics_file_is_named_before_any_weights(tmp_path):
    """A mistyped .npz got the 'download the Inception weights' error (its extractor's), hiding the typo."""
    real, fake, _ = _folders(tmp_path, n=2)
    for extractor in (None, "domain-mnist"):
        with pytest.raises(FileNotFoundError, match=r"statistics file .*nope.npz does not exist: write one with"):
            folder_metrics(tmp_path / "nope.npz", fake, fid=True, extractor=extractor)


def test_a_missing_image_folder_is_named_before_any_weights(tmp_path, monkeypatch):
    """A mistyped folder (--real, --fake, stats --images) got the extractor's 'download the Inception weights' error
    first, when those were missing: the user would fetch 100 MB to learn of the typo."""
    from latentbench.benchmark import extractors
    from latentbench.benchmark.standalone import save_folder_stats
    from latentbench.weights import WeightsUnavailable

    def no_weights(*args, **kwargs):
        raise WeightsUnavailable("inception-tf (FID) needs torch-fidelity's Inception weights")

    monkeypatch.setattr(extractors, "create_extractor", no_weights)
    real, fake, _ = _folders(tmp_path, n=2)
    for given in ((tmp_path / "nope", fake), (real, tmp_path / "nope"), (tmp_path / "stats.npz", tmp_path / "nope")):
        with pytest.raises(FileNotFoundError, match="image folder .*nope does not exist"):
            folder_metrics(*given, fid=True)
    with pytest.raises(FileNotFoundError, match="image folder .*nope does not exist"):
        save_folder_stats(tmp_path / "nope", tmp_path / "out.npz")
    with pytest.raises(WeightsUnavailable):  # folders that exist: the weights are what is missing
        folder_metrics(real, fake, fid=True)


def test_an_unreadable_file_in_one_folder_needs_no_pair_advice(tmp_path):
    real, _, _ = _folders(tmp_path, n=3)
    (real / "2.png").write_bytes(b"\x89PNG truncated")
    proc = subprocess.run([sys.executable, "-m", "latentbench.cli", "stats", "--images", str(real), "--out",
                           str(tmp_path / "s.npz"), "--extractor", "domain-mnist"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "move it out of the folder." in proc.stderr and "its pair" not in proc.stderr
    assert not (tmp_path / "s.npz").exists()


def test_bad_inputs_fail_clearly(tmp_path):
    real, fake, _ = _folders(tmp_path)
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(fake / "0.png")
    with pytest.raises(ValueError, match=r"0.png: the real image is \d+x\d+ \(H x W\) but the fake one is 20x40"):
        folder_metrics(real, fake, psnr=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(fake / "0.png")
    (fake / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="1 file\\(s\\) that are not images ignored \\(notes.txt\\)"):
        folder_metrics(real, fake, psnr=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        folder_metrics(tmp_path / "empty", fake, psnr=True)
    with pytest.raises(ValueError, match="choose at least one metric"):
        folder_metrics(real, fake)
    real, fake, _ = _folders(tmp_path / "again")
    (real / "2.png").write_bytes(b"not a png")
    proc = _cli("--real", str(real), "--fake", str(fake), "--ssim")
    assert proc.returncode == 2 and f"cannot decode image {real / '2.png'}" in proc.stderr
    assert "move it out of the folder" in proc.stderr and "--on_bad_image" not in proc.stderr  # no such option here
    proc = _cli("--real", str(tmp_path / "nope"), "--fake", str(fake), "--ssim")
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_folders_are_listed_as_the_bench_lists_them_and_bad_options_are_refused(tmp_path):
    real, fake, pairs = _folders(tmp_path)
    hidden = fake / ".ipynb_checkpoints"
    hidden.mkdir()
    for name in ("0.png", "3.png"):  # copies a notebook left behind, and a macOS resource fork
        Image.fromarray(pairs[0][1]).save(hidden / name)
    (fake / "._0.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    result = folder_metrics(real, fake, psnr=True)
    assert result["psnr"]["n"] == 5  # neither the hidden folder's copies nor the resource fork
    with pytest.raises(ValueError, match="--batch_size must be >= 1"):
        folder_metrics(real, fake, psnr=True, batch_size=0)
    with pytest.raises(ValueError, match="0.png is a file: give a folder of images"):
        folder_metrics(real / "0.png", fake, psnr=True)


def test_missing_inception_weights_explain_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    real, fake, _ = _folders(tmp_path)
    proc = _cli("--real", str(real), "--fake", str(fake), "--fid")
    assert proc.returncode == 2 and "weights-inception-2015-12-05-6726825d.pth" in proc.stderr


def test_fid_weights_are_checked_before_the_paired_metrics_read_an_image(tmp_path, monkeypatch):
    """--psnr --fid without Inception's weights stops at once, not after a pass over every pair."""
    import latentbench.benchmark.standalone as standalone
    from latentbench.weights import WeightsUnavailable

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    real, fake, _ = _folders(tmp_path)
    read = []
    monkeypatch.setattr(standalone, "paired_metrics", lambda *a, **k: read.append(a) or {})
    with pytest.raises(WeightsUnavailable, match="weights-inception"):
        folder_metrics(real, fake, psnr=True, fid=True)
    assert read == []


def test_fid_against_saved_and_adm_reference_statistics(tmp_path):
    from latentbench.benchmark.standalone import save_folder_stats

    real, fake, _ = _folders(tmp_path, n=12, size=32)
    direct = folder_metrics(real, fake, fid=True, extractor="domain-mnist")["fid"]
    stats = save_folder_stats(real, tmp_path / "real.npz", extractor_name="domain-mnist")
    from_npz = folder_metrics(stats, fake, fid=True, extractor="domain-mnist")["fid"]
    assert from_npz["value"] == pytest.approx(direct["value"], rel=1e-9) and from_npz["n_real"] == 12
    # without --extractor, a stats file's own extractor is used (not inception-tf, whose weights are absent here)
    assert folder_metrics(stats, fake, fid=True)["fid"]["value"] == from_npz["value"]
    # another --extractor is refused for the file's, before its weights are looked for (none here)
    with pytest.raises(ValueError, match="real.npz was computed with domain-mnist, not inception-tf; pass --extractor domain-mnist"):
        folder_metrics(stats, fake, fid=True, extractor="inception-tf")
    with np.load(stats) as f:
        np.savez(tmp_path / "adm.npz", mu=f["mu"], sigma=f["sigma"])  # an ADM reference batch: mu and sigma only
    with pytest.raises(ValueError, match="pass --extractor inception-tf"):
        folder_metrics(tmp_path / "adm.npz", fake, fid=True, extractor="domain-mnist")
    np.savez(tmp_path / "bad.npz", arr_0=np.zeros(3))
    with pytest.raises(ValueError, match="mu"):
        folder_metrics(tmp_path / "bad.npz", fake, fid=True, extractor="domain-mnist")


def test_fid_between_folders_matches_torch_fidelity(tmp_path, inception_weights):
    """What a reviewer runs: the same two folders through ``torch_fidelity.calculate_metrics``.

    The folders mix what torch-fidelity reads (PNG and JPEG; RGB, grey, palette and RGBA modes,
    all converted to RGB with alpha dropped), so decoding, colour conversion, the Inception
    features and the distance are all compared at once. 10 images in 2048 dimensions make
    singular covariances, where the methods' rounding noise differs (~1e-5 relative; README).
    """
    torch_fidelity = pytest.importorskip("torch_fidelity")
    rng = np.random.default_rng(5)
    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir(), fake.mkdir()
    for i in range(10):
        for folder, shift in ((real, 0), (fake, 40)):
            pixels = np.clip(rng.integers(0, 200, (48, 48, 3)) + shift, 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            mode = ("RGB", "L", "P", "RGBA", "RGB")[i % 5]
            image = image.convert(mode) if mode != "P" else image.quantize(64)
            image.save(folder / f"{i}.{'jpg' if i % 5 == 4 else 'png'}", **({"quality": 80} if i % 5 == 4 else {}))
    ours = folder_metrics(real, fake, fid=True, extractor_weights=str(inception_weights))["fid"]
    theirs = torch_fidelity.calculate_metrics(input1=str(real), input2=str(fake), fid=True, cuda=False, cache=False,
                                              feature_extractor_weights_path=str(inception_weights), verbose=False)
    assert ours["n"] == ours["n_real"] == 10
    assert ours["value"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)
    assert ours["value"] > 1.0  # shifted fakes: not a vanishing distance


def test_identical_pairs_give_infinite_psnr_in_strict_json(tmp_path):
    real, fake, _ = _folders(tmp_path, n=3)
    (fake / "0.png").write_bytes((real / "0.png").read_bytes())  # one reconstruction equals its original
    proc = _cli("--real", str(real), "--fake", str(fake), "--psnr", "--json")
    assert proc.returncode == 0, proc.stderr
    psnr = json.loads(proc.stdout, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))["psnr"]
    assert psnr["value"] == "inf" and psnr["exact"] == 1
    pairs = [(np.asarray(Image.open(real / n)), np.asarray(Image.open(fake / n))) for n in ("sub/1.png", "2.png")]
    finite = np.mean([peak_signal_noise_ratio(a, b, data_range=255) for a, b in pairs])
    assert psnr["finite_mean"] == pytest.approx(finite, rel=1e-12)  # the other pairs are not lost to the one exact
    proc = _cli("--real", str(real), "--fake", str(fake), "--psnr")
    assert f"psnr: inf (n=3) (infinite: 1 pair(s) identical after uint8 rounding, MSE 0; {finite:.6g} over the other 2)" \
        in proc.stdout


def test_bright_images_are_measured_not_mistaken_for_zero_one_images(tmp_path, monkeypatch):
    """LPIPS gets the decoded uint8 images: a folder of bright images is not refused as [0, 1] input."""
    import lpips

    from latentbench.benchmark import perceptual

    rng = np.random.default_rng(2)
    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir(), fake.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(140, 256, (40, 40, 3), dtype=np.uint8)).save(real / f"{i}.png")
        Image.fromarray(rng.integers(140, 256, (40, 40, 3), dtype=np.uint8)).save(fake / f"{i}.png")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    monkeypatch.setattr(perceptual, "build_lpips", lambda net: model)
    out = folder_metrics(real, fake, lpips=True)
    assert out["lpips"]["n"] == 2 and out["lpips"]["value"] > 0


def test_statistics_and_tiny_folders_fail_clearly(tmp_path):
    from latentbench.benchmark.standalone import save_folder_stats

    real, fake, _ = _folders(tmp_path, n=3, size=32)
    stats = save_folder_stats(real, tmp_path / "REAL.NPZ", extractor_name="domain-mnist")
    with pytest.raises(ValueError, match=r"is a statistics file, which serves --fid only: psnr compare images"):
        folder_metrics(stats, fake, fid=True, psnr=True, extractor="domain-mnist")
    assert folder_metrics(stats, fake, fid=True, extractor="domain-mnist")["fid"]["n_real"] == 3  # .NPZ is a statistics file too
    one = tmp_path / "one"
    one.mkdir()
    (real / "0.png").rename(one / "0.png")
    with pytest.raises(ValueError, match=f"at least 2 images per side .* but {one} holds 1: add images"):
        folder_metrics(one, fake, fid=True, extractor="domain-mnist")
    with pytest.raises(ValueError, match=f"but {one} holds 1"):
        folder_metrics(real, one, fid=True, extractor="domain-mnist")
    with pytest.raises(ValueError, match=f"but {one} holds 1"):
        save_folder_stats(one, tmp_path / "one.npz", extractor_name="domain-mnist")
    assert not (tmp_path / "one.npz").exists()
    with pytest.raises(ValueError, match="--out .*stats_noext must end in .npz"):  # refused before any work
        save_folder_stats(real, tmp_path / "stats_noext", extractor_name="domain-mnist")
    (tmp_path / "text.npz").write_text("not numpy")
    with pytest.raises(ValueError, match="text.npz is not a readable .npz of statistics"):
        folder_metrics(tmp_path / "text.npz", fake, fid=True, extractor="domain-mnist")


def test_every_unreadable_file_is_named_in_one_error(tmp_path):
    from latentbench.data import BadImageError

    real, fake, _ = _folders(tmp_path)
    (real / "0.png").write_bytes(b"")
    (fake / "sub" / "3.png").write_text("not an image")
    with pytest.raises(BadImageError) as e:
        folder_metrics(real, fake, psnr=True)
    assert e.value.path == str(real / "0.png")
    assert f"2 files are unreadable in all; the others: {fake / 'sub' / '3.png'} (" in str(e.value)
    (fake / "0.png").write_bytes(b"\x89PNG")  # the bad file's partner: named too
    with pytest.raises(BadImageError) as e:
        folder_metrics(real, fake, psnr=True)
    assert f"3 files are unreadable in all; the others: {fake / '0.png'} (" in str(e.value)


def test_fid_names_the_unreadable_files_of_both_folders_in_one_error(tmp_path):
    """--fid alone stopped at the real folder's unreadable files: the fake folder's came one rerun later."""
    from latentbench.data import BadImageError

    real, fake, _ = _folders(tmp_path)
    (real / "0.png").write_bytes(b"")
    (fake / "sub" / "3.png").write_text("not an image")
    with pytest.raises(BadImageError) as e:
        folder_metrics(real, fake, fid=True, extractor="domain-mnist")
    assert e.value.path == str(real / "0.png")
    assert f"2 files are unreadable in all; the others: {fake / 'sub' / '3.png'} (not a recognised" in str(e.value)


def test_colour_conversions_that_change_the_numbers_are_warned_of(tmp_path):
    """Grayscale against colour and dropped transparency are the ADM / torch-fidelity conventions, but silent they hid
    mistakes: RGBA fakes with alpha 0 everywhere scored PSNR inf against their opaque originals."""
    import warnings

    real, fake, pairs = _folders(tmp_path, n=4, size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # plain RGB folders: nothing to say
        folder_metrics(real, fake, psnr=True)
    Image.fromarray(pairs[0][1]).convert("L").save(fake / "0.png")
    with pytest.warns(UserWarning, match=r"1 pair\(s\) set a grayscale image against a colour one \(e.g. 0.png: real RGB, "
                                         r"fake L\)"):
        folder_metrics(real, fake, psnr=True)
    transparent = np.dstack([pairs[2][0], np.zeros((32, 32), np.uint8)])  # the real image, fully transparent
    Image.fromarray(transparent, "RGBA").save(fake / "2.png")
    with pytest.warns(UserWarning, match=r"1 fake image\(s\) have transparent pixels: alpha is dropped"):
        out = folder_metrics(real, fake, psnr=True)
    assert out["psnr"]["exact"] == 1  # the dropped alpha leaves the original's colours: an identical pair
    opaque = np.dstack([pairs[2][0], np.full((32, 32), 255, np.uint8)])
    Image.fromarray(opaque, "RGBA").save(fake / "2.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*grayscale image against a colour one")
        folder_metrics(real, fake, psnr=True)  # an opaque alpha band changes nothing: no transparency warning


def _write_la16_png(path, gray16):
    """A 16-bit grayscale + alpha PNG (colour type 4), opaque; Pillow cannot write one, so its chunks are written here."""
    import struct
    import zlib

    h, w = gray16.shape
    rows = [b"\x00" + np.dstack([row, np.full_like(row, 65535)]).astype(">u2").tobytes() for row in gray16[:, None]]

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


def test_a_16_bit_gray_alpha_png_counts_as_grayscale(tmp_path):
    """Pillow opens a 16-bit grayscale + alpha PNG as RGBA, so against an 8-bit grayscale real image it was warned of as
    "a grayscale image against a colour one (real L, fake RGBA)"; it is named LA;16B and counts as grayscale."""
    import warnings

    from latentbench.data.images import decode

    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir(), fake.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
        Image.fromarray(gray, "L").save(real / f"{i}.png")
        _write_la16_png(fake / f"{i}.png", gray.astype(np.uint16) * 257)  # the same image at 16 bits
    decoded = decode(fake / "0.png")
    assert decoded.mode == "LA;16B" and not decoded.transparent
    assert np.array_equal(np.asarray(decoded.image)[..., 0], np.asarray(Image.open(real / "0.png")))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out = folder_metrics(real, fake, psnr=True)
    assert out["psnr"]["exact"] == 3


def test_fid_folders_of_different_colour_are_warned_of(tmp_path):
    real, fake, pairs = _folders(tmp_path, n=6, size=32)
    for i, (_, b) in enumerate(pairs):
        name = f"sub/{i}.png" if i % 2 else f"{i}.png"
        Image.fromarray(b).convert("L").save(fake / name)
    with pytest.warns(UserWarning, match=r"the two sides differ in colour \(real RGB: 6; fake L: 6\)"):
        folder_metrics(real, fake, fid=True, extractor="domain-mnist")


def test_images_saved_on_another_scale_are_warned_of(tmp_path):
    """A float32 TIFF in [0, 1] (as scikit-image and tifffile save one) is read on the 0..255 scale, so both sides
    measured near-black: PSNR 62.8 dB for images 31 dB apart, without a word. The same for 8-bit data in a 16-bit file."""
    import warnings

    real, fake, pairs = _folders(tmp_path, n=3, size=32)
    for folder, side in ((real, 0), (fake, 1)):
        for i, pair in enumerate(pairs):
            name = f"sub/{i}.png" if i % 2 else f"{i}.png"
            (folder / name).unlink()
            Image.fromarray(pair[side][..., 0].astype(np.float32) / 255).save((folder / name).with_suffix(".tif"))
    with pytest.warns(UserWarning) as record:
        folder_metrics(real, fake, psnr=True)
    assert [re.search(r"^3 (real|fake) image\(s\) look saved on another scale .*\(e.g. .*0.tif: F with every value in "
                      r"\[0, 1\]\).*round\(value \* 255\)\)$", str(w.message))[1] for w in record] == ["real", "fake"]
    for i, pair in enumerate(pairs):  # the same images on the 0..255 scale: measured as they are, nothing to say
        name = f"sub/{i}.tif" if i % 2 else f"{i}.tif"
        Image.fromarray(pair[0][..., 0].astype(np.float32)).save(real / name)
        Image.fromarray(pair[1][..., 0].astype(np.float32)).save(fake / name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        folder_metrics(real, fake, psnr=True)
    Image.fromarray(pairs[0][1][..., 0].astype(np.uint16)).save(fake / "0.tif")  # 8-bit values in a 16-bit file
    with pytest.warns(UserWarning, match=r"1 fake image\(s\) look saved .*0.tif: I;16 with every value in 0..255\)"):
        folder_metrics(real, fake, psnr=True)


def test_16bit_rgb_files_of_8bit_values_are_warned_of_not_measured_as_identical_silently(tmp_path):
    """16-bit RGB TIFFs (as tifffile and scikit-image save a uint16 array) holding 0..255 values read black on both
    sides, Pillow keeping each value's high byte: the pairs measured PSNR inf and SSIM 1 without a word, though
    they differ."""
    import tifffile  # scikit-image's dependency

    real, fake, pairs = _folders(tmp_path, n=3, size=32)
    for folder, side in ((real, 0), (fake, 1)):
        for i, pair in enumerate(pairs):
            name = f"sub/{i}.png" if i % 2 else f"{i}.png"
            (folder / name).unlink()
            tifffile.imwrite((folder / name).with_suffix(".tif"), pair[side].astype(np.uint16))
    with pytest.warns(UserWarning) as record:
        out = folder_metrics(real, fake, psnr=True, ssim=True)
    assert out["psnr"]["value"] == float("inf") and out["ssim"]["value"] == 1  # measured as read: black against black
    assert [re.search(r"^3 (real|fake) image\(s\) look saved on another scale .*\(e.g. .*0.tif: RGB with 16 bits per "
                      r"channel, every value in 0..255\)", str(w.message))[1] for w in record] == ["real", "fake"]


def test_exif_orientation_is_warned_of_and_a_turned_partner_explained(tmp_path):
    """Camera JPEGs carry an EXIF orientation that ADM and torch-fidelity do not apply, but Hugging Face datasets
    does: fakes made from the turned images were compared turned (square) or refused as another size, without a word
    of why."""
    from PIL import ImageOps

    real, fake, pairs = _folders(tmp_path, n=2, size=32)
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise for display
    stored = Image.fromarray(np.ascontiguousarray(pairs[0][0][:24]))  # 24 x 32 (H x W)
    stored.save(real / "0.jpg", exif=exif)
    stored.save(fake / "0.jpg")
    (real / "0.png").unlink()
    (fake / "0.png").unlink()
    with pytest.warns(UserWarning, match=r"1 real image\(s\) carry an EXIF orientation \(e.g. .*0.jpg: orientation 6\): "
                                         r"they are measured as stored"):
        folder_metrics(real, fake, psnr=True)
    ImageOps.exif_transpose(Image.open(real / "0.jpg")).save(fake / "0.jpg")  # 32 x 24: as a viewer shows it
    with pytest.raises(ValueError, match=r"0.jpg: the real image is 24x32 \(H x W\) but the fake one is 32x24; .*one is "
                                         r"the other turned by 90 degrees: was an EXIF orientation applied"):
        folder_metrics(real, fake, psnr=True)


def test_images_of_several_frames_are_warned_of(tmp_path):
    """An animated GIF is measured on its first frame: said, as the other conventions that drop part of a file."""
    real, fake, pairs = _folders(tmp_path, n=2, size=32)
    frames = [Image.fromarray(pairs[0][0]), Image.fromarray(255 - pairs[0][0])]
    frames[0].save(real / "0.gif", save_all=True, append_images=frames[1:])
    frames[0].save(fake / "0.gif")
    (real / "0.png").unlink()
    (fake / "0.png").unlink()
    with pytest.warns(UserWarning, match=r"1 real image\(s\) hold several frames \(e.g. .*0.gif: 2 frames: an animated "
                                         r"GIF or a multi-page TIFF\): only the first frame is measured"):
        result = folder_metrics(real, fake, psnr=True)
    assert result["psnr"]["n"] == 2


def test_a_folder_linked_twice_is_said_to_be_read_once(tmp_path):
    """fake/b, a link to fake/a, is read once (as a bench reads an image folder): the real folder's b/ files were
    reported "only in real" with no word of why, though `ls fake/b` shows them."""
    real, fake, pairs = _folders(tmp_path, n=2, size=32)
    (real / "sub2").mkdir()
    Image.fromarray(pairs[1][0]).save(real / "sub2" / "1.png")
    (fake / "sub2").symlink_to("sub", target_is_directory=True)
    with pytest.warns(UserWarning, match=r"fake: 1 folder\(s\) reached again through a link are not read again \(e\.g\. "
                                         r"sub2/, the folder sub/ read already\)"):
        with pytest.raises(ValueError, match=r"only in real: \['sub2/1\.png'\]"):
            folder_metrics(real, fake, psnr=True)
