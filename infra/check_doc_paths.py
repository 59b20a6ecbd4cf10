"""List the files and modules that comments and docstrings name, and fail on those that do not exist.

A comment that points at a module by its path from before a move, or at a notes file that lives
outside the repository, sends the reader nowhere. Paths (`streams/kafka/topics.py`, `README.md`)
must be files of the repository or of an installed package (`faust/transport/consumer.py`); dotted
names (`streams.kafka.topics.TopicManager`) must be modules of `streams`/`app`, optionally followed
by a name the module defines. Standard library only; `python infra/check_doc_paths.py [--all]`
(`--all` also prints what resolves).
"""

from __future__ import annotations

import ast
import importlib.util
import io
import re
import sys
import tokenize
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("streams", "app", "tests", "bench", "infra")
SKIPPED = ("infra/kafka/.cache", "infra/kafka/.data")
# A path-like word ending in a file suffix the project keeps: `streams/kafka/topics.py`, `README.md`.
MENTION = re.compile(r"(?<![\w./-])((?:\.\.?/)?[\w.-]*[\w-](?:/[\w.-]+)*\.(?:py|md|yaml|yml|avsc|toml))(?![\w/-])")
DOTTED = re.compile(r"(?<![\w./-])((?:streams|app)(?:\.[A-Za-z_]\w*)+)")


def sources() -> Iterator[Path]:
    """Yield the Python files that are scanned, in a stable order."""
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not rel.startswith(SKIPPED):
                yield path


def prose(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line, text) of every comment and docstring in a Python file."""
    text = path.read_text()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                yield body[0].lineno, body[0].value.value


def resolves(mention: str, where: Path, names: set[str], paths: set[str]) -> bool:
    """Tell whether a path names a file of the repository (from the root, its folder, or by name)
    or of an installed package."""
    if (where.parent / mention).resolve().is_file():
        return True
    clean = mention.removeprefix("./")
    if "/" not in clean:
        return clean in names
    if clean in paths or any(p.endswith("/" + clean) for p in paths):
        return True
    top, _, rest = clean.partition("/")
    spec = importlib.util.find_spec(top) if top.isidentifier() else None
    origin = spec.submodule_search_locations if spec else None
    return bool(origin) and any((Path(loc) / rest).is_file() for loc in origin or ())


def defined_names(module: Path) -> set[str]:
    """Return the names a module defines or imports at top level."""
    names: set[str] = set()
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def module_resolves(dotted: str) -> bool:
    """Tell whether `a.b.c[.Name]` is a module of the repository, optionally with a name it defines."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:end])
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if module.is_file():
            rest = parts[end:]
            return not rest or rest[0] in defined_names(module)
    return False


def main(argv: list[str]) -> int:
    """Print every unresolved mention as `file:line: path`; return 1 when there is one."""
    tracked = [p for p in ROOT.rglob("*") if p.is_file() and not p.relative_to(ROOT).as_posix().startswith(
        (".git/", ".venv/", "infra/kafka/.cache/", "infra/kafka/.data/"))]
    paths = {p.relative_to(ROOT).as_posix() for p in tracked}
    names = {p.name for p in tracked}
    missing = 0
    for path in sources():
        rel = path.relative_to(ROOT).as_posix()
        for line, text in prose(path):
            found = [(m, resolves(m.group(1), path, names, paths)) for m in MENTION.finditer(text)]
            found += [(m, module_resolves(m.group(1))) for m in DOTTED.finditer(text)]
            for match, ok in sorted(found, key=lambda f: f[0].start()):
                mention, at = match.group(1), line + text.count("\n", 0, match.start())
                if not ok or "--all" in argv:
                    print(f"{rel}:{at}: {mention}{'' if ok else '  (not in the repository)'}")
                missing += not ok
    if missing:
        print(f"{missing} mention(s) of files that are not in the repository.", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
