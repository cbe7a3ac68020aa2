"""Every command in README.md and docs/*.md runs as written.

    .venv/bin/python tools/check_docs.py            # parse check (seconds): options, types, files, targets
    .venv/bin/python tools/check_docs.py --run      # also execute the blocks marked runnable
    .venv/bin/python tools/check_docs.py -v docs/shards.md    # one file, every command's verdict

Commands are the lines of ```bash (or ```sh) fenced blocks; a trailing `\\` continues a line, a `#` after
whitespace starts a comment, `&&`, `||`, `;`, `|` and `&` separate commands, and leading `VAR=value` words are
the environment. Per command:

- `p3dmm ...` (also `.venv/bin/p3dmm`, `python -m p3dmm`): parsed by the real CLI parser without running
  the action: the stage and action exist, every option is known and every value has its type; a file
  named by `--config` exists and its keys are accepted (for `p3dmm run` also each section's keys and the
  training config it names). `p3dmm train fit|validate` (LightningCLI) is parsed by LightningCLI itself
  with `--print_config`, in one subprocess for all of them.
- `make X`: X is a target of the Makefile.
- `bash infra/x.sh ...`, `sbatch ... infra/x.sh ...`, `infra/x.sh ...`: the script exists and `bash -n`
  passes; the command a launcher runs (`slurm-ray.sh p3dmm ...`, the training options of
  `slurm-train.sh` / `torchrun-train.sh`) is checked as the p3dmm command it becomes.
- `python tools/x.py ...` (any python), `pytest PATH`: the script or test path exists.
- `ray ...`, `wandb ...`: skipped (external tools; an `infra/` file they name must exist); `export`, `cd`,
  `echo`: skipped (shell builtins). Anything else: listed as unchecked.

Documentation shorthands: `...` stands for options shown on an earlier line (required options are then
filled with placeholders), `[--opt value]` is an optional part (checked without the brackets), and an
upper-case value (`N`, `DIR`) is a placeholder (the option name is checked, not the value).

Runnable blocks: a fenced block whose preceding non-blank line is `<!-- runnable -->`. `--run` executes
the runnable commands of each file in order, in a fresh temporary folder (the repository's configs/ and
infra/ linked into it; the venv's bin/ first on PATH; WANDB_MODE=offline, HF_HUB_OFFLINE=1), stopping
at the first failure. A runnable block therefore holds a self-contained sequence: each command's inputs
are earlier commands' outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNNABLE_MARK = "<!-- runnable -->"
FENCES = ("bash", "sh", "shell")
SEPARATORS = ("&&", "||", ";", "|", "&")
SHELL_BUILTINS = ("export", "cd", "echo", "source", "set", "unset")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")
ENV_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# what a launcher script runs with the arguments it is given (see infra/)
TRAIN_LAUNCH = ["p3dmm", "train", "fit", "--trainer.num_nodes", "1", "--trainer.devices", "8",
                "--trainer.strategy", "ddp"]
LAUNCHERS = {
    "infra/ray/slurm-ray.sh": lambda args: [*args, "--address", "HEAD:6379"],
    "infra/train/slurm-train.sh": lambda args: [*TRAIN_LAUNCH, *args],
    "infra/train/torchrun-train.sh": lambda args: [*TRAIN_LAUNCH, *args],
}


@dataclass
class Command:
    file: str
    line: int
    text: str  # the command as a shell line, without comments and continuations
    runnable: bool = False


@dataclass
class Result:
    command: Command
    status: str  # "ok", "error", "unchecked", "skipped"
    detail: str = ""
    lightning: list[tuple[list[str], str]] = field(default_factory=list)  # LightningCLI argvs still to check


# -- extraction ---------------------------------------------------------------------------------------


def strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a `#` at the start or after whitespace, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
            elif ch == "\\" and quote == '"':
                continue
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def extract_commands(path: str | os.PathLike, text: str | None = None) -> list[Command]:
    """Commands of the bash blocks of a markdown file, with their line numbers and runnable flag."""
    text = Path(path).read_text(encoding="utf-8") if text is None else text
    commands: list[Command] = []
    in_block = runnable = False
    lang = ""
    previous = ""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            if not in_block:
                in_block, lang = True, stripped[3:].strip().lower()
                runnable = previous == RUNNABLE_MARK
            else:
                in_block, pending = False, ""
            previous = stripped  # a marker applies to the block right after it only
            continue
        if not in_block:
            if stripped:
                previous = stripped
            continue
        if lang not in FENCES:
            continue
        line = strip_comment(raw)
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = " ".join((pending + line).split()) if pending else line.strip()
        pending = ""
        if full:
            commands.append(Command(str(path), start, full, runnable))
    return commands


def doc_files(repo: Path = REPO) -> list[Path]:
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


# -- checks -------------------------------------------------------------------------------------------


def split_commands(text: str) -> list[list[str]]:
    """shlex words of each simple command of a shell line (split at &&, ||, ; and |)."""
    words = shlex.split(text)
    parts, current = [], []
    for word in words:
        if word in SEPARATORS:
            parts.append(current)
            current = []
        else:
            current.append(word)
    parts.append(current)
    return [p for p in parts if p]


def makefile_targets(repo: Path) -> set[str]:
    path = repo / "Makefile"
    if not path.is_file():
        return set()
    targets = set()
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_./-]+(?:\s+[A-Za-z0-9_./-]+)*)\s*:(?!=)", line)
        if m:
            targets.update(m.group(1).split())
    return targets


def _placeholder_value(hint: object) -> object:
    """A value of the type `hint` for a required option the documentation left out (`...`)."""
    import types
    import typing

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _placeholder_value(next(a for a in typing.get_args(hint) if a is not type(None)))
    if origin is typing.Literal:
        return typing.get_args(hint)[0]
    if origin is list:
        inner = (typing.get_args(hint) or (str,))[0]
        return [{}] if inner is dict or typing.get_origin(inner) is dict else ["PLACEHOLDER"]
    if hint is dict or origin is dict:
        return {}
    return "PLACEHOLDER"


def _with_brackets_removed(text: str) -> str:
    """`[--opt value]` (documentation for "optional") -> `--opt value`; JSON values such as '[uv]' stay."""
    return re.sub(r"\[(--[^\[\]]*)\]", r"\1", text)


def check_p3dmm(args: list[str], repo: Path) -> tuple[str | None, list[str] | None]:
    """(error or None, LightningCLI argv to check or None) for the arguments after `p3dmm`."""
    from p3dmm import cli

    if not args or args[0] in ("-h", "--help", "--version"):
        return None, None
    stage, rest = args[0], list(args[1:])
    if stage not in cli.COMMANDS:
        return f"unknown stage {stage!r}; stages: {', '.join(cli.COMMANDS)}", None
    actions = cli.COMMANDS[stage][1]
    if not rest or rest[0] in ("-h", "--help"):
        return None, None
    if rest[0].startswith("-") and stage in cli.DEFAULT_ACTION:
        action = cli.DEFAULT_ACTION[stage]
    elif rest[0] not in actions:
        return f"unknown action {stage} {rest[0]!r}; actions: {', '.join(actions)}", None
    else:
        action, rest = rest[0], rest[1:]
    func = cli._load(actions[action])
    if "-h" in rest or "--help" in rest:
        return None, None
    if getattr(func, "raw_argv", False):  # LightningCLI: checked later, all together
        config = _option_value(rest, "--config") or _option_value(rest, "-c")
        if config is not None and not (repo / config).is_file():
            return f"config file {config} not found", None
        return None, [action, *[w for w in rest if w != "..."]]
    return _check_action(stage, action, func, rest, repo), None


def _option_value(argv: list[str], name: str) -> str | None:
    for i, word in enumerate(argv):
        if word == name and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def _check_action(stage: str, action: str, func, rest: list[str], repo: Path) -> str | None:
    import inspect
    import typing

    from jsonargparse import ArgumentError

    from p3dmm import cli

    parser = cli.build_parser(stage, action, func)
    known = {a.dest for a in parser._actions if a.dest not in ("help", "config", "print_config")}
    abbreviated = "..." in rest
    argv = [cli._underscored(w) for w in rest if w != "..."]
    argv = cli._bare_to_options(argv, cli.POSITIONAL.get((stage, action), ()))
    # placeholder values (`--num-cpus N`): the option must exist; its value is not checked
    kept: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word.startswith("--") and "=" not in word and i + 1 < len(argv) and PLACEHOLDER.match(argv[i + 1]):
            if word[2:] not in known | {"config"}:
                return f"unknown option {word} (`p3dmm {stage} {action}` accepts: {', '.join(sorted(known))})"
            abbreviated = True
            i += 2
            continue
        kept.append(word)
        i += 1
    argv = cli._gather_lists(kept, cli._list_options(func))
    section: dict = {}
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            return "--config needs a file"
        path = argv[i + 1]
        if not (repo / path).is_file():
            return f"config file {path} not found"
        try:
            section = cli._config_section(str(repo / path), stage, action, known)
        except cli.CommandError as e:
            return str(e).replace(str(repo) + os.sep, "")
        del argv[i : i + 2]
        parser.set_defaults(**section)
    if abbreviated:  # `...` stands for the options of an earlier line: fill what is required
        given = {w[2:].split("=", 1)[0] for w in argv if w.startswith("--")} | set(section)
        hints = typing.get_type_hints(func)
        for name, param in inspect.signature(func).parameters.items():
            if param.default is inspect.Parameter.empty and name not in given:
                parser.set_defaults(**{name: _placeholder_value(hints.get(name, str))})
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cfg = parser.parse_args(argv)
    except ArgumentError as e:
        return " ".join(str(e).split())
    except SystemExit as e:  # --print_config and the like exit after printing
        return None if not e.code else f"exited with status {e.code}"
    if stage == "run":
        return _check_run_config(vars(cfg), repo)
    return None


def _check_run_config(cfg: dict, repo: Path) -> str | None:
    """`p3dmm run`: every section typed as the pipeline builds it, and the training config."""
    from p3dmm.flame.settings import SettingsError, build_settings
    from p3dmm.pipeline.run.config import STAGES, PipelineConfig

    if not cfg.get("datasets"):
        return "datasets: give at least one dataset"
    sections = {k: cfg.get(k) for k in ("flame", "datasets", "register", "render", "train", "fit")}
    try:
        config = build_settings(PipelineConfig, {"out": "runs/check", **sections}, "")
    except SettingsError as e:
        return str(e)
    unknown = set(cfg.get("skip") or ()) - set(STAGES)
    if unknown:
        return f"skip: unknown stage(s) {sorted(unknown)} (stages: {', '.join(STAGES)})"
    if not config.train.priors and not (repo / config.train.config).is_file():
        return f"train.config {config.train.config} not found"
    return None


def check_script(words: list[str], repo: Path) -> tuple[str | None, list[str] | None]:
    """(error or None, the command the launcher runs or None) for `script args...` (script a path)."""
    script, args = words[0], words[1:]
    path = repo / script
    if not path.is_file():
        return f"script {script} not found", None
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    if done.returncode:
        return f"bash -n {script}: {done.stderr.strip()}", None
    key = os.path.normpath(script)
    return None, (LAUNCHERS[key](args) if key in LAUNCHERS and args else None)


def check_words(words: list[str], repo: Path, targets: set[str]) -> tuple[str, str, list[list[str]]]:
    """(status, detail, LightningCLI argvs) for one simple command."""
    while words and ENV_WORD.match(words[0]):
        words = words[1:]
    if not words:
        return "unchecked", "only variable assignments", []
    head = words[0]
    if head.endswith("/p3dmm") or head == "p3dmm":
        error, lightning = check_p3dmm(words[1:], repo)
        return ("error", error, []) if error else ("ok", "", [lightning] if lightning else [])
    if re.fullmatch(r"(.*/)?python(3(\.\d+)?)?", head):
        if words[1:3] == ["-m", "p3dmm"]:
            return check_words(["p3dmm", *words[3:]], repo, targets)
        if words[1:3] == ["-m", "pytest"]:
            return check_words(["pytest", *words[3:]], repo, targets)
        if len(words) > 1 and words[1].endswith(".py"):  # a script of the repository (tools/, bench/)
            found = (repo / words[1]).is_file()
            return ("ok", "", []) if found else ("error", f"script {words[1]} not found", [])
    if head == "pytest" or head.endswith("/pytest"):
        missing = [w for w in words[1:] if not w.startswith("-") and not (repo / w.split("::")[0]).exists()]
        return ("error", f"test path(s) {', '.join(missing)} not found", []) if missing else ("ok", "", [])
    if head == "make":
        wanted = [w for w in words[1:] if not w.startswith("-") and "=" not in w] or ["<default>"]
        missing = [w for w in wanted if w != "<default>" and w not in targets]
        return ("error", f"no Makefile target {', '.join(missing)}", []) if missing else ("ok", "", [])
    if head in ("ray", "wandb", "tensorboard"):
        missing = [w for w in words[1:] if w.startswith("infra/") and not (repo / w).is_file()]
        if missing:  # `ray up infra/ray/cluster.yaml`: the file is ours
            return "error", f"{', '.join(missing)} not found", []
        return "skipped", f"{head}: external tool", []
    if head in SHELL_BUILTINS:
        return "skipped", f"{head}: shell builtin", []
    script_words = None
    if head in ("bash", "sh"):
        rest = words[1:]
        i = 0
        while i < len(rest) and rest[i].startswith("-"):
            i += 1
        script_words = rest[i:]
    elif head == "sbatch":
        rest = words[1:]
        i = 0
        while i < len(rest) and rest[i].startswith("-"):
            # `-N 4` takes a value, `--cpus-per-task=32` carries it
            i += 2 if (len(rest[i]) == 2 and i + 1 < len(rest)) else 1
        script_words = rest[i:]
    elif head.endswith(".sh"):
        script_words = words
    if script_words:
        error, inner = check_script(script_words, repo)
        if error:
            return "error", error, []
        if inner:
            status, detail, lightning = check_words(inner, repo, targets)
            return status, (f"via {script_words[0]}: {detail}" if detail else ""), lightning
        return "ok", "", []
    return "unchecked", "not a command this script checks", []


def check_command(cmd: Command, repo: Path, targets: set[str]) -> Result:
    try:
        parts = split_commands(_with_brackets_removed(cmd.text))
    except ValueError as e:
        return Result(cmd, "error", f"cannot split into words ({e})")
    statuses, details, lightning = [], [], []
    for words in parts:
        status, detail, todo = check_words(words, repo, targets)
        statuses.append(status)
        if detail and detail not in details:
            details.append(detail)
        lightning += [(argv, "") for argv in todo]
    for status in ("error", "unchecked", "skipped", "ok"):
        if status in statuses:
            return Result(cmd, status, "; ".join(details), lightning)
    return Result(cmd, "ok")


def check_lightning(argvs: list[list[str]], repo: Path) -> list[str | None]:
    """LightningCLI parses each argv (`fit ...`, `validate ...`) with --print_config, in one subprocess."""
    if not argvs:
        return []
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--lightning-worker"],
                          input=json.dumps(argvs), capture_output=True, text=True, cwd=repo,
                          env={**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"})
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return [f"LightningCLI check failed to run: {' | '.join(tail)}"] * len(argvs)


def _lightning_worker() -> int:
    import warnings

    warnings.filterwarnings("ignore")
    argvs = json.loads(sys.stdin.read())
    sys.argv = [sys.argv[0]]
    from p3dmm.training.cli import main

    results = []
    for argv in argvs:
        err = io.StringIO()
        code: object = 0
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                main([*argv, "--print_config"])
        except SystemExit as e:
            code = e.code
        except Exception as e:  # reported as the command's error
            code, err = 1, io.StringIO(f"error: {type(e).__name__}: {e}")
        if code:
            lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
            start = next((i for i, ln in enumerate(lines) if ln.startswith("error:")), max(0, len(lines) - 2))
            results.append(" ".join(" ".join(lines[start:]).split()) or f"exited with status {code}")
        else:
            results.append(None)
    sys.__stdout__.write(json.dumps(results) + "\n")
    return 0


def check_files(paths: list[Path], repo: Path = REPO) -> list[Result]:
    """Every command of the given markdown files, checked (LightningCLI ones in one subprocess)."""
    targets = makefile_targets(repo)
    results = [check_command(cmd, repo, targets) for path in paths for cmd in extract_commands(path)]
    todo = [(r, argv) for r in results for argv, _ in r.lightning]
    errors = check_lightning([argv for _, argv in todo], repo)
    for (r, _), error in zip(todo, errors, strict=True):
        if error and r.status != "error":
            r.status, r.detail = "error", f"LightningCLI: {error}"
    return results


# -- running ------------------------------------------------------------------------------------------


def run_runnable(paths: list[Path], repo: Path = REPO, keep: bool = False, timeout: float | None = None) -> bool:
    """Execute the runnable blocks of each file in a fresh temporary folder; True when every command exits 0."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("HF_HUB_OFFLINE", "1")
    all_ok = True
    for path in paths:
        commands = [c for c in extract_commands(path) if c.runnable]
        if not commands:
            continue
        work = Path(tempfile.mkdtemp(prefix="p3dmm-docs-"))
        for name in ("configs", "infra"):
            (work / name).symlink_to(repo / name)
        logs = work / "logs"
        logs.mkdir()
        rel = os.path.relpath(path, repo)
        print(f"== {rel}: {len(commands)} runnable commands in {work}", flush=True)
        start = time.perf_counter()
        ok = True
        for n, cmd in enumerate(commands, 1):
            log = logs / f"{n:02d}.log"
            t0 = time.perf_counter()
            with open(log, "w") as fh:
                try:
                    rc = subprocess.run(["bash", "-c", cmd.text], cwd=work, env=env, stdout=fh,
                                        stderr=subprocess.STDOUT, timeout=timeout).returncode
                except subprocess.TimeoutExpired:
                    rc = 124
            seconds = time.perf_counter() - t0
            print(f"  rc {rc}  {seconds:6.1f} s  {cmd.text}", flush=True)
            if rc:
                tail = log.read_text(errors="replace").strip().splitlines()[-15:]
                print("\n".join("      " + line for line in tail))
                print(f"  stopped at {rel}:{cmd.line} (later commands need its outputs); log {log}")
                ok = False
                break
        print(f"== {rel}: {'all exited 0' if ok else 'FAILED'} in {time.perf_counter() - start:.1f} s", flush=True)
        if ok and not keep:
            shutil.rmtree(work, ignore_errors=True)
        all_ok &= ok
    return all_ok


