"""The house rules, checked on every file: no script imports a script (what two scripts share lives
in kazgpt/), no test loads a script by path, functions stay within a screen or two, lines within
120 columns."""

import ast

from conftest import REPO

MAX_FUNCTION_LINES = 100
MAX_LINE = 120


def python_files(include_tests: bool = True):
    for path in sorted(REPO.rglob("*.py")):
        parts = path.relative_to(REPO).parts
        if any(p.startswith(".") for p in parts) or (parts[0] == "tests" and not include_tests):
            continue
        yield path


def is_script(path) -> bool:
    return "__main__" in path.read_text(encoding="utf-8")


def test_no_script_imports_a_script():
    """Tests may import a script's config dataclass (train.TrainConfig), but load nothing by path."""
    scripts = {
        p.relative_to(REPO).with_suffix("").as_posix().replace("/", "."): p for p in python_files() if is_script(p)
    }
    offenders = []
    for path in python_files():
        in_tests = path.relative_to(REPO).parts[0] == "tests"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "spec_from_file_location":
                offenders.append(f"{path.relative_to(REPO)} loads a file by path")
            if in_tests or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            offenders += [
                f"{path.relative_to(REPO)} imports the script {name}"
                for name in names
                if name in scripts and scripts[name] != path
            ]
    assert not offenders, offenders
    assert {"train", "sample", "eval_qa", "bench", "data.qazdata_char.prepare"} <= set(scripts)  # it sees them


def test_functions_and_lines_are_short():
    long_functions, long_lines = [], []
    for path in python_files():
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
        long_lines += [
            f"{path.relative_to(REPO)}:{n}" for n, line in enumerate(text.splitlines(), 1) if len(line) > MAX_LINE
        ]
    assert not long_functions, long_functions
    assert not long_lines, long_lines
