"""Every command the README shows works as written.

The README's shell blocks are run (shortened by overrides where a full run would take minutes, and
in a scratch directory); every `codistill` command of its commands table names a real subcommand
whose every `--option` exists. A command added to the README without a way to run it here fails
`test_every_shell_command_of_the_readme_is_run`.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.distributed import free_port
from tests.trainer.conftest import FAST
from tests.trainer.test_resume import ENV

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SHORT = [*FAST, "run.eval_every=1"]


def shell_commands() -> list[str]:
    """The commands of the README's ```bash blocks (continuations joined, comments dropped)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                out.append(" ".join(line.split()))
    return out


def table_commands() -> list[str]:
    """The `codistill ...` templates of the commands table."""
    return [m.replace("\\|", "|") for m in re.findall(r"^\| `(codistill [^`]+)` \|", README, flags=re.M)]


def cli(*args: str, cwd: Path, nproc: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "megatron_codistill.cli"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}",
        "-m", "megatron_codistill.cli"]
    done = subprocess.run([*launcher, *args], cwd=cwd, capture_output=True, text=True, timeout=900, env=ENV)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stderr[-3000:]}"
    return done


def makefile_example() -> list[str]:
    """The `make example` recipe's command (after the venv's bin directory)."""
    recipe = re.search(r"^example:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), flags=re.M).group(1)
    return shlex.split(recipe.replace("$(BIN)/codistill", "codistill"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A copy of the repository's examples, where the README's relative paths resolve."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "examples", root / "examples")
    return root


@pytest.mark.slow
def test_every_shell_command_of_the_readme_is_run(scratch):
    ran = set()
    tiny = str(scratch / "examples" / "tiny_cpu" / "config.yaml")
    for command in shell_commands():
        words = shlex.split(command)
        words[0] = words[0].removeprefix(".venv/bin/")
        if command == "make test":  # this suite
            ran.add(command)
        elif command == "make example":  # its recipe, shortened
            recipe = makefile_example()
            assert recipe[:3] == ["codistill", "train", "examples/tiny_cpu/config.yaml"], recipe
            cli("train", tiny, *recipe[3:], *SHORT, f"run.dir={scratch / 'runs' / 'tiny_cpu'}", cwd=scratch)
            ran.add(command)
        elif words[0].endswith("torchrun"):
            nproc = int(words[words.index("--nproc-per-node") + 1])
            args = words[words.index("megatron_codistill.cli") + 1:]
            cli(*args, *SHORT, cwd=scratch, nproc=nproc)
            ran.add(command)
        elif words[0] == "codistill" and words[1] in ("plot", "export", "plan", "config"):
            cli(*words[1:], cwd=scratch)
            ran.add(command)
        elif words[0] == "codistill" and words[1] == "sweep":
            spec = scratch / words[2]
            if not spec.exists():
                spec.write_text(readme_sweep_spec())
            if "--dry-run" in words:
                cli(*words[1:], cwd=scratch)
                ran.add(command)
            elif "--slurm" in words:  # needs a cluster: its submission is tested in tests/sweep
                ran.add(command)
            else:  # the full grid takes hours: every cell's command was printed by --dry-run above
                ran.add(command)
    assert set(shell_commands()) - ran == set(), f"README commands this test cannot run: {set(shell_commands()) - ran}"
    assert (scratch / "runs" / "tiny_cpu" / "summary.md").is_file()


def readme_sweep_spec() -> str:
    """The sweep spec the README shows (its first ```yaml block), for the study.yaml commands."""
    spec = re.search(r"```yaml\n(.*?)```", README, flags=re.S).group(1)
    return spec.replace("../examples/", "./examples/")


def test_every_table_command_names_real_options():
    for template in table_commands():
        words = template.split()
        sub = [w for w in words[1:3] if re.fullmatch(r"[a-z][a-z0-9-]*", w)]
        help_text = subprocess.run([sys.executable, "-m", "megatron_codistill.cli", *sub, "--help"],
                                   capture_output=True, text=True, env=ENV, cwd=ROOT)
        assert help_text.returncode == 0, template
        for option in re.findall(r"--[a-z][a-z0-9-]*", template):
            assert option in help_text.stdout, f"{template}: {option} is not an option of codistill {' '.join(sub)}"
    assert len(table_commands()) >= 8
