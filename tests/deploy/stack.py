"""Reading what `flaskserve deploy aws` wrote as CloudFormation would: `Fn::Sub` rendered, the
instances' boot script taken from the launch template, the files that script writes found in it.

A module of its own so the template tests and the boot test read the stack the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

from cfnlint.decode import decode_str

#: `${Name}` substituted, `${!Literal}` written as `${Literal}`: Fn::Sub's two rules.
_SUB = re.compile(r"\$\{(!?)([^}]*)\}")
#: A heredoc the boot script writes: `cat > "PATH" <<MARK` ... `MARK`.
_HEREDOC = re.compile(r'^cat > "([^"]+)" <<\'?(\w+)\'?\n(.*?)^\2$', re.MULTILINE | re.DOTALL)


def load_cfn(path: Path) -> dict:
    template, problems = decode_str(path.read_text(encoding="utf-8"))
    assert not problems
    return template


def render_sub(text: str, values: dict[str, str]) -> str:
    """`text` as Fn::Sub renders it with `values` (parameters, resources, pseudo parameters)."""
    return _SUB.sub(lambda m: "${" + m.group(2) + "}" if m.group(1) else values[m.group(2)], text)


def boot_script(template_path: Path, overrides: dict[str, str]) -> str:
    """The launch template's user data, with the parameters' defaults (or `overrides`)."""
    template = load_cfn(template_path)
    values = {name: str(p["Default"]) for name, p in template["Parameters"].items()
              if "Default" in p}
    values |= {"AWS::Region": "us-east-1", "InstanceLogs": "/flaskserve/test", **overrides}
    data = template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    return render_sub(data["UserData"]["Fn::Base64"]["Fn::Sub"], values)


def shell_defaults(script: str) -> dict[str, str]:
    """The script's top-level `NAME=value` variables as they are on an instance (every
    FLASKSERVE_BOOT_* unset), to read the files it writes without running it."""
    variables: dict[str, str] = {}
    for name, value in re.findall(r"^(?:export )?([A-Z_]+)=(\S*)", script, re.MULTILINE):
        value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value).strip("'")
        variables[name] = re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), ""), value)
    return variables


def written_files(script: str) -> dict[str, str]:
    """Path -> content of every file the script writes with a heredoc, as on an instance."""
    variables = shell_defaults(script)

    def expand(text: str) -> str:
        return re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), m.group(0)), text)

    return {
        expand(path): body if mark == "FETCH" else expand(body)
        for path, mark, body in _HEREDOC.findall(script)
    }
