"""The ``latentbench`` command (jsonargparse subcommands).

    latentbench list                                  registered tokenizers, generators and shipped protocols
    latentbench bench --tokenizer sdvae --protocol ci train, reconstruct, measure, train a generator, record
    latentbench metrics --real DIR --fake DIR --psnr --ssim --fid   metrics of two image folders
    latentbench stats --images DIR --out ref.npz      FID feature statistics of a folder, for metrics --real
    latentbench leaderboard                           re-render every table from its results.jsonl
    latentbench compare --result ID                   a result beside the papers' figures of its protocol
    latentbench regress [--update]                    the `smoke` regression gate against configs/regress/smoke.yaml
    latentbench perf                                  step times, FLOPs, MFU, codec img/s and memory of every CPU config
"""
from __future__ import annotations

import inspect
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Literal, Optional, Union

from latentbench.paths import LEADERBOARD_DIR, RUNS_DIR


def bench(
    tokenizer: str = "sdvae",
    protocol: str = "ci",
    ckpt: Optional[str] = None,
    trust_checkpoint: bool = False,
    train_steps: Optional[int] = None,
    seed: Optional[int] = None,
    on_bad_image: Literal["error", "skip"] = "error",
    runs_dir: Optional[str] = None,
    leaderboard_dir: Optional[str] = None,
    strategy: Literal["auto", "ddp"] = "auto",
    devices: int = 1,
    num_nodes: int = 1,
    precision: Literal["auto", "32-true", "bf16-mixed"] = "auto",
    compile: bool = False,
    dry_run: bool = False,
) -> None:
    """Bench a tokenizer under a protocol and append its row to the protocol's leaderboard.

    Args:
        tokenizer: family alias (sdvae), registered name (sdvae-ci), your own class as
            package.module:Class, or a YAML file with name/class_path, init_args, module_args.
        protocol: shipped protocol name (smoke, ci, imagenet256) or a protocol YAML file.
        ckpt: evaluate these weights instead of training (safetensors, or a torch file that
            loads with weights_only=True; a Lightning checkpoint's tokenizer.* keys work).
        trust_checkpoint: allow a torch checkpoint that needs full unpickling (runs code from the file).
        train_steps: override the protocol's training budget (0 = evaluate as built, for pretrained weights).
        seed: override the protocol's seed.
        on_bad_image: unreadable images abort naming the file (error) or are skipped and counted (skip).
        runs_dir: where run directories (checkpoints, TensorBoard logs, stage results) go; default: this
            checkout's runs/.
        leaderboard_dir: root of the leaderboard tables; default: this checkout's leaderboards/.
        strategy: distributed training: auto (DDP when several processes) or ddp. There is no fsdp:
            generator training's EMA and weight export need unsharded parameters (README "Scaling out").
        devices: processes per node (GPUs; CPU processes without GPUs). On one machine the bench
            starts them itself under torchrun; under torchrun or srun it joins the launcher's.
        num_nodes: machines (launch with srun, or torchrun on each node; README "Scaling out").
        precision: training precision. auto: the protocol's (bf16-mixed), except on a CPU without
            fast bf16 (AVX2 only: ~100x slower than float32), where training runs in 32-true and
            the row is marked [32-true]. A value forces that precision.
        compile: torch.compile the tokenizer's iterative decoder (FlowMo's) for evaluation and
            generation: 1.06-1.5x faster decoding on the CPUs measured, after 1.5-3 minutes of
            compiling; it pays at paper scale, not at `ci` size (README "Cost").
        dry_run: check everything and print what the bench would run (the tokenizer and protocol
            as resolved, budgets, precisions, run directory and its finished stages, the stage time
            of the latest run of its table row), then stop: nothing is trained or written.
    """
    from functools import partial

    from latentbench.benchmark.harness import check_before_launch, run_bench
    from latentbench.distributed import Launch, launcher_rank, maybe_relaunch

    runs_dir, leaderboard_dir = runs_dir or str(RUNS_DIR), leaderboard_dir or str(LEADERBOARD_DIR)
    launch = Launch(strategy, devices, num_nodes)
    if dry_run:  # in this process, for any --devices: nothing is launched
        check_before_launch(tokenizer, protocol, ckpt, train_steps, seed, launch.world_size)
        run_bench(tokenizer, protocol, ckpt, trust_checkpoint, train_steps, seed, on_bad_image, runs_dir, leaderboard_dir,
                  launch=launch, precision=precision, compile=compile, dry_run=True)
        return
    maybe_relaunch(launch, _ARGS or sys.argv[1:], check=partial(check_before_launch, tokenizer, protocol, ckpt, train_steps, seed))
    record = run_bench(tokenizer, protocol, ckpt, trust_checkpoint, train_steps, seed, on_bad_image, runs_dir, leaderboard_dir,
                       launch=launch, precision=precision, compile=compile)
    if launcher_rank() != 0:  # the process group is left by now: ask the launcher which rank this is
        return
    print(f"leaderboard: {leaderboard_dir}/{record['protocol']['name']}/v{record['protocol']['version']}/README.md")
    for result in _run_results(record):  # FlowMo's run: 1a, then 1b
        _print_result(result, leaderboard_dir)


