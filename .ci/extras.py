"""Print the requirements of pyproject.toml's optional-dependency groups named on the command line (for the
Makefile: one list of what is used, in pyproject.toml). Python 3.10 has no tomllib: a small reader of the
`name = ["a", "b"]` lines of that one table is used there."""

import re
import sys


def groups(text):
    try:
        import tomllib
    except ImportError:
        table = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
        return {m.group(1): re.findall(r'"([^"]+)"', m.group(2))
                for m in re.finditer(r"^(\w+)\s*=\s*\[(.*?)\]", table, re.M | re.S)}
    return tomllib.loads(text)["project"]["optional-dependencies"]


if __name__ == "__main__":
    found = groups(open("pyproject.toml").read())
    print(" ".join(sorted({req for name in sys.argv[1:] for req in found[name]})))