# -- command line -------------------------------------------------------------------------------------


def report(results: list[Result], verbose: bool = False, repo: Path = REPO) -> int:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
        if verbose or r.status in ("error", "unchecked"):
            where = f"{os.path.relpath(r.command.file, repo)}:{r.command.line}"
            detail = f"  -> {r.detail}" if r.detail else ""
            print(f"{r.status.upper():9s} {where}: {r.command.text}{detail}")
    print(f"{len(results)} commands: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in
                                                    ("ok", "error", "unchecked", "skipped")))
    return 1 if counts.get("error") else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="markdown files (default: README.md and docs/*.md)")
    parser.add_argument("--run", action="store_true", help="also execute the runnable blocks")
    parser.add_argument("--keep", action="store_true", help="keep the temporary run folders")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per runnable command")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every command's verdict")
    parser.add_argument("--lightning-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.lightning_worker:
        return _lightning_worker()
    paths = [p.resolve() for p in args.files] or doc_files(REPO)
    start = time.perf_counter()
    rc = report(check_files(paths, REPO), args.verbose)
    print(f"parse check: {time.perf_counter() - start:.1f} s")
    if args.run:
        ok = run_runnable(paths, REPO, keep=args.keep, timeout=args.timeout)
        rc = rc or (0 if ok else 1)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
