"""The one `p3dmm` command line: `p3dmm <stage> <action> [--config FILE] [--key value ...]`.

Every action is a plain function with keyword-only, type-hinted arguments (defaults in code). Its
parser is built by jsonargparse from the signature and docstring, the same machinery LightningCLI
uses, so every stage, training included, reads configs and overrides the same way:

    p3dmm flame synth --config configs/flame.yaml --vertices 1500

`--config` takes a YAML file; a file with one section per action of the stage (`synth:`, `preview:`)
gives each action its section. Command-line keys override the file; unknown keys and values of the
wrong type are refused with a message naming the key. Only the chosen action's module is imported,
and heavy libraries load inside the action, so `p3dmm --help` stays well under a second.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any

from p3dmm.commands import CommandError

# stage -> (one-line help, {action: "module:function"}); the first action listed under DEFAULT_ACTION
# runs when options follow the stage directly (`p3dmm register --source ...`).
COMMANDS: dict[str, tuple[str, dict[str, str]]] = {
    "flame": (
        "FLAME model files: check real ones, write a synthetic one, preview",
        {
            "check": "p3dmm.commands.flame:check",
            "synth": "p3dmm.commands.flame:synth",
            "preview": "p3dmm.commands.flame:preview",
        },
    ),
    "synth": (
        "synthetic raw scans in each dataset's real layout, with ground truth",
        {"scans": "p3dmm.commands.register:synth_scans"},
    ),
    "register": (
        "register raw scans to FLAME topology with Ray; evaluation against ground truth",
        {
            "run": "p3dmm.commands.register:run",
            "eval": "p3dmm.commands.register:evaluate",
            "report": "p3dmm.commands.register:report",
        },
    ),
    "render": (
        "render multiview training samples of registered scans into WebDataset shards with Ray",
        {"run": "p3dmm.commands.render:run"},
    ),
    "shards": (
        "check and preview shard folders",
        {"verify": "p3dmm.commands.render:verify", "preview": "p3dmm.commands.render:preview"},
    ),
    "train": (
        "train the DINOv2 normal/UV priors with Lightning (DDP, multi-node, wandb); export them",
        {"fit": "p3dmm.commands.train:fit", "validate": "p3dmm.commands.train:validate",
         "export": "p3dmm.commands.train:export"},
    ),
    "run": (
        "the whole pipeline from raw scans to evaluated fits, with a report (one config file)",
        {"run": "p3dmm.commands.run:run"},
    ),
    "fit": (
        "fit FLAME to face images from the predicted normals and UVs (batched)",
        {"run": "p3dmm.commands.fit:run"},
    ),
    "eval": (
        "posed and neutral geometry of fits against ground truth",
        {"run": "p3dmm.commands.evaluate:run"},
    ),
}
DEFAULT_ACTION = {"run": "run", "register": "run", "render": "run", "fit": "run", "eval": "run"}
# actions whose leading bare arguments fill options: `p3dmm shards verify DIR` == `... --shards DIR`
POSITIONAL = {("shards", "verify"): ("shards",), ("shards", "preview"): ("shards",), ("register", "report"): ("out",),
              ("register", "eval"): ("out",), ("train", "export"): ("ckpt", "out")}


def _summary(func: Callable[..., Any]) -> str:
    doc = inspect.getdoc(func) or ""
    return doc.splitlines()[0] if doc else ""


def _load(target: str) -> Callable[..., Any]:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _top_help() -> str:
    lines = ["usage: p3dmm <stage> <action> [--config FILE] [--key value ...]", "", "stages:"]
    for stage, (text, actions) in COMMANDS.items():
        lines.append(f"  {stage:<10} {text}")
        for action, target in actions.items():
            lines.append(f"    {action:<12} {_summary(_load(target))}")
    lines += ["", "`p3dmm <stage> <action> --help` lists an action's options and defaults."]
    return "\n".join(lines)


def build_parser(stage: str, action: str, func: Callable[..., Any]):
    """jsonargparse parser for one action, from its signature (keyword-only args -> --options)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog=f"p3dmm {stage} {action}",
        description=inspect.getdoc(func),
        default_meta=False,
        exit_on_error=False,
    )
    parser.add_argument("--config", type=str, help="YAML file; command-line options override it")
    parser.add_function_arguments(func, as_group=False)
    return parser


