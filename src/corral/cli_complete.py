"""``corral completion bash|zsh|fish``: shell completion scripts.

The commands and their flags are read off the CLI's own parser when the script is
printed, and written into it (no Python runs while completing); workload ids come
from ``corral ls -q`` (with the ``--server`` of the command line being completed)
when a command takes one.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

STATUSES = "pending running completed failed killed"
ID_COMMANDS = ("show", "kill", "wait", "logs")
ID_FLAGS = ("--after", "--after-any")
FILE_FLAGS = ("--from-file", "--tls-cert", "--tls-key")
DIR_FLAGS = ("--cwd", "--data-dir")
CHOICES = {
    "--status": STATUSES,
    "-o": "wide",
    "--export": "ALL NONE",
    "--executor": "local none",
    "--log-format": "text json",
}
POSITIONAL_CHOICES = {"completion": "bash zsh fish"}


class Command:
    """One command (or ``token`` subcommand) as completion sees it."""

    def __init__(self, name: str, summary: str, parser: argparse.ArgumentParser) -> None:
        self.name = name
        self.summary = summary
        self.flags: list[tuple[list[str], bool, str]] = []
        """(option strings, takes a value, help)."""
        self.subcommands: list[Command] = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                self.subcommands = _commands(action)
            elif action.option_strings:
                takes = action.nargs != 0
                self.flags.append((list(action.option_strings), takes, action.help or ""))

    def words(self) -> list[str]:
        return [s for strings, _, _ in self.flags for s in strings]

    def value_flags(self) -> list[str]:
        return [s for strings, takes, _ in self.flags if takes for s in strings]


def _commands(action: argparse._SubParsersAction) -> list[Command]:  # type: ignore[type-arg]
    summaries = {a.dest: a.help or "" for a in action._choices_actions}
    return [Command(name, summaries.get(name, ""), p) for name, p in action.choices.items()]


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    root = Command("corral", "", parser)
    return {"bash": bash, "zsh": zsh, "fish": fish}[shell](root)


def _all_value_flags(root: Command) -> list[str]:
    flags = set(root.value_flags())
    for command in root.subcommands:
        flags.update(command.value_flags())
        for sub in command.subcommands:
            flags.update(sub.value_flags())
    return sorted(flags)


def _words(items: Iterable[str]) -> str:
    return " ".join(items)


# --- bash ------------------------------------------------------------------------------


def bash(root: Command) -> str:
    free = [
        f
        for f in _all_value_flags(root)
        if f not in CHOICES and f not in FILE_FLAGS + DIR_FLAGS + ID_FLAGS
    ]
    per_command = []
    for command in root.subcommands:
        if command.subcommands:
            subs = _words(c.name for c in command.subcommands)
            branches = "\n".join(
                f'                {c.name}) words="{_words(c.words())}" ;;'
                for c in command.subcommands
            )
            per_command.append(
                f"""        {command.name})
            if [[ -z "$sub" ]]; then
                COMPREPLY=($(compgen -W "{subs}" -- "$cur"))
                return
            fi
            case "$sub" in
{branches}
            esac ;;"""
            )
        else:
            per_command.append(f'        {command.name}) words="{_words(command.words())}" ;;')
    cases = "\n".join(per_command)
    choice_cases = "\n".join(
        f'        {flag}) COMPREPLY=($(compgen -W "{values}" -- "$cur")); return ;;'
        for flag, values in CHOICES.items()
    )
    commands = _words(c.name for c in root.subcommands)
    return f"""# bash completion for corral: eval "$(corral completion bash)" in ~/.bashrc
_corral_ids() {{
    corral ${{_corral_server:+--server "$_corral_server"}} ls -q 2>/dev/null
}}

