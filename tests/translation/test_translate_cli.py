"""`vstk translate train` and `vstk translate apply` on a small CrossMoDA folder."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from vstk.volume import read_nifti, write_nifti

from conftest import make_image

TINY = ["--set", "centre=head", "--set", "size=32", "--set", "crop=none", "--set", "spacing=0.8,0.8", "--set", "ngf=4",
        "--set", "n_blocks=1", "--set", "ndf=4", "--set", "sample_every=0", "--set", "checkpoint_every=2",
        "--set", "cpu_precision=fp32"]  # float32 whatever the CPU: the steps are counted


def vstk(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vstk.cli", *args], capture_output=True, text=True, timeout=600)


def test_train_then_apply_to_a_file_and_a_folder(crossmoda_folder, tmp_path):
    work = tmp_path / "work"
    result = vstk("translate", "train", "-t", "cyclegan", "--data", str(crossmoda_folder), "--out", str(work),
                  "--profile", "cpu", "--steps", "4", *TINY)
    assert result.returncode == 0, result.stderr
    checkpoint = work / "cyclegan" / "translator.pt"
    assert checkpoint.exists() and (work / "cyclegan" / "losses.csv").read_text().count("\n") == 5
    assert list((work / "cyclegan" / "samples").glob("*.png"))
    source = crossmoda_folder / "crossmoda2022_ldn_1_ceT1.nii.gz"
    out = tmp_path / "single" / "pseudo_hrT2.nii.gz"
    result = vstk("translate", "apply", "-t", "cyclegan", "--checkpoint", str(checkpoint), str(source), str(out))
    assert result.returncode == 0, result.stderr
    translated, original = read_nifti(out), read_nifti(source)
    assert translated.same_grid(original) and np.isfinite(translated.array).all()
    folder_out = tmp_path / "translated"
    result = vstk("translate", "apply", "-t", "cyclegan", "--checkpoint", str(checkpoint), str(crossmoda_folder),
                  str(folder_out))
    assert result.returncode == 0, result.stderr
    assert len(list(folder_out.glob("*.nii.gz"))) == 4  # 2 ceT1 + 2 hrT2 inputs, labels skipped


def test_bad_inputs_are_one_line_errors(crossmoda_folder, tmp_path):
    unknown = vstk("translate", "train", "-t", "cyclegann", "--data", str(crossmoda_folder), "--out", str(tmp_path))
    assert unknown.returncode == 2
    assert "unknown translator 'cyclegann'" in unknown.stderr and "did you mean 'cyclegan'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    bad_mode = vstk("translate", "train", "-t", "qsattn", "--data", str(crossmoda_folder), "--out", str(tmp_path),
                    "--set", "qs_mode=semi")
    assert bad_mode.returncode == 2 and "unknown QS-Attn mode 'semi'" in bad_mode.stderr
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    image = crossmoda_folder / "crossmoda2022_ldn_1_ceT1.nii.gz"
    corrupt = vstk("translate", "apply", "-t", "cyclegan", "--checkpoint", str(garbage), str(image),
                   str(tmp_path / "o.nii.gz"))
    assert corrupt.returncode == 2 and "garbage.pt: corrupt or truncated checkpoint" in corrupt.stderr
    assert len(corrupt.stderr.strip().splitlines()) == 1


def test_a_label_map_is_refused_as_translation_input(crossmoda_folder, tmp_path):
    work = tmp_path / "work"
    assert vstk("translate", "train", "-t", "qsattn", "--data", str(crossmoda_folder), "--out", str(work),
                "--steps", "2", *TINY, "--set", "num_patches=8", "--set", "netf_nc=8").returncode == 0
    label_like = make_image()
    write_nifti(label_like.with_array((label_like.array > 300).astype(np.uint8) * 2), tmp_path / "seg.nii.gz")
    result = vstk("translate", "apply", "-t", "qsattn", "--checkpoint", str(work / "qsattn" / "translator.pt"),
                  str(tmp_path / "seg.nii.gz"), str(tmp_path / "o.nii.gz"))
    assert result.returncode == 2 and "looks like a label map" in result.stderr
