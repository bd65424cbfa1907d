"""The README's Quickstart is what CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quickstart_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```bash\n")[1:]
    return [b.split("```", 1)[0].strip() for b in blocks]


def test_quickstart_has_two_commands_and_ci_runs_the_second():
    cmds = _quickstart_commands()
    assert len(cmds) == 2 and all("\n" not in c for c in cmds)
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == cmds[1]