_corral() {{
    local cur prev cmd="" sub="" words="" i word _corral_server=""
    COMPREPLY=()
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in
            --server) _corral_server="${{COMP_WORDS[i+1]}}"; ((i++)) ;;
            --token) ((i++)) ;;
            -*) ;;
            *)
                if [[ -z "$cmd" ]]; then
                    cmd="$word"
                elif [[ "$cmd" == token && -z "$sub" ]]; then
                    sub="$word"
                fi ;;
        esac
    done
    case "$prev" in
{choice_cases}
        {"|".join(ID_FLAGS)}) COMPREPLY=($(compgen -W "$(_corral_ids)" -- "$cur")); return ;;
        {"|".join(FILE_FLAGS)}) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        {"|".join(DIR_FLAGS)}) COMPREPLY=($(compgen -d -- "$cur")); return ;;
        {"|".join(free)}) return ;;
    esac
    if [[ -z "$cmd" ]]; then
        COMPREPLY=($(compgen -W "{commands} {_words(root.words())}" -- "$cur"))
        return
    fi
    case "$cmd" in
{cases}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    elif [[ " {_words(ID_COMMANDS)} " == *" $cmd "* ]]; then
        COMPREPLY=($(compgen -W "$(_corral_ids)" -- "$cur"))
    elif [[ "$cmd" == completion ]]; then
        COMPREPLY=($(compgen -W "{POSITIONAL_CHOICES["completion"]}" -- "$cur"))
    fi
}}

complete -o default -F _corral corral
"""


# --- zsh -------------------------------------------------------------------------------


def _zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def zsh(root: Command) -> str:
    free = [
        f
        for f in _all_value_flags(root)
        if f not in CHOICES and f not in FILE_FLAGS + DIR_FLAGS + ID_FLAGS
    ]
    described = "\n".join(
        "    " + _zsh_quote(f"{c.name}:{c.summary.replace(':', ' -')}") for c in root.subcommands
    )
    per_command = []
    for command in root.subcommands:
        if command.subcommands:
            subs = _words(c.name for c in command.subcommands)
            branches = "\n".join(
                f"        {c.name}) flags=({_words(c.words())}) ;;" for c in command.subcommands
            )
            per_command.append(
                f"""    {command.name})
      if [[ -z $sub ]]; then compadd -- {subs}; return; fi
      case $sub in
{branches}
      esac ;;"""
            )
        else:
            per_command.append(f"    {command.name}) flags=({_words(command.words())}) ;;")
    cases = "\n".join(per_command)
    choice_cases = "\n".join(
        f"    {flag}) compadd -- {values}; return ;;" for flag, values in CHOICES.items()
    )
    return f"""#compdef corral
# zsh completion for corral: eval "$(corral completion zsh)" in ~/.zshrc (after
# compinit), or save it as _corral in a directory of $fpath.

_corral_ids() {{
  local -a ids
  ids=(${{(f)"$(corral ${{_corral_server:+--server $_corral_server}} ls -q 2>/dev/null)"}})
  compadd -a ids
}}

_corral() {{
  local cmd="" sub="" _corral_server="" w i
  local -a flags commands
  commands=(
{described}
  )
  for ((i = 2; i < CURRENT; i++)); do
    w=${{words[i]}}
    case $w in
      --server) _corral_server=${{words[i+1]}}; ((i++)) ;;
      --token) ((i++)) ;;
      -*) ;;
      *)
        if [[ -z $cmd ]]; then
          cmd=$w
        elif [[ $cmd == token && -z $sub ]]; then
          sub=$w
        fi ;;
    esac
  done
  case ${{words[CURRENT-1]}} in
{choice_cases}
    {"|".join(ID_FLAGS)}) _corral_ids; return ;;
    {"|".join(FILE_FLAGS)}) _files; return ;;
    {"|".join(DIR_FLAGS)}) _files -/; return ;;
    {"|".join(free)}) return ;;
  esac
  if [[ -z $cmd ]]; then
    if [[ ${{words[CURRENT]}} == -* ]]; then
      compadd -- {_words(root.words())}
    else
      _describe -t commands 'corral command' commands
    fi
    return
  fi
  case $cmd in
{cases}
  esac
  if [[ ${{words[CURRENT]}} == -* ]]; then
    compadd -- $flags
  elif [[ " {_words(ID_COMMANDS)} " == *" $cmd "* ]]; then
    _corral_ids
  elif [[ $cmd == completion ]]; then
    compadd -- {POSITIONAL_CHOICES["completion"]}
  else
    _files
  fi
}}

