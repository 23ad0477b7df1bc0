"""The README and docs/ say only what exists: every command and config option they name, every link and
anchor they point at, and the README's measured numbers are those RESULTS.md holds."""
import importlib
import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FILE_TYPES = {"py", "md", "log", "yaml", "json", "png", "txt", "ckpt", "db", "csv", "onnx", "pt", "sh", "pkl"}
TYPOS_SHOWN = {"optimizer.weight_decy"}  # shown on purpose, as what the gate refuses
GROUPS = ("model", "data", "optimizer", "scheduler", "trainer", "callbacks", "logger", "budget", "experiment",
          "debug", "search")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces as -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_and_anchor_resolves(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: {target} does not exist"
        if anchor and file.suffix == ".md":
            anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", file.read_text(), flags=re.M)}
            assert anchor in anchors, f"{page.name}: no heading #{anchor} in {file.name}"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text()
    assert all(f"docs/{p.name}" in readme for p in PAGES[1:])


def test_every_command_named_exists():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for page in PAGES:
        text = page.read_text()
        for module in set(re.findall(r"python -m (mnist_arch(?:\.\w+)+)", text)):
            imported = importlib.import_module(module)
            assert hasattr(imported, "main") or importlib.util.find_spec(f"{module}.__main__"), f"{page.name}: {module}"
        for name in set(re.findall(r"\b(mnist-arch(?:-[a-z-]+)?)\b", text)) - {"mnist-arch"}:
            assert name.rstrip("-") in scripts or name.startswith("mnist-arch["), f"{page.name}: {name}"


def _config():
    from mnist_arch.config.compose import compose

    return compose(["search=8k"])


def test_every_config_key_and_option_named_exists():
    """`group=option` and `group.key` (or `group.key=value`) in code spans and code blocks."""
    cfg, missing = _config(), []
    for page in PAGES:
        text = page.read_text()
        for token in set(re.findall(r"(?<![\w.+/-])\+{0,2}([a-z_]+(?:\.[a-z_]+)+)(?==|`|\s|,|\))", text)):
            group = token.split(".")[0]
            if group not in GROUPS or token.rsplit(".", 1)[1] in FILE_TYPES or token in TYPOS_SHOWN:
                continue
            if token.startswith(("trainer.",)) and token.split(".")[1] not in cfg.trainer:
                continue  # +trainer.<name>: any pl.Trainer argument, checked by the run
            if token.startswith(("search.space.", "model.net.")):
                continue  # a space's keys are the space's own; a net's arguments are its constructor's
            parts = token.split(".")
            if group == "logger" and len(parts) == 3:  # logger.<option>.<key>: that option's entry
                option = REPO / "conf" / "logger" / f"{parts[1]}.yaml"
                if not option.is_file() or parts[2] not in (OmegaConf.load(option).get(parts[1]) or {}):
                    missing.append(f"{page.name}: {token}")
                continue
            missing.append(f"{page.name}: {token}") if OmegaConf.select(cfg, token, default="<absent>") == "<absent>" \
                else None
        for group, option in set(re.findall(rf"\b({'|'.join(GROUPS)})=(\w+)\b", text)):
            if option in ("null", "true", "false") or group in ("data", "trainer") and not (
                    REPO / "conf" / group / f"{option}.yaml").exists() and option.isdigit():
                continue
            if not (REPO / "conf" / group / f"{option}.yaml").is_file():
                missing.append(f"{page.name}: {group}={option}")
    assert not missing


def test_the_readmes_commands_compose():
    """Each `python -m mnist_arch.run|layers ...` line of the README's code blocks composes and validates (the
    first value of a multirun list)."""
    from mnist_arch.config.compose import load

    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    lines = [line.split("#")[0].split() for block in blocks for line in block.splitlines()]
    checked = 0
    for words in lines:
        if words[:3] in (["python", "-m", "mnist_arch.run"], ["python", "-m", "mnist_arch.layers"]):
            overrides = [w.split(",")[0] if "=" in w and "[" not in w else w for w in words[3:]
                         if "=" in w and not w.startswith("model.net._target_")]
            load(overrides)
            checked += 1
    assert checked >= 4


def test_the_readmes_measured_numbers_are_the_ones_results_holds():
    readme, results = (REPO / "README.md").read_text(), (REPO / "RESULTS.md").read_text()
    table = readme.split("| model | params |")[1].split("\n\n")[0]
    numbers = re.findall(r"\d\d\.\d\d% ± \d\.\d\d", table)
    assert numbers and all(n in results for n in numbers), [n for n in numbers if n not in results]


def test_the_layouts_tiers_are_the_imports():
    """docs/layout.md lists mnist_arch's files bottom to top: a file imports only files on its own line or above."""
    import ast

    block = (REPO / "docs" / "layout.md").read_text().split("## Layout")[1].split("```")[1]
    tier, lines = {}, block.split("mnist_arch/\n")[1].split("benchmarks/")[0].splitlines()
    for number, line in enumerate(lines):
        for word in line.split("  ")[1].split() if line.startswith("  ") else []:
            if word.endswith((".py", "/")) and not word.startswith("("):
                tier[word.rstrip("/").removesuffix(".py").replace("/", ".")] = number
    package = REPO / "mnist_arch"
    files = [p for p in package.rglob("*.py") if p.name != "__init__.py" and "conf" not in p.parts]
    for path in files:
        name = ".".join(path.relative_to(package).with_suffix("").parts)
        own = tier.get(name, tier.get(name.split(".")[0]))
        assert own is not None, f"{name} is not in docs/layout.md"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for module in (m for m in modules if m.startswith("mnist_arch.")):
                parts = module.split(".")[1:]
                target = next((tier[".".join(parts[:k])] for k in range(len(parts), 0, -1)
                               if ".".join(parts[:k]) in tier), None)
                if target is not None and name.split(".")[0] != parts[0]:
                    assert target <= own, f"{name} (line {own}) imports {module} (line {target}) from above it"


def test_every_import_inside_a_function_says_why():
    """Imports sit at the top of each module; one inside a function is a deferral a measured start-up cost (or an
    optional dependency) justifies, and says so: a comment with "deferred" on its line or just above its block
    (BENCHMARKS.md, "Start-up", has the measurements)."""
    import ast

    unexplained = []
    for path in sorted((REPO / "mnist_arch").rglob("*.py")):
        lines = path.read_text().splitlines()
        functions = [n for n in ast.walk(ast.parse("\n".join(lines))) if isinstance(n, ast.FunctionDef)]
        for node in {i for f in functions for i in ast.walk(f) if isinstance(i, (ast.Import, ast.ImportFrom))}:
            at = node.lineno - 2  # walk up over the block's other imports and blank lines to the comment above
            while at >= 0 and (not lines[at].strip() or lines[at].lstrip().startswith(("import ", "from "))):
                at -= 1
            said = [lines[node.lineno - 1]]
            while at >= 0 and "#" in lines[at]:  # the comment lines above (or a `try:  # ...`)
                said.append(lines[at])
                at = at - 1 if lines[at].lstrip().startswith("#") else -1
            if not any("deferred" in line.split("#", 1)[-1].lower() for line in said if "#" in line):
                unexplained.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not unexplained, f"imports inside functions with no reason given: {sorted(unexplained)}"


@pytest.mark.parametrize("designs", sorted((REPO / "benchmarks").glob("*.yaml")), ids=lambda p: p.name)
def test_every_designs_file_is_one_the_race_takes_and_each_design_composes(designs):
    """benchmarks/*.yaml are the designs RESULTS.md raced or confirmed: each is a file the race reads
    (search.race_candidates) and each design's overrides compose to a valid config today."""
    from mnist_arch.config.compose import load
    from mnist_arch.search.race import designs_from_file

    for design in designs_from_file(str(designs)):
        assert load(list(design.overrides)).model.name, design.name


@pytest.mark.parametrize("script", sorted((REPO / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_every_benchmark_script_still_imports_and_parses_its_arguments(script):
    """The benchmarks are not run by the suite (they take minutes on real MNIST), but what BENCHMARKS.md's
    commands name must still exist: a rename in the package fails here, not on the next measurement."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]
    assert "usage:" in done.stdout


def test_the_readmes_numbers_are_results_numbers():
    """Every accuracy the README's front table states (mean ± std) is one RESULTS.md states, with its seeds: a
    number measured once is written once, and the front door cannot drift from it (issue 46, ask 8)."""
    import re

    readme, results = (REPO / "README.md").read_text(), (REPO / "RESULTS.md").read_text()
    table = readme.split("| model | params |")[1].split("\n\n")[0]
    stated = re.findall(r"(\d\d\.\d\d% ± \d\.\d\d)(?: \([^)]*seeds ([0-9-]+))?", table)
    assert len(stated) >= 5
    for number, seeds in stated:
        assert number in results, f"README states {number}, which RESULTS.md does not"
    assert "seeds 11-20" in table and "seeds 1-5" in table  # each row says which seeds


def test_the_configs_option_lists_name_every_option():
    """conf/config.yaml's comment beside each group lists every option of it that a user picks (a leading
    underscore marks a file other files build on), and none that is gone."""
    import re

    lines = (REPO / "conf" / "config.yaml").read_text().split("defaults:")[1].split("\n\n")[0].splitlines()
    listed, group = {}, None
    for line in lines:
        head = re.match(r"\s+- (\w+): \S+\s+#(.*)", line)
        if head:
            group = head.group(1)
            listed[group] = head.group(2)
        elif group and re.match(r"\s+#", line):
            listed[group] += line
    for group in ("model", "optimizer", "scheduler", "trainer", "logger", "experiment", "search", "debug"):
        options = {p.stem for p in (REPO / "conf" / group).glob("*.yaml") if not p.stem.startswith("_")}
        named = set(re.findall(r"[\w]+", listed[group]))
        assert options <= named, (group, options - named)
