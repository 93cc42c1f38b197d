from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from vstk.cli import cli
from vstk.volume import write_nifti

from conftest import make_image


def test_data_check_lists_every_case(crossmoda_folder):
    result = CliRunner().invoke(cli, ["data", "check", str(crossmoda_folder)])
    assert result.exit_code == 0, result.output
    assert "layout crossmoda2022, 2 labelled ceT1, 2 hrT2" in result.output
    assert "crossmoda2022_ldn_1" in result.output and "VS" in result.output


def test_bad_input_is_one_line_with_nonzero_exit_and_no_traceback(crossmoda_folder):
    (crossmoda_folder / "crossmoda2022_etz_2_Label.nii.gz").unlink()
    result = subprocess.run([sys.executable, "-m", "vstk.cli", "data", "check", str(crossmoda_folder)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "crossmoda2022_etz_2_ceT1.nii.gz" in lines[0]
    assert "has no label" in lines[0] and "fix:" in lines[0]


def test_debug_flag_shows_the_traceback(crossmoda_folder):
    image = make_image()
    write_nifti(image.with_array(image.array * 0), crossmoda_folder / "crossmoda2022_ldn_3_hrT2.nii.gz")
    result = subprocess.run([sys.executable, "-m", "vstk.cli", "--debug", "data", "check", str(crossmoda_folder)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "image is empty" in result.stderr


def test_help_does_not_import_torch_or_nnunet():
    code = ("import sys; from vstk.cli import cli; from click.testing import CliRunner; "
            "r = CliRunner().invoke(cli, ['--help']); r2 = CliRunner().invoke(cli, ['plugins']); "
            "assert r.exit_code == 0 and r2.exit_code == 0; "
            "print(sorted(m for m in ('torch', 'nnunetv2', 'h5py') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
