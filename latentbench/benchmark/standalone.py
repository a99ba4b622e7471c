"""``latentbench metrics``: the suite's metrics on any two image folders.

PSNR, SSIM and LPIPS pair images by their path relative to each folder and refuse a
mismatch in names or sizes; a Fréchet distance compares the two folders' feature
statistics (counts may differ). Images are decoded as they are on disk (8-bit RGB, see
``latentbench.data.images``), with no resizing: these are the files a user would publish.
"""
from __future__ import annotations

import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latentbench.data import IMAGE_EXTENSIONS, BadImageError
from latentbench.data.images import Decoded, combine_bad_images, decode

# PIL modes without colour: an image in one of them is measured as its gray level replicated to R, G and B
# (LA;16B: a 16-bit grayscale + alpha PNG, which Pillow opens as RGBA; ``latentbench.data.images.file_mode``)
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N", "LA;16B"})


class ColourModes:
    """The colour modes of the files a command read, per side, to warn of conversions that change what is measured.

    Every image is measured as 8-bit RGB (``latentbench.data.images``): grayscale is replicated
    to three channels and alpha is dropped, not composited. Both are the ADM / torch-fidelity
    conventions, but a grayscale folder against a colour one, or transparent pixels, usually
    mean the wrong files were passed.
    """

    def __init__(self) -> None:
        self.modes = {"real": Counter(), "fake": Counter()}
        self.transparent: Counter = Counter()
        self.off_scale: dict[str, list[str]] = {"real": [], "fake": []}  # "file: mode with ..." of images read near-black
        self.oriented: dict[str, list[str]] = {"real": [], "fake": []}  # "file: orientation n", measured unturned
        self.animated: dict[str, list[str]] = {"real": [], "fake": []}  # "file: n frames", the first one measured
        self.mismatched: list[tuple[str, str, str]] = []  # (name, real mode, fake mode) of pairs gray against colour
        self.last: dict[str, str] = {}  # the mode of each side's last file

    def record(self, side: str, decoded: Decoded, name: str = "") -> None:
        mode = decoded.mode
        self.modes[side][mode] += 1
        self.transparent[side] += decoded.transparent
        self.last[side] = mode
        if decoded.off_scale:
            self.off_scale[side].append(f"{name}: {mode} with {decoded.off_scale}")
        if decoded.orientation != 1:
            self.oriented[side].append(f"{name}: orientation {decoded.orientation}")
        if decoded.frames > 1:
            self.animated[side].append(f"{name}: {decoded.frames} frames")

    def record_pair(self, name: str) -> None:
        """Note the pair ``name`` whose two files were the last ones recorded, if it sets gray against colour."""
        real_mode, fake_mode = self.last["real"], self.last["fake"]
        if (real_mode in GRAYSCALE_MODES) != (fake_mode in GRAYSCALE_MODES):
            self.mismatched.append((name, real_mode, fake_mode))

    def warn(self, paired: bool) -> None:
        """One warning per conversion worth knowing of: transparent pixels, and grayscale measured against colour
        (pair by pair for paired metrics, folder against folder for FID)."""
        for side, count in self.transparent.items():
            if count:
                warnings.warn(f"{count} {side} image(s) have transparent pixels: alpha is dropped, not composited, so the "
                              "colour stored under a transparent pixel is measured (as ADM and torch-fidelity read "
                              "them); flatten the images onto a background first if that is not what you meant",
                              stacklevel=2)
        for side, found in self.off_scale.items():
            if found:
                warnings.warn(f"{len(found)} {side} image(s) look saved on another scale than the one they are read on "
                              f"(e.g. {found[0]}): float images are read on the 0..255 scale and 16/32-bit integer ones "
                              "on 0..65535, so these measure as nearly black; save them as 8-bit images (a [0, 1] float "
                              "image as round(value * 255))", stacklevel=2)
        for side, found in self.oriented.items():
            if found:
                warnings.warn(f"{len(found)} {side} image(s) carry an EXIF orientation (e.g. {found[0]}): they are measured "
                              "as stored, not turned as image viewers (and Hugging Face datasets) show them, as ADM and "
                              "torch-fidelity read them; if the other folder's images were made from the turned images, "
                              "save these turned first (PIL.ImageOps.exif_transpose)", stacklevel=2)
        for side, found in self.animated.items():
            if found:
                warnings.warn(f"{len(found)} {side} image(s) hold several frames (e.g. {found[0]}: an animated GIF or a "
                              "multi-page TIFF): only the first frame is measured, as ADM and torch-fidelity read them",
                              stacklevel=2)
        if paired and self.mismatched:
            name, real_mode, fake_mode = self.mismatched[0]
            warnings.warn(f"{len(self.mismatched)} pair(s) set a grayscale image against a colour one (e.g. {name}: real "
                          f"{real_mode}, fake {fake_mode}): images are measured as RGB with gray replicated to three "
                          "channels, so the missing colour counts as error", stacklevel=2)
        kinds = {side: {m in GRAYSCALE_MODES for m in modes} for side, modes in self.modes.items() if modes}
        if not paired and len(kinds) == 2 and kinds["real"] != kinds["fake"]:
            shown = "; ".join(f"{side} " + ", ".join(f"{m}: {n}" for m, n in sorted(self.modes[side].items()))
                              for side in ("real", "fake"))
            warnings.warn(f"the two sides differ in colour ({shown}): images are measured as RGB with gray replicated to "
                          "three channels, so a grayscale side is compared with a colour one as it is", stacklevel=2)


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1 (images per forward pass), got {batch_size}")


