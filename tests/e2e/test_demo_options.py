"""The demo rejects bad options before it starts the embedded AWS."""

from __future__ import annotations

import pytest

from infra import config
from infra.config import read_cdk_context
from local_aws import cli, demo


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--alpha", "-1"], "--alpha: -1 is not a finite number > 0"),
        (["--alpha", "nan"], "--alpha: nan is not a finite number > 0"),
        (["--learning-rate", "0"], "--learning-rate: 0 is not a finite number > 0"),
        (["--seed", "-1"], "--seed: -1 is negative"),
        (["--devices", "abc"], "--devices: 'abc' is not an integer"),
        (["--rounds", "0"], "--rounds: 0 is not a positive integer"),
        (["--attack-scale", "-1"], "--attack-scale -1.0 is not a number > 0"),
        (["--proximal-mu", "inf"], "--proximal-mu: inf is not a finite number >= 0"),
        (
            ["--strategy", "median", "--strategy-param", "nnm_f=3", "--devices", "6"],
            "needs at least 7 updates per round, but --devices is 6",
        ),
        (
            ["--strategy", "krum", "--strategy-param", "f=2", "--devices", "6"],
            "needs at least 7 updates per round",
        ),
    ],
)
def test_demo_rejects_option(args, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        demo.main(args)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_rejects_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as stopped:
        demo.main(["--output-dir", str(blocker / "runs")])
    assert stopped.value.code == 2
    assert "is not writable" in capsys.readouterr().err


def test_demo_too_many_devices(tmp_path, capsys):
    status = demo.main(
        ["--devices", "2000", "--rounds", "1", "--output-dir", str(tmp_path)]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert "cannot give 2000 devices" in err
    assert "use at most" in err


def test_sfl_without_command(capsys):
    assert cli.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "demo" in captured.err


def test_demo_options_error_is_short(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--rounds", "0"])
    assert capsys.readouterr().err.splitlines() == [
        "sfl demo: error: argument --rounds: 0 is not a positive integer",
        "run 'sfl demo --help' to list the options",
    ]


def test_demo_invalid_settings_short(monkeypatch, capsys):
    context = {**read_cdk_context(), "fl:aggregator": {"accumulator": "float16"}}
    monkeypatch.setattr(config, "read_cdk_context", lambda: context)
    with pytest.raises(SystemExit) as stopped:
        demo.main(["--rounds", "1"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert "fl:aggregator.accumulator is 'float16'" in err
    assert "Traceback" not in err
