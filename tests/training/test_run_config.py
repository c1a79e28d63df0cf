"""vae-train --config run.toml: the file sets, flags override, the resolved config is saved."""

import tomllib

import pytest

from models.checkpoint import load_checkpoint
from training.train import main as train_main
from training.train import parse_args


def _write(path, text):
    path.write_text(text)
    return path


def test_the_file_sets_what_flags_do_not(tmp_path):
    config = _write(tmp_path / "run.toml", 'preset = "tiny"\nbatch-size = 50\nbetas = [0.5, 0.9]\n')
    args = parse_args(["--config", str(config)])
    assert (args.preset, args.batch_size, args.betas) == ("tiny", 50, [0.5, 0.9])


def test_a_flag_overrides_the_file(tmp_path):
    config = _write(tmp_path / "run.toml", "batch_size = 50\nlr = 0.002\n")
    args = parse_args(["--config", str(config), "--batch-size", "64"])
    assert (args.batch_size, args.lr) == (64, 0.002)


def test_true_switches_a_flag_on(tmp_path):
    config = _write(tmp_path / "run.toml", "deterministic = true\nno-amp = false\n")
    args = parse_args(["--config", str(config)])
    assert args.deterministic and not args.no_amp


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochz = 3\n", "unknown setting 'epochz'"),
        ('preset = "huge"\n', "invalid choice"),
        ("epochs = [\n", "cannot read config"),
        ("[train]\nepochs = 3\n", "must be a value"),
    ],
)
def test_a_bad_file_is_a_clear_usage_error(tmp_path, capsys, text, message):
    config = _write(tmp_path / "run.toml", text)
    with pytest.raises(SystemExit) as exited:
        parse_args(["--config", str(config)])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_file_is_a_clear_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--config", str(tmp_path / "nope.toml")])
    assert "cannot read config" in capsys.readouterr().err


def test_the_resolved_config_is_saved_beside_and_inside_the_checkpoint(tmp_path, mnist_dir):
    """And it repeats the run: read back with --config, it parses to the same settings."""
    text = 'preset = "tiny"\nepochs = 1\nsubset = 400\nlr = 0.002\n'
    config = _write(tmp_path / "run.toml", text)
    out = tmp_path / "run"
    flags = ["--eval-limit", "100", "--device", "cpu", "--no-progress", "--lr", "0.003"]
    argv = ["--config", str(config), *flags, "--data-dir", str(mnist_dir), "--out", str(out)]
    assert train_main(argv) == 0
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["lr"] == 0.003 and saved["subset"] == 400 and saved["preset"] == "tiny"
    assert saved["epochs"] == 1 and saved["val-size"] == 10_000 and "config" not in saved
    for name in ("model.pt", "best.pt"):
        assert load_checkpoint(out / name)[1]["config"] == saved, name
    again = parse_args(["--config", str(out / "config.toml")])
    assert vars(again) == {**vars(parse_args(argv)), "config": out / "config.toml"}