def check_folder(directory: str | Path) -> Path:
    """``directory`` as a Path; an error unless it is a folder (checked before an extractor's weights are looked for:
    a mistyped folder is the first thing to say)."""
    root = Path(directory)
    if root.is_file():
        raise ValueError(f"{root} is a file: give a folder of images (for FID, --real may be an .npz of statistics)")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    return root


def list_images(directory: str | Path) -> dict[str, Path]:
    """Image files under ``directory`` (recursive), keyed by relative path; errors when there are none.

    Listed as the bench lists an image folder (``latentbench.data.folder.image_files``): hidden
    files and folders (``.ipynb_checkpoints``) and ``__MACOSX`` are not counted.
    """
    from latentbench.data.folder import image_files

    root = check_folder(directory)
    others: list[str] = []
    revisits: list[tuple[str, str]] = []
    files = {Path(p).relative_to(root).as_posix(): Path(p) for p in image_files(root, others, revisits)}
    if not files:
        raise ValueError(f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    if others:
        shown = ", ".join(Path(p).relative_to(root).as_posix() for p in others[:3]) + (", ..." if len(others) > 3 else "")
        warnings.warn(f"{root}: {len(others)} file(s) that are not images ignored ({shown})", stacklevel=1)
    if revisits:  # else a pair under such a path was reported "only in" the other folder, with no word of why
        again, first = (Path(p).relative_to(root).as_posix() for p in revisits[0])
        warnings.warn(f"{root}: {len(revisits)} folder(s) reached again through a link are not read again (e.g. "
                      f"{again}/, the folder {first}/ read already): each folder is read once, as a bench reads an image "
                      f"folder, so no file is listed under {again}/; copy the files there if the other folder pairs "
                      "them under that path", stacklevel=1)
    return files


def pair_images(real: dict[str, Path], fake: dict[str, Path]) -> list[tuple[str, Path, Path]]:
    """(name, real path, fake path) for every name in both folders; ValueError on any mismatch."""
    only_real, only_fake = sorted(set(real) - set(fake)), sorted(set(fake) - set(real))
    if only_real or only_fake:
        stem = lambda name: str(Path(name).with_suffix(""))  # noqa: E731
        by_stem = {stem(n) for n in only_fake}
        renamed = [n for n in only_real if stem(n) in by_stem]
        hint = (f"; {len(renamed)} differ only in their extension (e.g. {renamed[0]} against "
                f"{next(n for n in only_fake if stem(n) == stem(renamed[0]))}): pairs match whole file names, so save the "
                "fakes under the real files' names (the format may differ)" if renamed else "")
        nfc = lambda name: unicodedata.normalize("NFC", name)  # noqa: E731
        fake_by_nfc = {nfc(n): n for n in only_fake}
        recoded = [n for n in only_real if nfc(n) in fake_by_nfc]
        if recoded:  # shown with ascii(): printed as they are, the two names look the same
            hint += (f"; {len(recoded)} differ only in their Unicode normalisation (e.g. {ascii(recoded[0])} against "
                     f"{ascii(fake_by_nfc[nfc(recoded[0])])}: the same text, composed and decomposed, as macOS and some "
                     "archive tools write names): rename one folder's files to the other's form (e.g. NFC with `convmv "
                     "-r -f utf8 -t utf8 --nfc --notest DIR`)")
        raise ValueError(
            f"paired metrics need the same file names in both folders: {len(real)} real vs {len(fake)} fake images; "
            f"only in real: {only_real[:5]}{' ...' if len(only_real) > 5 else ''}; "
            f"only in fake: {only_fake[:5]}{' ...' if len(only_fake) > 5 else ''}{hint}"
        )
    return [(name, real[name], fake[name]) for name in sorted(real)]


def load_uint8(path: Path, modes: ColourModes | None = None, side: str = "fake", paired: bool = False) -> Tensor:
    """One image file as a (3, H, W) uint8 tensor, its colour mode recorded in ``modes`` under ``side``
    ("real" or "fake"); an unreadable one raises BadImageError naming it (``paired``: its partner too in the fix)."""
    try:
        decoded = decode(path)
    except BadImageError as err:  # these commands measure every file they are given: nothing is skipped
        raise BadImageError(err.path, err.reason, "Fix or replace the file, or move it out of the folder"
                            f"{' (and its pair out of the other folder)' if paired else ''}.") from None
    if modes is not None:
        modes.record(side, decoded, str(path))
    return torch.from_numpy(np.asarray(decoded.image).copy()).permute(2, 0, 1)


def same_size_batches(items: list[Any], load, batch_size: int) -> Iterator[list]:
    """Load items in order and group consecutive ones of one shape into batches of ``batch_size``.

    After an unreadable file nothing more is yielded, but the rest are still read, so that the
    BadImageError raised at the end names every unreadable file at once.
    """
    batch: list = []
    errors: list[BadImageError] = []
    for item in items:
        try:
            loaded = load(item)
        except BadImageError as err:
            errors.append(err)
            continue
        if errors:
            continue
        if batch and (len(batch) == batch_size or _shape(batch[-1]) != _shape(loaded)):
            yield batch
            batch = []
        batch.append(loaded)
    if errors:
        raise combine_bad_images(errors)
    if batch:
        yield batch


def _shape(loaded) -> tuple:
    return tuple(loaded[0].shape) if isinstance(loaded, tuple) else tuple(loaded.shape)


def _load_pair(pair: tuple[str, Path, Path], modes: ColourModes) -> tuple[Tensor, Tensor]:
    name, real_path, fake_path = pair
    loaded, errors = [], []
    for side, path in (("real", real_path), ("fake", fake_path)):  # both: a bad partner of a bad file is named too
        try:
            loaded.append(load_uint8(path, modes, side, paired=True))
        except BadImageError as err:
            errors.append(err)
    if errors:
        raise combine_bad_images(errors)
    modes.record_pair(name)
    real, fake = loaded
    if real.shape != fake.shape:
        turned = real.shape[1:] == fake.shape[:0:-1]  # H x W against W x H: one side turned by 90 degrees
        raise ValueError(f"{name}: the real image is {real.shape[1]}x{real.shape[2]} (H x W) but the fake one is "
                         f"{fake.shape[1]}x{fake.shape[2]}; paired metrics need equal sizes: save the fakes at the real "
                         "images' size" + ("; one is the other turned by 90 degrees: was an EXIF orientation applied to "
                                           "one side only? (the files are measured as stored; see "
                                           "PIL.ImageOps.exif_transpose)" if turned else ""))
    return real, fake


def paired_metrics(real_dir: str | Path, fake_dir: str | Path, names: list[str], lpips_net: str = "alex", batch_size: int = 50) -> dict[str, dict]:
    """PSNR / SSIM / LPIPS (any subset of ``names``) over file-name pairs."""
    from latentbench.benchmark.metrics import PSNR, SSIM

    metrics: dict[str, Any] = {}
    if "psnr" in names:
        metrics["psnr"] = PSNR()
    if "ssim" in names:
        metrics["ssim"] = SSIM()
    if "lpips" in names:
        from latentbench.benchmark.perceptual import LPIPS

        metrics["lpips"] = LPIPS(net=lpips_net)
    pairs = pair_images(list_images(real_dir), list_images(fake_dir))
    modes = ColourModes()
    for batch in same_size_batches(pairs, lambda pair: _load_pair(pair, modes), batch_size):
        real = torch.stack([r for r, _ in batch])  # uint8, as every metric takes it: no range guessing
        fake = torch.stack([f for _, f in batch])
        for metric in metrics.values():
            metric.update(real, fake)
    modes.warn(paired=True)
    results = {name: m.result() for name, m in metrics.items()}
    if "lpips" in results:
        results["lpips"]["net"] = lpips_net
    return results


def folder_features(directory: str | Path, extractor, batch_size: int = 50, files: list[Path] | None = None,
                    modes: ColourModes | None = None, side: str = "fake") -> Iterator[Tensor]:
    """Features of every image in a folder (or of ``files``, in that order), batch by batch; the files' colour
    modes recorded in ``modes`` under ``side``."""
    files = list(list_images(directory).values()) if files is None else files
    with torch.inference_mode():
        for batch in same_size_batches(files, lambda path: load_uint8(path, modes, side), batch_size):
            yield extractor(torch.stack(batch)).double()


def is_statistics_file(path: str | Path) -> bool:
    """Whether ``--real`` names an ``.npz`` of feature statistics rather than an image folder."""
    return Path(path).suffix.lower() == ".npz"


def folder_stats(directory: str | Path, extractor, batch_size: int = 50):
    """Feature statistics (``FeatureStats``) of every image in a folder; ValueError below 2 images."""
    from latentbench.benchmark.fid import FeatureStats

    stats = FeatureStats.empty(extractor.dim)
    modes = ColourModes()
    for features in folder_features(directory, extractor, batch_size, modes=modes, side="real"):
        stats.update(features)
    _need_two(stats.n, directory)
    modes.warn(paired=False)
    return stats


def _need_two(n: int, directory: str | Path) -> None:
    if n < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 images per side (a covariance), but {directory} "
                         f"holds {n}: add images to it")