if [[ ${{zsh_eval_context[-1]}} == loadautofunc ]]; then
  _corral "$@"
else
  compdef _corral corral
fi
"""


# --- fish ------------------------------------------------------------------------------


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_flag(condition: str, strings: list[str], takes: bool, help_: str) -> str:
    parts = [f"complete -c corral -n {_fish_quote(condition)}"]
    for s in strings:
        parts.append(f"-l {s[2:]}" if s.startswith("--") else f"-s {s[1:]}")
    long = next((s for s in strings if s.startswith("--")), strings[0])
    if long in CHOICES or strings[0] in CHOICES:
        values = CHOICES.get(long) or CHOICES[strings[0]]
        parts.append(f"-x -a {_fish_quote(values)}")
    elif long in ID_FLAGS:
        parts.append("-x -a '(__corral_ids)'")
    elif long in FILE_FLAGS + DIR_FLAGS:
        parts.append("-r -F")
    elif takes:
        parts.append("-x")
    if help_:
        parts.append(f"-d {_fish_quote(help_.split(';')[0].split('(')[0].strip()[:60])}")
    return " ".join(parts)


def fish(root: Command) -> str:
    lines = [
        "# fish completion for corral:",
        "#   corral completion fish > ~/.config/fish/completions/corral.fish",
        "function __corral_ids",
        "    set -l server (__corral_server)",
        '    if test -n "$server"',
        "        corral --server $server ls -q 2>/dev/null",
        "    else",
        "        corral ls -q 2>/dev/null",
        "    end",
        "end",
        "function __corral_server",
        "    set -l tokens (commandline -opc)",
        "    for i in (seq (count $tokens))",
        '        if test "$tokens[$i]" = --server; and test $i -lt (count $tokens)',
        "            echo $tokens[(math $i + 1)]",
        "            return",
        "        end",
        "    end",
        "end",
        "function __corral_no_command",
        "    set -l tokens (commandline -opc)",
        "    set -e tokens[1]",
        "    set -l skip 0",
        "    for t in $tokens",
        "        if test $skip = 1",
        "            set skip 0",
        "            continue",
        "        end",
        "        switch $t",
        "            case --server --token",
        "                set skip 1",
        "            case '-*'",
        "            case '*'",
        "                return 1",
        "        end",
        "    end",
        "    return 0",
        "end",
        "complete -c corral -f",
    ]
    for strings, takes, help_ in root.flags:
        lines.append(_fish_flag("__corral_no_command", strings, takes, help_))
    for command in root.subcommands:
        lines.append(
            f"complete -c corral -n __corral_no_command -a {command.name}"
            f" -d {_fish_quote(command.summary)}"
        )
        seen = f"__fish_seen_subcommand_from {command.name}"
        for strings, takes, help_ in command.flags:
            lines.append(_fish_flag(seen, strings, takes, help_))
        names = _words(c.name for c in command.subcommands)
        for sub in command.subcommands:
            first = f"{seen}; and not __fish_seen_subcommand_from {names}"
            lines.append(
                f"complete -c corral -n {_fish_quote(first)}"
                f" -a {sub.name} -d {_fish_quote(sub.summary)}"
            )
            cond = f"{seen}; and __fish_seen_subcommand_from {sub.name}"
            for strings, takes, help_ in sub.flags:
                lines.append(_fish_flag(cond, strings, takes, help_))
    ids = " ".join(ID_COMMANDS)
    lines.append(
        f"complete -c corral -n {_fish_quote(f'__fish_seen_subcommand_from {ids}')}"
        " -a '(__corral_ids)'"
    )
    lines.append(
        "complete -c corral -n '__fish_seen_subcommand_from completion'"
        f" -a {_fish_quote(POSITIONAL_CHOICES['completion'])}"
    )
    lines.append("complete -c corral -n '__fish_seen_subcommand_from submit' -F")
    return "\n".join(lines) + "\n"
