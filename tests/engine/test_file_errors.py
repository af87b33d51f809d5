"""File names in every file error (issue 24): a file the CLI reads that is missing, a folder, not
UTF-8 or not JSON gives one line naming it, never a bare UnicodeDecodeError or a traceback."""

from __future__ import annotations

import json
import os

import pytest

from fastcl.__main__ import main
from fastcl.engine import files


def test_embed_names_a_text_file_that_is_not_utf8_or_a_folder(tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    cases = ((bad, "is not UTF-8 text"), (tmp_path, "is a folder"), (tmp_path / "nope.txt", "does not exist"))
    for path, said in cases:
        assert main(["embed", "--model", "tiny", "--text-file", str(path), "--out", str(tmp_path / "e.npy")]) == 2
        err = capsys.readouterr().err
        assert f"--text-file {str(path)!r} {said}" in err and "Traceback" not in err


def test_read_text_and_json_name_the_file(tmp_path):
    (tmp_path / "bad.json").write_text('{"rows": [1, 2,,]}')
    with pytest.raises(ValueError, match=r"table '.*bad.json' is not valid JSON \(line 1, column 16: Expecting value"):
        files.read_json(str(tmp_path / "bad.json"), "table")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match=r"'.*bin.json' is not UTF-8 text"):
        files.read_json(str(tmp_path / "bin.json"))
    if os.geteuid() != 0:  # root reads anything
        (tmp_path / "locked.txt").write_text("x")
        os.chmod(tmp_path / "locked.txt", 0)
        with pytest.raises(ValueError, match=r"'.*locked.txt' cannot be read \(Permission denied\)"):
            files.read_text(str(tmp_path / "locked.txt"))


def test_a_simcse_model_folder_with_a_corrupt_config_is_named(tmp_path):
    from fastcl.simcse.backbones import read_json

    (tmp_path / "fastcl_simcse.json").write_text('{"pooler": "cls"')
    with pytest.raises(ValueError, match=r"model file '.*fastcl_simcse.json' is not valid JSON"):
        read_json(str(tmp_path / "fastcl_simcse.json"))
    (tmp_path / "fastcl_simcse.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"fastcl_simcse.json' holds a JSON list, not an object"):
        read_json(str(tmp_path / "fastcl_simcse.json"))


def test_plot_names_a_corrupt_label_efficiency_table(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    (tmp_path / "metrics.jsonl").write_text(json.dumps(dict(kind="step", step=1, epoch=0, loss=1.0)) + "\n")
    (tmp_path / "label_efficiency.json").write_text('{"rows": ')
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "label-efficiency table" in err and "label_efficiency.json' is not valid JSON" in err
