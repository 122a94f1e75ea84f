"""Every third-party module the package imports is a declared runtime dependency (the test extra must not be
what makes the main job work: jinja2 once came only through torch)."""
import ast
import importlib.metadata as md
import os
import re
import sys

import jaxr1

ROOT = os.path.dirname(jaxr1.__file__)


def imported_top_level_modules() -> set[str]:
    names = set()
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                tree = ast.parse(open(os.path.join(dirpath, f)).read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        names.update(a.name.split(".")[0] for a in node.names)
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("jaxr1", "__future__")}


def declared() -> set[str]:
    reqs = md.requires("jaxr1") or []
    runtime = [r for r in reqs if "extra ==" not in r]
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in runtime}


# Imported only behind an option that says how to install it.
OPTIONAL = {"torch", "wandb", "matplotlib", "peft", "libtpu"}


def test_every_runtime_import_is_a_declared_dependency():
    dists = md.packages_distributions()
    need = declared()
    missing = {}
    for mod in imported_top_level_modules() - OPTIONAL:
        owners = {d.lower().replace("_", "-") for d in dists.get(mod, [])}
        if not owners & need:
            missing[mod] = sorted(owners) or ["not installed"]
    assert not missing, f"imported but not in [project] dependencies: {missing}"


# Needed at run time through a dependency that does not require it itself.
INDIRECT = {"jinja2": "transformers' apply_chat_template (the chat template)"}


def test_indirect_runtime_needs_are_declared():
    assert not set(INDIRECT) - declared(), INDIRECT
