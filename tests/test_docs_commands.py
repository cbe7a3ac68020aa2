"""Every command in README.md and docs/*.md parses with the real command line (tools/check_docs.py).

The parse check does not run anything: p3dmm commands go through the same parser as `p3dmm` itself (and
LightningCLI for training, in one subprocess), make targets and infra scripts are looked up. Executing the
README's runnable block takes minutes: `.venv/bin/python tools/check_docs.py --run`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

_spec = importlib.util.spec_from_file_location("check_docs", REPO / "tools" / "check_docs.py")
check_docs = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("check_docs", check_docs)  # its dataclasses look their module up
_spec.loader.exec_module(check_docs)

MISTAKES = """A page with mistakes in its commands.

```bash
p3dmm flame synth --out runs/x --vertexes 1000          # line 4: a wrong option name
p3dmm run --config configs/no-such-file.yaml             # line 5: a config file that does not exist
p3dmm flame synth --out runs/x --vertices 1000           # line 6: right
p3dmm flame synth --out runs/x --vertices many           # line 7: a value of the wrong type
p3dmm register --source nphm ... --num-cpuz 8            # line 8: abbreviated, a wrong option
p3dmm register --source nphm ... --num-cpus 8            # line 9: abbreviated, right
p3dmm train fit --config configs/train-tiny.yaml \\
    --data.shardz runs/shards                            # line 10: a LightningCLI key that does not exist
make no-such-target                                      # line 12
bash infra/no-such-script.sh                             # line 13
p3dmm shards verify runs/shards && p3dmm flame chek      # line 14: the second command is wrong
```
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """The documentation and a page of known mistakes, checked in one pass (one LightningCLI subprocess)."""
    bad = tmp_path_factory.mktemp("docs") / "mistakes.md"
    bad.write_text(MISTAKES)
    return check_docs.check_files([*check_docs.doc_files(REPO), bad], REPO), bad


def test_every_documented_command_parses(results):
    checked, bad = results
    docs = [r for r in checked if r.command.file != str(bad)]
    assert len(docs) > 60, "the extraction should find the commands of README.md and docs/"
    errors = [f"{os.path.relpath(r.command.file, REPO)}:{r.command.line}: {r.command.text}\n    -> {r.detail}"
              for r in docs if r.status == "error"]
    assert not errors, "commands in the docs that do not run as written:\n" + "\n".join(errors)


def test_mistakes_are_reported(results):
    checked, bad = results
    by_line = {r.command.line: r for r in checked if r.command.file == str(bad)}
    assert by_line[4].status == "error" and "--vertexes" in by_line[4].detail
    assert by_line[5].status == "error" and "configs/no-such-file.yaml" in by_line[5].detail
    assert by_line[6].status == "ok", by_line[6].detail
    assert by_line[7].status == "error" and "vertices" in by_line[7].detail
    assert by_line[8].status == "error" and "num_cpuz" in by_line[8].detail
    assert by_line[9].status == "ok", by_line[9].detail
    assert by_line[10].status == "error" and "data.shardz" in by_line[10].detail
    assert by_line[12].status == "error" and "no-such-target" in by_line[12].detail
    assert by_line[13].status == "error" and "no-such-script.sh" in by_line[13].detail
    assert by_line[14].status == "error" and "chek" in by_line[14].detail
    assert check_docs.report(checked, repo=REPO) == 1  # the command line exits 1 on errors


def test_extraction(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Intro.\n\n<!-- runnable -->\n```bash\n"
        "p3dmm flame synth --out runs/flame \\\n    --vertices 1000   # a comment\n\n"
        "WANDB_MODE=offline p3dmm flame check --flame runs/flame\n```\n\n"
        "```yaml\nnot: a command\n```\n\n```bash\np3dmm shards verify 'a dir#1'  # only this is a comment\n```\n"
    )
    cmds = check_docs.extract_commands(page)
    assert [(c.line, c.text, c.runnable) for c in cmds] == [
        (5, "p3dmm flame synth --out runs/flame --vertices 1000", True),
        (8, "WANDB_MODE=offline p3dmm flame check --flame runs/flame", True),
        (16, "p3dmm shards verify 'a dir#1'", False),
    ]


def test_readme_sequence_is_runnable_and_self_contained():
    """The README's runnable block: real commands whose inputs are earlier commands' outputs."""
    cmds = [c.text for c in check_docs.extract_commands(REPO / "README.md") if c.runnable]
    assert cmds[0].startswith("p3dmm flame synth --out runs/flame")
    assert any(c.startswith("p3dmm train fit") for c in cmds) and cmds[-1].startswith("p3dmm eval")
    made = {"configs"}
    for text in cmds:
        words = text.split()
        for flag in ("--flame", "--root", "--registered", "--priors", "--pred", "--truth", "--data.shards"):
            if flag in words:
                source = words[words.index(flag) + 1]
                assert any(source == m or source.startswith(m + "/") for m in made), (text, source, made)
        for flag in ("--out", "--trainer.default_root_dir"):
            if flag in words:
                made.add(words[words.index(flag) + 1])
        if words[1:3] == ["train", "export"]:
            made.add(words[4])