def _config_section(path: str, stage: str, action: str, known: set[str]) -> dict[str, Any]:
    """Read a stage config file and return the section of `action`, refusing unknown keys."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise CommandError(f"{path}: cannot read config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise CommandError(f"{path}: not valid YAML ({e})".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise CommandError(f"{path}: a config must be a mapping of keys to values")
    actions = set(COMMANDS[stage][1])
    if data and set(data) <= actions:
        data = data.get(action) or {}
        where = f"{path}: {action}"
    else:
        where = path
    unknown = sorted(set(data) - known)
    if unknown:
        raise CommandError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"`p3dmm {stage} {action}` accepts: {', '.join(sorted(known))}"
        )
    return data


def _underscored(arg: str) -> str:
    if not arg.startswith("--"):
        return arg
    name, sep, value = arg.partition("=")
    return "--" + name[2:].replace("-", "_") + sep + value


def _list_options(func: Callable[..., Any]) -> set[str]:
    """Names of the options typed as lists (they take several values: `--registered A B C`)."""
    import types
    import typing

    out = set()
    for name, hint in typing.get_type_hints(func).items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        if any(typing.get_origin(a) is list for a in (typing.get_args(hint) if union else (hint,))):
            out.add(name)
    return out


def _gather_lists(argv: list[str], names: set[str]) -> list[str]:
    """`--name a b c` -> `--name ["a", "b", "c"]` for list options (a value already in [...] is kept)."""
    import json

    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        out.append(arg)
        i += 1
        if arg.startswith("--") and "=" not in arg and arg[2:] in names:
            values = []
            while i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
            if len(values) == 1 and values[0].lstrip().startswith("["):
                out.append(values[0])
            elif values:
                out.append(json.dumps(values))
    return out


def _bare_to_options(argv: list[str], names: Sequence[str]) -> list[str]:
    """Leading bare arguments fill the action's positional options in order: `export A B` -> `--ckpt A --out B`."""
    out, rest = [], list(argv)
    for name in names:
        if not rest or rest[0].startswith("-"):
            break
        out += [f"--{name}", rest.pop(0)]
    return out + rest


def run_action(stage: str, action: str, argv: Sequence[str]) -> int:
    from jsonargparse import ArgumentError

    func = _load(COMMANDS[stage][1][action])
    if getattr(func, "raw_argv", False):  # e.g. training: LightningCLI parses its own arguments
        return int(func(list(argv)) or 0)
    parser = build_parser(stage, action, func)
    known = {a.dest for a in parser._actions if a.dest not in ("help", "config", "print_config")}
    # --num-cpus and --num_cpus both work: option names use underscores internally
    argv = [_underscored(a) for a in argv]
    argv = _bare_to_options(argv, POSITIONAL.get((stage, action), ()))
    argv = _gather_lists(argv, _list_options(func))
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise CommandError("--config needs a file")
        section = _config_section(argv[i + 1], stage, action, known)
        del argv[i : i + 2]
        parser.set_defaults(**section)
    try:
        cfg = parser.parse_args(argv)
    except ArgumentError as e:
        raise CommandError(str(e).replace("\n", " ")) from None
    kwargs = {k: v for k, v in vars(cfg).items() if k in known}
    result = func(**kwargs)
    return int(result or 0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0 if argv else 2
    if argv[0] == "--version":
        from p3dmm import __version__

        print(f"p3dmm {__version__}")
        return 0
    stage, rest = argv[0], argv[1:]
    try:
        if stage not in COMMANDS:
            raise CommandError(f"unknown stage {stage!r}; choose from: {', '.join(COMMANDS)}")
        actions = COMMANDS[stage][1]
        if not rest or rest[0] in ("-h", "--help"):
            print(f"usage: p3dmm {stage} <action> ...\n\nactions:")
            for action, target in actions.items():
                print(f"  {action:<12} {_summary(_load(target))}")
            return 0 if rest else 2
        if rest[0].startswith("-") and stage in DEFAULT_ACTION:
            return run_action(stage, DEFAULT_ACTION[stage], rest)
        if rest[0] not in actions:
            raise CommandError(f"unknown action {stage} {rest[0]!r}; choose from: {', '.join(actions)}")
        return run_action(stage, rest[0], rest[1:])
    except CommandError as e:
        print(f"p3dmm: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output folder that cannot be written, a full disk: the message names the path
        print(f"p3dmm: error: {e}", file=sys.stderr)
        return 2