def _fid_inputs(real: str | Path, extractor_name: str | None, extractor_weights: str | None):
    """The extractor (its weights checked) and, when ``real`` is a statistics file, its reference; else None.

    Without ``extractor_name``: the one a ``latentbench stats`` file was computed with, else inception-tf.
    """
    from latentbench.benchmark.extractors import create_extractor
    from latentbench.benchmark.fid import statistics_extractor

    if is_statistics_file(real) and not Path(real).is_file():  # before an extractor's missing weights hide the typo
        raise FileNotFoundError(f"statistics file {real} does not exist: write one with `latentbench stats --images DIR "
                                f"--out {Path(real).name}`, or pass the real image folder")
    made_with = statistics_extractor(real) if is_statistics_file(real) else None
    if extractor_name is None:
        extractor_name = made_with or "inception-tf"
    elif made_with and made_with != extractor_name:  # said before the extractor's weights are looked for
        raise ValueError(f"{real} was computed with {made_with}, not {extractor_name}; pass --extractor {made_with} "
                         "(or leave --extractor out)")
    extractor = create_extractor(extractor_name, weights=extractor_weights)
    return extractor, load_reference(real, extractor) if is_statistics_file(real) else None


RESAMPLED = {  # what a --bootstrap interval of `metrics` resamples, by how --real was given
    "pairs": "pairs of same-named images, jointly",
    "sides": "each folder on its own (their file names do not pair)",
    "fake": "the fake images only: the --real statistics file is taken as exact",
}


