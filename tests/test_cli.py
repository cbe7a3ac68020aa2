"""The one `p3dmm` command line: fast help, YAML configs with overrides, clear refusals."""

from __future__ import annotations

import subprocess
import sys

import pytest

from p3dmm.cli import main
from p3dmm.flame.synth import write_synthetic_flame


@pytest.fixture(scope="module")
def flame_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flame_cli")
    write_synthetic_flame(folder, n_vertices=900, seed=1)
    return folder


def test_help_lists_stages_without_importing_heavy_libraries():
    code = (
        "import sys; from p3dmm.cli import main; rc = main(['--help']); "
        "heavy = [m for m in ('torch', 'numpy', 'trimesh', 'ray', 'lightning') if m in sys.modules]; "
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "flame" in out and "synth" in out and "preview" in out
    assert "HEAVY []" in out


def test_action_help_shows_options_and_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["flame", "synth", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--vertices" in text and "5023" in text and "--config" in text


def test_config_section_with_command_line_override(tmp_path, capsys):
    cfg = tmp_path / "flame.yaml"
    cfg.write_text("synth:\n  vertices: 700\n  seed: 5\npreview:\n  size: 64\n")
    out = tmp_path / "model"
    assert main(["flame", "synth", "--config", str(cfg), "--out", str(out), "--vertices", "800"]) == 0
    import json

    info = json.loads((out / "synthetic.json").read_text())
    assert info["requested_vertices"] == 800 and info["seed"] == 5  # CLI beats file, file beats default


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["flame", "synth", "--out", "x", "--vertices", "many"], "vertices"),
        (["flame", "synth", "--out", "x", "--vertices", "-3"], "vertices"),
        (["flame", "synth", "--out", "x", "--bogus", "1"], "bogus"),
        (["flame", "nope"], "unknown action"),
        (["train2"], "unknown stage"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_unknown_config_key_is_refused(tmp_path, capsys):
    cfg = tmp_path / "flame.yaml"
    cfg.write_text("synth:\n  vertices: 700\n  vertexes: 3\n")
    assert main(["flame", "synth", "--config", str(cfg), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "vertexes" in err and str(cfg) in err
    assert not (tmp_path / "m").exists()


def test_check_reports_the_model_and_fails_clearly_on_bad_input(flame_dir, tmp_path, capsys, monkeypatch):
    assert main(["flame", "check", "--flame", str(flame_dir)]) == 0
    out = capsys.readouterr().out
    assert "300 shape + 100 expression" in out and "68 frontal" in out and "mirror axis" in out

    monkeypatch.setenv("P3DMM_FLAME_DIR", str(flame_dir))
    assert main(["flame", "check"]) == 0
    capsys.readouterr()

    monkeypatch.delenv("P3DMM_FLAME_DIR")
    assert main(["flame", "check"]) == 2
    assert "P3DMM_FLAME_DIR" in capsys.readouterr().err

    assert main(["flame", "check", "--flame", str(tmp_path)]) == 2
    assert "generic_model.pkl" in capsys.readouterr().err

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "generic_model.pkl").write_bytes((flame_dir / "generic_model.pkl").read_bytes()[:5000])
    assert main(["flame", "check", "--flame", str(broken)]) == 2
    assert "generic_model.pkl" in capsys.readouterr().err


def test_preview_writes_a_png(flame_dir, tmp_path):
    from PIL import Image

    out = tmp_path / "grid.png"
    assert main(["flame", "preview", "--flame", str(flame_dir), "--out", str(out), "--identities", "2",
                 "--expressions", "3", "--size", "64"]) == 0
    image = Image.open(out)
    assert image.size[0] > 64 * 4 and image.mode == "RGB"
    import numpy as np

    pixels = np.asarray(image).reshape(-1, 3)
    shaded = (np.abs(pixels.astype(int) - [235, 235, 235]).sum(1) > 30) & (pixels.sum(1) < 700)
    assert shaded.mean() > 0.05  # heads were drawn, not just empty panels
