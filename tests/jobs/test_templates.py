"""Queue templates with RELION 3.1's XXX...XXX variables (credgui.jobs.launch): no queue run."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from credgui.config import HookConfig, write_config
from credgui.errors import InputError
from credgui.jobs.launch import (
    EXIT_FILE,
    HOOK_ENV,
    RefineParams,
    default_template,
    relion_command,
    write_submit_script,
)
from credgui.jobs.queue import parse_job_id

ALL_VARS = """#!/bin/bash
#SBATCH --job-name=XXXnameXXX
#SBATCH --partition=XXXqueueXXX
#SBATCH --ntasks=XXXmpinodesXXX --cpus-per-task=XXXthreadsXXX
#SBATCH --output=XXXoutfileXXX --error=XXXerrfileXXX
# cores=XXXcoresXXX dedicated=XXXdedicatedXXX nodes=XXXnodesXXX
# extras: [XXXextra1XXX] [XXXextra2XXX] [XXXextra3XXX]
mpiexec -n XXXmpinodesXXX XXXcommandXXX
"""


@pytest.fixture
def params(tmp_path) -> RefineParams:
    proj = tmp_path / "proj"
    return RefineParams(
        particles_star=proj / "particles.star",
        initial_model=proj / "initial_model.mrc",
        job_dir=proj / "Refine3D" / "job002",
        particle_diameter=150,
        mpi_procs=5,
        threads=2,
        auto_iter_max=4,
    )


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("RELION_QSUB_TEMPLATE", "RELION_QUEUE_NAME", "RELION_QSUB_EXTRA_COUNT",
                 "RELION_MINIMUM_DEDICATED", "RELION_QSUB_COMMAND"):
        monkeypatch.delenv(name, raising=False)
    for i in range(1, 5):
        monkeypatch.delenv(f"RELION_QSUB_EXTRA{i}", raising=False)
        monkeypatch.delenv(f"RELION_QSUB_EXTRA{i}_DEFAULT", raising=False)
    return monkeypatch


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_every_variable_is_substituted(tmp_path, params, clean_env):
    template = tmp_path / "t.sh"
    template.write_text(ALL_VARS)
    params.job_dir.mkdir(parents=True)
    write_config(params.job_dir / "credgui.toml", HookConfig())
    script = write_submit_script(params, template, queue="gpu", extra={1: "--time=1:00:00", 2: "x y"}, hook="myhook --fast")
    assert script == params.job_dir / "run_submit.script"
    text = script.read_text()
    assert "XXX" not in text
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "#SBATCH --job-name=Refine3D/job002/" in lines
    assert "#SBATCH --partition=gpu" in lines
    assert "#SBATCH --ntasks=5 --cpus-per-task=2" in lines
    assert "#SBATCH --output=Refine3D/job002/run.out --error=Refine3D/job002/run.err" in lines
    assert "# cores=10 dedicated=1 nodes=10" in lines
    assert "# extras: [--time=1:00:00] [x y] []" in lines
    command_line = next(line for line in lines if line.startswith("mpiexec"))
    assert shlex.split(command_line) == ["mpiexec", "-n", "5", *relion_command(params)]
    # the hook and config are exported after the directives, before the first command
    exports = [line for line in lines if line.startswith("export ")]
    assert f"export {HOOK_ENV}='myhook --fast'" in exports
    assert f"export CREDGUI_CONFIG={params.job_dir / 'credgui.toml'}" in exports
    assert lines.index(exports[0]) > max(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    assert lines.index(exports[0]) < lines.index(command_line)
    assert f"cd {params.job_dir.parent.parent}" in lines
    assert any(EXIT_FILE in line for line in lines[lines.index(command_line):])
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_environment_overrides_as_relion(tmp_path, params, clean_env):
    template = tmp_path / "t.sh"
    template.write_text(ALL_VARS)
    clean_env.setenv("RELION_QUEUE_NAME", "long")
    clean_env.setenv("RELION_QSUB_EXTRA_COUNT", "3")
    clean_env.setenv("RELION_QSUB_EXTRA1", "Wall time")
    clean_env.setenv("RELION_QSUB_EXTRA1_DEFAULT", "--time=2-00:00:00")
    clean_env.setenv("RELION_QSUB_EXTRA3", "Account")
    clean_env.setenv("RELION_QSUB_EXTRA3_DEFAULT", "--account=cryo")
    clean_env.setenv("RELION_MINIMUM_DEDICATED", "4")
    lines = _lines(write_submit_script(params, template, hook="h"))
    assert "#SBATCH --partition=long" in lines
    assert "# cores=10 dedicated=4 nodes=3" in lines  # ceil(10 / 4)
    assert "# extras: [--time=2-00:00:00] [] [--account=cryo]" in lines
    # an explicit extra wins over the default
    lines = _lines(write_submit_script(params, template, extra=["--time=5"], hook="h"))
    assert "# extras: [--time=5] [] [--account=cryo]" in lines


def test_default_queue_and_template(tmp_path, params, clean_env):
    assert default_template().name == "slurm.sh" and default_template().is_file()
    lines = _lines(write_submit_script(params, hook="h"))  # credgui's shipped template
    assert "#SBATCH --partition=openmpi" in lines  # RELION's default queue name
    assert not any("XXX" in line for line in lines)
    mine = tmp_path / "site.sh"
    mine.write_text("#!/bin/sh\n#PBS -q XXXqueueXXX\nmpirun -np XXXcoresXXX XXXcommandXXX\n")
    clean_env.setenv("RELION_QSUB_TEMPLATE", str(mine))
    lines = _lines(write_submit_script(params, hook="h"))
    assert lines[1] == "#PBS -q openmpi" and lines[2].startswith("# added by credgui")
    assert any(line.startswith("mpirun -np 10 relion_refine_mpi --o Refine3D/job002/run") for line in lines)


def test_csh_template_uses_setenv(tmp_path, params, clean_env):
    template = tmp_path / "qsub.csh"
    template.write_text("#!/bin/tcsh\n#$ -pe mpi XXXcoresXXX\nmpirun -n XXXmpinodesXXX XXXcommandXXX\n")
    lines = _lines(write_submit_script(params, template, hook="h"))
    assert f"setenv {HOOK_ENV} h" in lines
    assert not any("CREDGUI_CONFIG" in line for line in lines)  # no credgui.toml in the job yet
    assert not any(line.startswith("export") or "credgui_rc" in line for line in lines)


def test_unknown_template_variable_is_an_input_error(tmp_path, params, clean_env):
    template = tmp_path / "t.sh"
    template.write_text("#!/bin/bash\nXXXcommandXXX --gpu XXXgpusXXX\n")
    with pytest.raises(InputError, match=r"t.sh: unknown template variable\(s\) XXXgpusXXX"):
        write_submit_script(params, template, hook="h")
    with pytest.raises(InputError, match="cannot read queue template"):
        write_submit_script(params, tmp_path / "missing.sh", hook="h")


@pytest.mark.parametrize(
    "output,job_id",
    [
        ("Submitted batch job 4242\n", "4242"),
        ("4243;cluster\n", "4243"),  # sbatch --parsable
        ("4244.pbs-server\n", "4244"),
        ('Your job 4245 ("run") has been submitted\n', "4245"),
        ("no id here\n", None),
    ],
)
def test_job_id_parsing(output, job_id):
    assert parse_job_id(output) == job_id