def _fid_with(extractor, reference, real_dir: str | Path, fake_dir: str | Path, bootstrap: int,
              batch_size: int, colour_warnings: bool = True) -> dict[str, Any]:
    """Fréchet distance between the feature statistics of two folders (or of a ``--real`` statistics file and a
    folder), with the extractor built and the statistics file loaded already (``_fid_inputs``).

    The bootstrap resamples both folders, as the bench's rFID does (``FrechetDistance``'s
    ``resample``): same-named files as pairs, folders whose names do not pair each on its own.
    Against a statistics file only the fake side can be resampled; the result says which.
    ``colour_warnings``: warn of colour conversions (off when paired metrics read the files already).
    """
    from latentbench.benchmark.fid import FeatureStats, FrechetDistance, ReferenceStats

    fake = list_images(fake_dir)
    real_files = None
    if reference is not None:
        how, fake_files = "fake", list(fake.values())
    else:
        real = list_images(real_dir)
        how = "pairs" if set(real) == set(fake) else "sides"
        real_files = list(real.values())  # in `stats`' order, so the real statistics hash as `stats` writes them
        fake_files = [fake[name] for name in real] if how == "pairs" else list(fake.values())  # pairs: row i, file i
    metric = FrechetDistance(extractor.dim, reference=reference, bootstrap=bootstrap,
                             resample="sides" if how == "sides" else "pairs")
    modes = ColourModes()
    if real_files is not None:
        stats, seen = FeatureStats.empty(extractor.dim), 0
        try:
            for features in folder_features(real_dir, extractor, batch_size, real_files, modes, "real"):
                metric.update_real(features, index=torch.arange(seen, seen + len(features)))
                stats.update(features)
                seen += len(features)
        except BadImageError as err:  # the fakes' unreadable files are named in the same error, not on the next run
            raise combine_bad_images([err, *_unreadable(fake_files)]) from None
        _need_two(seen, real_dir)
        # what the value was measured against, for its hash (not used in the FID; the metric checks the covariance)
        reference = ReferenceStats(stats.mu, stats.sigma, stats.n)
    seen = 0
    for features in folder_features(fake_dir, extractor, batch_size, fake_files, modes, "fake"):
        metric.update(features, index=torch.arange(seen, seen + len(features)))
        seen += len(features)
    _need_two(seen, fake_dir)
    if colour_warnings:
        modes.warn(paired=False)  # against a statistics file only the fakes' transparency can be told
    result = metric.compute()
    result.update(label=extractor.metric_name, extractor=extractor.id, weights_sha256=extractor.weights_sha256,
                  reference_sha256=reference.sha256)
    if bootstrap:
        result["resampled"] = RESAMPLED[how]
    return result


