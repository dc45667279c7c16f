"""Bad inputs of the command line's own flags are one line on stderr and exit status 2 (table-driven): YAML
``--params`` files (aliases refused, never code), notebook parameters checked against each notebook's ``parameters``
cell, lists (one rule per kind), output paths that are broken links, and input paths that are not files."""

from __future__ import annotations

import os
import time

import pytest

from goc_utils.lists import number_list
from goc_utils.model.sampler import parse_classes
from goc_utils.study.notebooks import check_parameters, load_params_file, study_notebooks
from tests.conftest import run_bad_input


def _files(tmp_path):
    """The bad paths the table refers to by name."""
    yamls = {
        "RECURSIVE_YAML": "steps: &a [*a]\n",
        "ALIAS_BOMB_YAML": "a0: &a0 [x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]\n" for k in range(1, 10)),
        "ANCHOR_YAML": "ckpt: &weights w.pt\nvae: ema\n",
        "CODE_YAML": "ckpt: !!python/object/apply:os.system ['echo this yaml runs code']\n",
        "DEEP_YAML": "steps: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "BINARY_YAML": b"steps: \xff\xfe\x00\n",
        "UNKNOWN_YAML": "stepz: 4\n",
        "WRONG_TYPE_YAML": "steps: many\n",
        "BOOL_FOR_INT_YAML": "per_class: true\n",
        "INT_FOR_STR_YAML": "classes: 3\n",
        "NULL_FOR_STR_YAML": "vae:\n",
        "LIST_YAML": "- steps\n- 4\n",
    }
    made = {}
    for name, text in yamls.items():
        made[name] = tmp_path / f"{name.lower()}.yaml"
        made[name].write_bytes(text if isinstance(text, bytes) else text.encode())
    made["BIG_YAML"] = tmp_path / "big.yaml"
    made["BIG_YAML"].write_text("# padding\n" * 200_000)
    made["A_FILE"] = tmp_path / "a_file"
    made["A_FILE"].write_text("not a folder")
    made["LOOP"] = tmp_path / "loop"
    made["LOOP"].symlink_to(made["LOOP"])
    made["DANGLING"] = tmp_path / "dangling"
    made["DANGLING"].symlink_to(tmp_path / "nowhere")
    made["FIFO"] = tmp_path / "fifo"
    os.mkfifo(made["FIFO"])
    made["FOLDER"] = tmp_path / "folder"
    made["FOLDER"].mkdir()
    return made


def _path(arg: str, files: dict) -> str:
    """``arg`` with a leading file name of the table (``LOOP/g.png``) replaced by its path."""
    head, sep, rest = arg.partition("/")
    return str(files.get(head, head)) + sep + rest