def _run_results(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every result of the run that wrote ``record`` (FlowMo's 1a and 1b), in stage order; ``record`` alone for a
    run of one result. run_bench returns the last one; the others are its run directory's stored record stages."""
    if not record["tokenizer"].get("variant"):
        return [record]
    from latentbench.benchmark.stages import Stages
    from latentbench.paths import REPO_ROOT

    stages = Stages(REPO_ROOT / record["run_dir"])  # display_path: relative to the checkout, or absolute
    stored = [stages.get(f"record-{variant}") for variant in (stages.get("train") or {}).get("variants") or {}]
    return [s["record"] for s in stored if s] or [record]


def _print_result(record: dict[str, Any], leaderboard_dir: str) -> None:
    """A result's summary lines, labelled as its table row; the last gives its record id."""
    from latentbench.benchmark.leaderboard import COLUMNS, row_name

    ordered = _in_order(record["metrics"], [key for key, _, _ in COLUMNS])  # the table's, also when read back (sorted)
    metrics = ", ".join(f"{v.get('label', k)} {v['value']:.4g} (n={v['n']})" if "value" in v else f"{k} n/a"
                        for k, v in ordered)
    print(f"{row_name(record)} under {record['protocol']['name']} v{record['protocol']['version']}: {metrics}")
    for key, metric in ordered:
        if "unavailable" in metric:  # why, here too: the terminal said "lpips n/a" and only the table's notes why
            print(f"  {key} n/a: {metric['unavailable']}")
    conv = (record.get("generation") or {}).get("convergence") or {}
    if conv.get("target") == "baseline":
        print(f"convergence: steps to {conv['baseline']}'s final gFID are in the leaderboard table (resolved from its rows)")
    elif conv.get("target") is not None:
        reached = conv["steps_to_target"]
        print(f"convergence: gFID <= {conv['target']} at step {reached}" if reached is not None
              else f"convergence: gFID target {conv['target']} not reached in {conv['budget']} steps")
    stages = _in_order(record["wall_time_s"], ["train", "eval", "generate"])  # in stage order, also when read back
    print("wall time per stage (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stages))
    from latentbench.benchmark.paper import load_paper_rows

    hint = ""
    if record["protocol"]["name"] in {row.protocol for row in load_paper_rows()}:  # compare refuses the others
        where = "" if Path(leaderboard_dir).resolve() == LEADERBOARD_DIR.resolve() else f" --leaderboard_dir {leaderboard_dir}"
        hint = f" (latentbench compare --result {record['id']}{where} sets it beside the papers' figures)"
    print(f"record id: {record['id']}{hint}")


def metrics(
    real: str,
    fake: str,
    fid: bool = False,
    psnr: bool = False,
    ssim: bool = False,
    lpips: bool = False,
    lpips_net: Literal["alex", "vgg"] = "alex",
    extractor: Optional[str] = None,
    extractor_weights: Optional[str] = None,
    bootstrap: int = 0,
    batch_size: int = 50,
    json: bool = False,
) -> None:
    """The suite's metrics between two image folders (PSNR/SSIM/LPIPS pair files by name).

    Args:
        real: folder of reference images, or an .npz of their statistics (`latentbench stats`, or an
            ADM reference batch such as VIRTUAL_imagenet256_labeled.npz) for FID.
        fake: folder of reconstructions or samples (same file names for paired metrics).
        fid: Fréchet distance of the two folders' features (extractor below).
        psnr: mean per-image PSNR on uint8 images.
        ssim: mean per-image SSIM (Gaussian 11/1.5, data_range 255).
        lpips: mean per-image LPIPS v0.1 (needs the backbone's ImageNet weights in the torch hub cache).
        lpips_net: LPIPS backbone.
        extractor: FID features: inception-tf (the papers' FID), domain-<source>, dinov2-vitb14; default:
            the one a --real statistics file was computed with, else inception-tf.
        extractor_weights: weights file of the extractor (default: its standard cache location).
        bootstrap: Poisson-bootstrap replicates for a 95% FID interval (0: none, else at least 10): both
            folders are resampled (same-named files as pairs); against a statistics file only the fakes.
        batch_size: images per forward pass.
        json: print one JSON object instead of lines (strict JSON: an infinite PSNR is the string "inf").
    """
    import math

    from latentbench.benchmark.standalone import folder_metrics

    results = folder_metrics(real, fake, fid, psnr, ssim, lpips, lpips_net, extractor, extractor_weights, bootstrap, batch_size)
    if json:
        print_json(results)
        return
    for name, result in results.items():
        interval = f" [{result['interval'][0]:.4f}, {result['interval'][1]:.4f}]" if result.get("interval") else ""
        others = (f"; {result['finite_mean']:.6g} over the other {result['n'] - result['exact']}"
                  if result.get("finite_mean") is not None else "")
        note = (f" (infinite: {result.get('exact', 'at least one')} pair(s) identical after uint8 rounding, MSE 0{others})"
                if math.isinf(result["value"]) else "")
        # a handful of images can leave the FID without its interval (warned): then nothing was resampled to say
        resampled = f"; the 95% interval resamples {result['resampled']}" if result.get("resampled") and interval else ""
        print(f"{result.get('label', name)}: {result['value']:.6g}{interval} (n={result['n']}{resampled}){note}")


def _in_order(mapping: dict[str, Any], order: list[str]) -> list[tuple[str, Any]]:
    """The mapping's items with the keys named in ``order`` first, in that order, then the others as they come."""
    return sorted(mapping.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))


def print_json(value) -> None:
    """Print strict JSON (RFC 8259): non-finite floats as the strings "inf", "-inf", "nan"."""
    import json

    from latentbench.benchmark.schema import finite_or_str

    print(json.dumps(finite_or_str(value), indent=1, sort_keys=True, allow_nan=False))


def stats(images: str, out: str, extractor: str = "inception-tf", extractor_weights: Optional[str] = None,
          batch_size: int = 50) -> None:
    """Save the feature statistics (mu, sigma, n, extractor id and weights hash) of an image folder.

    Args:
        images: folder of images.
        out: the .npz to write (atomically); pass it later as `metrics --real out.npz`.
        extractor: feature extractor (see `latentbench metrics --help`).
        extractor_weights: weights file of the extractor.
        batch_size: images per forward pass.
    """
    from latentbench.benchmark.standalone import save_folder_stats

    print(f"wrote {save_folder_stats(images, out, extractor, extractor_weights, batch_size)}")


def leaderboard(leaderboard_dir: Optional[str] = None) -> None:
    """Re-render every leaderboard table (README.md and plots) from its results.jsonl, and perf/README.md.

    Args:
        leaderboard_dir: root of the leaderboard tables (a bench's --leaderboard_dir); default: this
            checkout's leaderboards/.
    """
    from latentbench.benchmark.leaderboard import render_all

    root = Path(leaderboard_dir or LEADERBOARD_DIR)
    if not root.is_dir():
        raise FileNotFoundError(f"--leaderboard_dir {root} is not a folder: give the root of the leaderboard tables "
                                "(default: the repository's leaderboards/)")
    tables = render_all(root)
    if not tables:
        raise FileNotFoundError(f"no leaderboard tables under {root}: a table is <protocol>/v<N>/results.jsonl, "
                                "written by latentbench bench --leaderboard_dir")
    for table, written in tables.items():
        print(f"rendered {table}: {', '.join(written)}")
    if (root / "perf" / "README.md").is_file() and (root / "perf" / "perf.json").is_file():
        print(f"rendered {root / 'perf' / 'README.md'}")


def as_list(value: Union[list, str, int, None], name: str, cast=str) -> list | None:
    """A list option given as a YAML list (``'[a, b]'``), repeated ``--name+ x``, one value, or ``a,b``.

    jsonargparse on its own takes only the first two; ``--targets sdvae`` should just work.
    """
    if value is None or isinstance(value, list):
        return value
    items = [item.strip() for item in str(value).split(",") if item.strip()]
    try:
        return [cast(item) for item in items]
    except ValueError:
        raise ValueError(f"--{name}: expected comma-separated {cast.__name__} values, got {value!r}") from None


def regress(update: bool = False, seeds: Union[list[int], int, str, None] = None, families: Union[list[str], str, None] = None,
            golden: Optional[str] = None, precision: Literal["auto", "32-true", "bf16-mixed"] = "auto",
            strict: bool = False, tokenizers: Union[list[str], str, None] = None) -> None:
    """The regression gate: re-run every family's `smoke` bench and compare with the golden values.

    Exits 1, naming tokenizer and metric, when a metric moved from golden beyond its tolerance.

    Args:
        update: re-measure the golden values over --seeds instead of checking.
        seeds: seeds for --update, e.g. 0,1,2 (the default); tolerances come from their spread.
        families: run only these families, e.g. sdvae,rae (default: every family of the `smoke` protocol).
        golden: the golden file (default configs/regress/smoke.yaml, or smoke.<precision>.yaml when
            training runs in another precision than the protocol's bf16-mixed).
        precision: auto (the protocol's, or 32-true on a CPU without fast bf16) or a precision to force.
        strict: fail on any change beyond float rounding (1e-9 relative) instead of the seed-spread
            tolerance: for a change meant to move no number, on the kind of machine the golden
            values were measured on (the benches reproduce exactly there).
        tokenizers: gate tokenizers of your own instead (pkg.mod:Class or a YAML file, as bench --tokenizer
            takes them), each benched under `smoke`; needs --golden, a file of yours (create it with --update).
    """
    from latentbench.benchmark.regress import regress as run_gate

    failures = run_gate(Path(golden) if golden else None, update, as_list(seeds, "seeds", int),
                        as_list(families, "families"), precision=precision, strict=strict,
                        own=as_list(tokenizers, "tokenizers"))
    if failures:
        print("regression gate FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        sys.exit(1)
    if not update:
        print("regression gate passed")


def compare(result: str, family: Optional[str] = None, json: bool = False, leaderboard_dir: Optional[str] = None) -> None:
    """Set a result beside the papers' reported figures of the same protocol (leaderboards/paper/).

    Args:
        result: a record id (or unique prefix) from any leaderboards/<protocol>/v<N>/results.jsonl,
            a results.jsonl (its last row), or a run directory's stages/record.json.
        family: which paper rows: a name matched in their source and row (MAETok, FlowMo, RAE,
            SD-VAE), or "all"; default: the rows of the result's tokenizer config, else its family's.
        json: print the comparison as JSON instead of a table.
        leaderboard_dir: where to look the record id up (a bench's --leaderboard_dir); default: this
            checkout's leaderboards/.
    """
    from latentbench.benchmark.paper import compare as compare_rows
    from latentbench.benchmark.paper import (
        comparison_title,
        find_record,
        format_comparison,
        load_paper_rows,
    )

    record = find_record(result, Path(leaderboard_dir or LEADERBOARD_DIR))
    entries = compare_rows(record, load_paper_rows(), family)
    if json:
        print_json(entries)
    else:
        print(comparison_title(record, entries, family) + "\n\n" + format_comparison(entries))


def perf(targets: Union[list[str], str, None] = None, protocol: str = "ci", steps: int = 8, warmup: int = 3,
         batch_size: Optional[int] = None, out: Optional[str] = None, json: bool = False, compile: bool = False) -> None:
    """What the suite's own work costs on this machine: step times fp32/bf16, FLOPs, MFU, codec img/s, memory.

    Every config is measured in its own process (its peak memory is its own). MFU divides a
    step's achieved FLOP/s by this machine's matrix-product peak, measured first.

    Args:
        targets: configs to measure, comma-separated: a tokenizer (sdvae, or any --tokenizer value) or a
            generator config on a tokenizer's latents (dit-ci@sdvae); default: the protocol's CPU configs.
        protocol: protocol whose data, batch sizes and tokenizer sizes are used.
        steps: timed training steps per precision (the median is reported).
        warmup: untimed steps first.
        batch_size: training batch instead of the protocol's (e.g. 16 for the shapes of
            configs/tokenizers/perf/*-anchor.yaml).
        out: JSON file to write (default leaderboards/perf/perf.json, rendered beside the tables: only a
            full run with the default protocol, steps and warmup, without --targets or --batch_size, may write it).
        json: print the JSON instead of the table.
        compile: also time the decoding that `bench --compile` compiles (FlowMo's decoder), and
            the compile time; needs a C++ compiler.
    """
    from latentbench.benchmark.perf import PERF_PATH, check_counts, parse_target, run_perf

    check_counts(steps, warmup, batch_size)  # run_perf checks too, but the --out checks below would ask for --out first
    targets = as_list(targets, "targets")
    target = Path(out) if out else PERF_PATH  # --out "" is no --out
    committed = target.resolve() == PERF_PATH.resolve()  # --out naming the committed file is no way round
    if committed and (targets or batch_size is not None):
        raise ValueError(f"--targets / --batch_size measure a part of the table, which would replace the committed "
                         f"{PERF_PATH} (every config's row); pass --out FILE to write it elsewhere")
    changed = [f"--{k} {v}" for k, v, default in (("protocol", protocol, "ci"), ("steps", steps, 8), ("warmup", warmup, 3))
               if v != default]
    if committed and changed:
        raise ValueError(f"{' '.join(changed)} differs from how the committed {PERF_PATH} is measured (--protocol ci "
                         "--steps 8 --warmup 3; the `ci` tables' Cost sections read it); pass --out FILE to write it elsewhere")
    result = run_perf([parse_target(t) for t in targets] if targets else None, protocol, steps, warmup,
                      target, log=(lambda m: None) if json else print, batch_size=batch_size,
                      compile=compile)
    if json:
        print_json(result)


def list_(kind: Literal["all", "tokenizers", "generators", "protocols"] = "all") -> None:
    """List registered tokenizers and generators, and shipped protocols.

    Args:
        kind: what to list.
    """
    from latentbench.benchmark.protocol import available_protocols, load_protocol
    from latentbench.generators import GENERATORS
    from latentbench.tokenizers import TOKENIZERS
    from latentbench.paths import require_checkout

    require_checkout()

    for what, registry in (("tokenizers", TOKENIZERS), ("generators", GENERATORS)):
        if kind in ("all", what):
            print(f"{what}:")
            width = max(map(len, registry.names()))  # rae-dinov2-b-dec-xl
            for name in registry.names():
                print(f"  {name:<{width}} {registry.help(name)}")
    if kind in ("all", "protocols"):
        print("protocols:")
        for name in available_protocols():
            proto = load_protocol(name)
            aliases = ", ".join(f"{k}->{v}" for k, v in proto.tokenizers.items())
            print(f"  {name:<16} v{proto.version}  {proto.description}  [{aliases}]")


_ARGS: list[str] = []  # the command line main() parsed (a multi-process bench re-executes it)

COMMANDS = {"bench": bench, "metrics": metrics, "stats": stats, "list": list_, "leaderboard": leaderboard,
            "regress": regress, "compare": compare, "perf": perf}
# every subcommand's bool parameter, as its flag (annotations are strings under `from __future__ import annotations`)
BOOLEAN_FLAGS = frozenset(f"--{name}" for command in COMMANDS.values()
                          for name, parameter in inspect.signature(command).parameters.items()
                          if parameter.annotation in (bool, "bool"))


def expand_bare_flags(argv: list[str]) -> list[str]:
    """Let boolean options stand alone (``--fid``) as well as take a value (``--fid true``)."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        following = argv[i + 1] if i + 1 < len(argv) else None
        if arg in BOOLEAN_FLAGS and (following is None or following.startswith("--")):
            out.append("true")
    return out


def _expected(hint) -> str:
    """What a command-line value of type ``hint`` must be, in words: ``an integer``, ``one of auto, ddp``."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is Union or isinstance(hint, types.UnionType):  # Optional[int]: null is not what the user missed
        return " or ".join(dict.fromkeys(_expected(arg) for arg in args if arg is not type(None)))
    if origin is list:
        return "a list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def type_error_line(command: str, message: str) -> str | None:
    """``--name expects <type>, got '<value>'`` for jsonargparse's message on a value of the wrong type, None for
    its other messages.

    jsonargparse says it over several lines of its internals (``Parser key "train_steps": ... Subtypes:
    [<class 'int'>, <class 'NoneType'>] ... Given value: abc``); the option's type comes from the command's
    signature instead.

    Args:
        command: the subcommand whose parser failed (a key of ``COMMANDS``).
        message: jsonargparse's error message.
    """
    import re
    import typing

    key = re.match(r'Parser key "(\w+)":\n', message)
    value = re.search(r"\n  (?:Given value|.* Got value): (.*)\Z", message, re.S)
    hints = typing.get_type_hints(COMMANDS[command]) if command in COMMANDS else {}
    if key is None or value is None or key[1] not in hints:
        return None
    return f"--{key[1]} expects {_expected(hints[key[1]])}, got {value[1]!r}"


def unknown_option_line(command: str, message: str, options: list[str]) -> str | None:
    """``unknown option --train_stpes (did you mean --train_steps?): ...`` for argparse's "unrecognized arguments"
    message, None for its other messages. argparse prints the whole usage above its own line and suggests nothing.

    Args:
        command: the subcommand whose parser failed.
        message: the parser's error message.
        options: the subcommand's option strings (``--name``).
    """
    import difflib
    import re

    given = re.match(r"unrecognized arguments: (.*)\Z", message, re.S)
    if given is None:
        return None
    flags = [arg.split("=")[0] for arg in given[1].split() if arg.startswith("--")]
    if not flags:  # values without an option before them (`bench sdvae`)
        return (f"unexpected argument {given[1].strip()!r}: every option is given by its name (`--name value`); "
                f"`latentbench {command} --help` lists them")
    named = [flag + (f" (did you mean {close[0]}?)" if (close := difflib.get_close_matches(flag, options, n=1, cutoff=0.7))
                     else "") for flag in flags]
    return f"unknown option{'s' if len(named) > 1 else ''} {', '.join(named)}: `latentbench {command} --help` lists the options"


def _parser_class():
    """jsonargparse's parser, saying a value of the wrong type in one line (``type_error_line``), exit code 2."""
    from jsonargparse import ArgumentParser

    class Parser(ArgumentParser):
        def error(self, message: str, ex: Exception | None = None):
            command = self.prog.split()[-1]  # a subcommand's prog: "latentbench [options] bench"
            options = [flag for action in self._actions for flag in action.option_strings if flag.startswith("--")]
            line = type_error_line(command, message) or unknown_option_line(command, message, options)
            if line is None or not self.exit_on_error:  # jsonargparse's inner parsers raise for it to handle
                return super().error(message, ex)
            self.exit(2, f"latentbench: error: {line}\n")

    return Parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The suite's own warnings as one line, ``latentbench: warning: ...``; other packages' as Python prints them."""
    import warnings

    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        print(f"latentbench: warning: {message}", file=file or sys.stderr)
    else:
        (file or sys.stderr).write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: list[str] | None = None) -> None:
    """Entry point: run a subcommand; known errors print one clear line and exit 2; Ctrl-C and SIGTERM one line on
    what is kept, and exit 130 and 143."""
    from latentbench.signals import restore, sigterm_interrupts

    previous = sigterm_interrupts()  # first: a SIGTERM in the imports below ends as anywhere else
    try:
        _main(argv)
    # here, not beside the errors below: a SIGTERM that ended rank 0 ends the others' collectives in an error, and
    # their own SIGTERM, already received, raises at the first line of Python that reports it
    except KeyboardInterrupt as e:
        _interrupted(e)
    finally:
        restore(previous)


def _main(argv: list[str] | None) -> None:
    import warnings

    from latentbench.benchmark.machine_load import watch_from_process_start

    watch_from_process_start()  # before the heavy imports: a bench's warning of a busy machine has seconds to go on
    from jsonargparse import CLI

    warnings.showwarning = _show_warning

    errors = known_errors()
    try:
        args = expand_bare_flags(sys.argv[1:] if argv is None else list(argv))
        _ARGS[:] = args
        CLI(COMMANDS, args=args, as_positional=False, prog="latentbench", parser_class=_parser_class())
    except errors as e:
        bug = _unexpected(e)
        if _wants_traceback(e):
            traceback.print_exception(e, file=sys.stderr)  # a bug in the user's tokenizer needs its file and line
        where = " (not an error message of latentbench's: the traceback above says where it came from)" if bug else ""
        print(f"latentbench: error: {f'{type(e).__name__}: {e}' if bug else _message(e)}{where}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 (any other error the user's own code raised: torch's RuntimeError above all)
        if (line := _filesystem_error(e)) is not None:  # an unwritable folder, a full disk: no bug to trace
            if os.environ.get("LATENTBENCH_TRACEBACK"):
                traceback.print_exception(e, file=sys.stderr)
            print(f"latentbench: error: {line}", file=sys.stderr)
            sys.exit(2)
        if not _raised_in_user_code(e):
            raise
        traceback.print_exception(e, file=sys.stderr)
        print(f"latentbench: error: {type(e).__name__}: {e} (raised in your own code: the traceback above says where)",
              file=sys.stderr)
        sys.exit(2)
    except SystemExit as e:  # Lightning ends an interrupted fit with sys.exit(1) after its graceful shutdown
        if isinstance(e.__context__, KeyboardInterrupt):
            _interrupted(e.__context__)
        if _terminated(e):
            _interrupted(e)
        raise


def _filesystem_error(error: BaseException) -> str | None:
    """The line for a file that cannot be written (permissions, read-only or full disk: ``fsutil.FILESYSTEM_ERRNOS``),
    None for any other error."""
    from latentbench.fsutil import filesystem_error_line
    from latentbench.paths import default_cache_dir

    line = filesystem_error_line(error, default_cache_dir()) if isinstance(error, OSError) else None
    if line is not None and _ARGS[:1] == ["bench"]:
        line += "; the bench's finished stages are kept: rerun the same command once it is fixed"
    return line


def _terminated(exit_: SystemExit) -> bool:
    """Lightning's end of a fit that got SIGTERM where its own handler ran alone (a Trainer without
    ``harness.SigtermInterrupts``): a SystemExit without a code, which would exit 0 as if the bench had finished."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return isinstance(exit_, SIGTERMException)


def _interrupted(how: BaseException) -> None:
    """Ctrl-C or SIGTERM (``how``: a KeyboardInterrupt, ``signals.Terminated`` or Lightning's SIGTERMException): one
    line (rank 0's, under torchrun) on what is kept and how to go on instead of a traceback; exit 128 + the signal
    (130 for Ctrl-C, 143 for SIGTERM)."""
    from latentbench.distributed import launcher_rank
    from latentbench.signals import Terminated, exit_interrupted

    signal = 2 if isinstance(how, KeyboardInterrupt) and not isinstance(how, Terminated) else 15
    if launcher_rank() != 0:
        exit_interrupted(128 + signal)
    kept = (" Every finished stage is kept and a training resumes from its last checkpoint (saved every fifth of its "
            "budget): rerun the same command to go on." if _ARGS[:1] == ["bench"] else "")
    print(f"latentbench: {'interrupted' if signal == 2 else 'terminated (SIGTERM)'}.{kept}", file=sys.stderr)
    exit_interrupted(128 + signal)


def known_errors() -> tuple[type[BaseException], ...]:
    """The kinds of error a command ends with in one line and exit code 2: the suite's refusals, which say what to do."""
    from latentbench.data import BadImageError
    from latentbench.distributed import RankZeroFailed
    from latentbench.weights import UnsafeCheckpointError, WeightsUnavailable

    return (ValueError, KeyError, FileNotFoundError, ImportError, TypeError, ConnectionError, WeightsUnavailable,
            UnsafeCheckpointError, BadImageError, RankZeroFailed)


def refusal_line(error: BaseException) -> str | None:
    """The message ``main`` ends a command with for ``error`` alone, or None where its traceback is wanted too:
    another kind of error, a bug (``_unexpected``), one raised in the user's own code, or ``LATENTBENCH_TRACEBACK``
    set. For a process the command started, whose error its parent reports (``latentbench perf``'s per-target ones)."""
    return _message(error) if isinstance(error, known_errors()) and not _wants_traceback(error) else None


def _wants_traceback(error: BaseException) -> bool:
    """Whether ``main`` prints ``error``'s traceback above its line: a bug, one raised in the user's own code, or
    ``LATENTBENCH_TRACEBACK`` set."""
    return bool(os.environ.get("LATENTBENCH_TRACEBACK")) or _unexpected(error) or _raised_in_user_code(error)


def _message(error: BaseException) -> str:
    """A refusal's text: a KeyError's own message, not its repr in quotes."""
    return str(error.args[0] if isinstance(error, KeyError) and error.args else error)


def _unexpected(error: BaseException) -> bool:
    """A KeyError or TypeError that no ``raise`` statement made: a failed lookup or call (``record['value']``), a
    bug whose one-line message (``'value'``) would say nothing. The suite's own errors of these types are raised
    with a sentence by a ``raise`` statement, which the innermost frame's line shows."""
    import linecache

    if not isinstance(error, (KeyError, TypeError)) or error.__traceback__ is None:
        return False
    *_, (frame, line) = traceback.walk_tb(error.__traceback__)
    return not linecache.getline(frame.f_code.co_filename, line).lstrip().startswith("raise")


def _raised_in_user_code(error: BaseException) -> bool:
    """Whether the traceback passes through a file that is neither latentbench's nor an installed package's or
    Python's own: a user's tokenizer or module, whose bug the one-line message alone would hide."""
    package = Path(__file__).resolve().parent
    import site

    installed = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, site.getusersitepackages())}
    for frame, _ in traceback.walk_tb(error.__traceback__):
        path = Path(frame.f_code.co_filename)
        if not path.is_file():  # <string>, <frozen ...>
            continue
        path = path.resolve()
        if not path.is_relative_to(package) and not any(path.is_relative_to(p) for p in installed):
            return True
    return False


if __name__ == "__main__":
    main()