def _unreadable(files: list[Path]) -> list[BadImageError]:
    """The BadImageError of every file in ``files`` that does not decode."""
    errors = []
    for path in files:
        try:
            load_uint8(path)
        except BadImageError as err:
            errors.append(err)
    return errors


def load_reference(path: str | Path, extractor) -> Any:
    """Reference statistics from an npz for ``--real`` (``fid.load_reference_for``: refused for another extractor)."""
    from latentbench.benchmark.fid import load_reference_for

    return load_reference_for(path, extractor, fix="pass --extractor {expected}")


def save_folder_stats(directory: str | Path, out: str | Path, extractor_name: str = "inception-tf",
                      extractor_weights: str | None = None, batch_size: int = 50) -> Path:
    """Feature statistics of a folder as an npz that ``--real`` accepts (tagged with the extractor)."""
    check_batch_size(batch_size)
    if Path(out).suffix.lower() != ".npz":  # --real tells a statistics file from a folder by it
        raise ValueError(f"--out {out} must end in .npz (metrics --real takes a statistics file by that suffix)")
    from latentbench.benchmark.extractors import create_extractor

    check_folder(directory)
    extractor = create_extractor(extractor_name, weights=extractor_weights)
    stats = folder_stats(directory, extractor, batch_size)
    return stats.save_npz(out, extractor_id=extractor.id, weights_sha256=extractor.weights_sha256,
                          preprocessing=extractor.preprocessing, source=str(directory))


def folder_metrics(real: str | Path, fake: str | Path, fid: bool = False, psnr: bool = False, ssim: bool = False,
                   lpips: bool = False, lpips_net: str = "alex", extractor: str | None = None,
                   extractor_weights: str | None = None, bootstrap: int = 0, batch_size: int = 50) -> dict[str, Any]:
    """The selected metrics between two image folders.

    Returns:
        ``{metric: {"value": ..., "n": ..., ...}}``.
    """
    check_batch_size(batch_size)
    names = [name for name, on in (("psnr", psnr), ("ssim", ssim), ("lpips", lpips)) if on]
    if not names and not fid:
        raise ValueError("choose at least one metric: --fid, --psnr, --ssim, --lpips")
    if names and is_statistics_file(real):
        raise ValueError(f"--real {real} is a statistics file, which serves --fid only: {', '.join(names)} compare "
                         "images pair by pair, so pass the image folder as --real (or drop those metrics)")
    for folder in ([] if is_statistics_file(real) else [real]) + [fake]:
        check_folder(folder)  # before the extractor's weights are looked for; the paired metrics list both anyway
    if fid:  # its options, weights (and a --real statistics file) are checked before any image is read
        from latentbench.benchmark.fid import check_bootstrap

        check_bootstrap(bootstrap, "--bootstrap")
        fid_extractor, reference = _fid_inputs(real, extractor, extractor_weights)
    results = paired_metrics(real, fake, names, lpips_net, batch_size) if names else {}
    if fid:  # colour conversions were warned of by the paired metrics, which read the same files
        results["fid"] = _fid_with(fid_extractor, reference, real, fake, bootstrap, batch_size, colour_warnings=not names)
    return results