NB = ["notebooks", "--only", "01"]
SAMPLE = ["sample", "--steps", "4", "--classes", "1"]
EVAL = ["eval", "--num-samples", "4", "--out", "OUT"]
CASES = [
    # class ids beyond every preset's classes are refused before a range is expanded
    (["sample", "--steps", "4", "--classes", "0-999999999999"], "class id 999999999999 in '0-999999999999' is outside"),
    (["sample", "--steps", "4", "--classes=-3"], "class id -3 in '-3' is outside every model's classes"),
    (["priors", "--steps", "4", "--classes", "5-1000", "--out", "OUT/p.safetensors"], "class id 1000 in '5-1000'"),
    # the samples of one priors file are bounded by its header (safetensors' limit), checked before the run
    (["priors", "--steps", "4", "--classes", "0", "--per-class", "100000000", "--out", "OUT/p.safetensors"],
     "100,000,000 samples (classes x --per-class) do not fit one priors file"),
    # 1. YAML --params: no anchors or aliases (recursion, alias bombs), never code, what the path is
    ([*NB, "--params", "RECURSIVE_YAML"], "uses the YAML anchor &a; params files refuse anchors and aliases"),
    ([*NB, "--params", "ALIAS_BOMB_YAML"], "refuse anchors and aliases"),
    ([*NB, "--params", "ANCHOR_YAML"], "is not valid YAML at line 1 (uses the YAML anchor &weights"),
    ([*NB, "--params", "CODE_YAML"], "could not determine a constructor for the tag"),
    ([*NB, "--params", "DEEP_YAML"], "nests values too deeply"),
    ([*NB, "--params", "BINARY_YAML"], "is not valid YAML"),
    ([*NB, "--params", "LIST_YAML"], "must hold a mapping of parameter: value"),
    ([*NB, "--params", "BIG_YAML"], "more than a params file can be"),
    ([*NB, "--params", "FOLDER"], "is a folder, not a file; pass --params FILE.yaml"),
    ([*NB, "--params", "/dev/zero"], "is not a regular file (a device, FIFO or socket)"),
    ([*NB, "--params", "FIFO"], "is not a regular file (a device, FIFO or socket)"),
    ([*NB, "--params", "DANGLING"], "is a symbolic link to nothing"),
    # 2. notebook parameters against the parameters cells, the selection, the figures folder
    ([*NB, "--params", "UNKNOWN_YAML"], "unknown parameter 'stepz' for notebook(s) 01; known: cfg_scale, ckpt,"),
    ([*NB, "--params", "WRONG_TYPE_YAML"], "parameter 'steps' is 'many' (str), but notebook(s) 01 expect int"),
    (["notebooks", "--params", "BOOL_FOR_INT_YAML"], "is 'True' (bool), but notebook(s) 01, 02, 03 expect int"),
    ([*NB, "--params", "INT_FOR_STR_YAML"], "parameter 'classes' is '3' (int), but notebook(s) 01 expect str"),
    ([*NB, "--params", "NULL_FOR_STR_YAML"], "parameter 'vae' is 'None' (NoneType), but notebook(s) 01 expect str"),
    (["notebooks", "--only", ""], "empty --only list ''"),
    (["notebooks", "--only", "01,,03"], "malformed --only list '01,,03' (an empty item)"),
    (["notebooks", "--only", "1,01"], "--only list '1,01' lists 01 twice"),
    (["notebooks", "--only", "42"], "no notebook numbered '42'; choose from 01, 02"),
    ([*NB, "--figures-dir", "/proc/x"], "--figures-dir '/proc/x': cannot create the folder"),
    ([*NB, "--figures-dir", "A_FILE"], "is a file; give a folder"),
    ([*NB, "--figures-dir", "LOOP"], "is a symbolic link loop; give a folder"),
    # 3. lists: class lists refuse empty items, method and number lists also repeats
    ([*SAMPLE[:3], "--classes", "1,,2"], "malformed class list '1,,2' (an empty item)"),
    ([*SAMPLE[:3], "--classes", "1,2,"], "malformed class list '1,2,' (an empty item)"),
    ([*SAMPLE[:3], "--classes", ""], "empty class list ''"),
    ([*SAMPLE[:3], "--classes", "9-0"], "class range '9-0' in '9-0' is empty"),
    (["priors", "--classes", "3,,5", "--steps", "4", "--out", "OUT/p.safetensors"], "(an empty item)"),
    (["bench", "--steps", "4", "--methods", "none,none"], "method list 'none,none' lists none twice"),
    (["bench", "--steps", "4", "--methods", ""], "empty method list ''"),
    (["bench", "--steps", "4", "--methods", "none,,fora-50"], "malformed method list 'none,,fora-50' (an empty"),
    ([*EVAL, "--methods", "none,fora-50,none"], "lists none twice"),
    ([*EVAL, "--methods", "fora-50+goc:steps=3,5,,none"], "malformed step list '3,5,' (an empty item)"),
    ([*EVAL, "--methods", "fora-50+goc:steps=3,3"], "step list '3,3' lists 3 twice"),
    ([*EVAL, "--methods", "none", "--cfg-scale", "1.5,1.5"], "cfg list '1.5,1.5' lists 1.5 twice"),
    ([*EVAL, "--methods", "none", "--cfg-scale", "1.5,1.50"], "lists 1.5 twice"),
    ([*EVAL, "--methods", "none", "--cfg-scale", "1.5,"], "malformed cfg list '1.5,' (an empty item)"),
    ([*SAMPLE, "--cache", "fora-50", "--compensator", "goc", "--goc-steps", "3,,5"], "(an empty item)"),
    (["tiny-report", "--model", "tiny-fashion", "--fid-samples", "2000,2000"], "lists 2000 twice"),
    # 4. output paths that are broken links say so
    ([*SAMPLE, "--out", "LOOP/g.png"], "/loop' is a symbolic link loop; choose another path"),
    ([*SAMPLE, "--out", "DANGLING/g.png"], "/dangling' is a symbolic link to nothing"),
    ([*SAMPLE, "--out", "DANGLING"], "dangling' is a symbolic link to nothing; choose another path"),
    ([*SAMPLE, "--out", "A_FILE/g.png"], "/a_file' is a file, not a folder"),
    (["eval-sample", "--num-samples", "2", "--out", "LOOP"], "--out '"),
    (["eval-sample", "--num-samples", "2", "--out", "DANGLING"], "is a symbolic link to nothing; give a folder"),
    ([*EVAL[:-1], "LOOP", "--methods", "none"], "is a symbolic link loop; give a folder"),
    (["priors", "--steps", "4", "--classes", "0", "--out", "DANGLING/p.safetensors"], "a symbolic link to nothing"),
    # 5. input paths: what the path is instead of a file; a FIFO or /dev/zero never hangs
    ([*SAMPLE, "--ckpt", "/dev/zero"], "checkpoint '/dev/zero' is not a regular file"),
    ([*SAMPLE, "--ckpt", "FIFO"], "is not a regular file (a device, FIFO or socket); pass --ckpt PATH"),
    ([*SAMPLE, "--ckpt", "LOOP"], "checkpoint '"),
    ([*SAMPLE, "--ckpt", "DANGLING"], "is a symbolic link to nothing; pass --ckpt PATH"),
    (["tiny-report", "--ckpt", "FIFO"], "is not a regular file"),
    (["export-diffusers", "--ckpt", "/dev/zero", "--out", "OUT/d"], "is not a regular file"),
    (
        [*EVAL, "--methods", "none", "--features", "inception", "--ref-batch", "data/reference/digits_ref.npz"]
        + ["--inception-weights", "FIFO"],
        "Inception weights '",
    ),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_cli_input_is_one_line_with_exit_2(argv, message, tmp_path, capsys):
    files = _files(tmp_path)
    out = tmp_path / "out"
    argv = [_path(a, files).replace("OUT", str(out)) for a in argv]
    if "--out" not in argv and argv[0] == "sample":
        argv += ["--out", str(tmp_path / "g.png")]
    started = time.perf_counter()
    run_bad_input(argv, message, capsys, out)
    assert time.perf_counter() - started < 60  # no alias bomb, FIFO or device is expanded or read


def test_params_files_never_run_code_and_stay_plain_data(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"ckpt: !!python/object/apply:os.system ['touch {marker}']\n")
    run_bad_input(["notebooks", "--params", str(evil)], "is not valid YAML at line 1", capsys)
    assert not marker.exists()
    good = tmp_path / "good.yaml"
    good.write_text("steps: 4\ncfg_scale: 2  # an int is a fine float\nckpt: w.pt\nsmoke: true\n")
    assert load_params_file(good) == {"steps": 4, "cfg_scale": 2, "ckpt": "w.pt", "smoke": True}


def test_parameters_are_checked_against_the_selected_notebooks_only():
    (nb01,) = study_notebooks(["01"])
    (nb05,) = study_notebooks(["05"])
    check_parameters({"methods": "none", "cfg_scales": "1.5,4.0", "steps": 4}, [nb01, nb05])
    with pytest.raises(Exception, match="unknown parameter 'methods' for notebook.s. 01; known:"):
        check_parameters({"methods": "none"}, [nb01])
    with pytest.raises(Exception, match="notebook.s. 05 expect int"):
        check_parameters({"num_samples": 2.5}, [nb01, nb05])


def test_list_rules_by_kind():
    assert parse_classes("207,207,360") == [207, 207, 360]  # a class twice: two samples with their own noise
    assert parse_classes("0-2,5") == [0, 1, 2, 5]
    assert number_list("1.5, 4", float, "cfg list", "1.5") == [1.5, 4.0]
    with pytest.raises(Exception, match="not finite"):
        number_list("1.5,nan", float, "cfg list", "1.5")
