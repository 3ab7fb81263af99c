"""The ``mwga`` command: dispatches to one module per subcommand.

``mwga [overrides]`` runs the attribution job (:mod:`mwga_core.cli.run`); ``mwga <subcommand> ...`` runs
the function :data:`SUBCOMMANDS` names, imported only when that word is used, so ``mwga --help`` never
pays for torch, cv2 or matplotlib. Every command reports a user error (:class:`MwgaUserError`) as one line
``error: ...`` and exits with its code (2); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys

from mwga_core.api.errors import MwgaUserError
from mwga_core.plugin_host.commands import COMMAND_NAME

#: ``mwga <word>`` -> the function that runs it, as ``module:function``
SUBCOMMANDS: dict[str, str] = {
    "index": "mwga_core.cli.index:index_command",
    "attribute": "mwga_core.cli.attribute:attribute_command",
    "model-check": "mwga_core.cli.model_check:model_check_command",
    "flow-eval": "mwga_core.cli.flow_eval:flow_eval_command",
    "cache": "mwga_core.cli.cache:cache_command",
    "report": "mwga_core.cli.report:report_command",
    "plugins": "mwga_core.cli.plugins:plugins_command",
    "counterfactual": "mwga_core.cli.counterfactual:counterfactual_command",
}
#: ``mwga [overrides]`` without a subcommand word
RUN_TARGET = "mwga_core.cli.run:run_command"


def _load(target: str):
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mwga`` console script."""
    from mwga_core.cli.messages import print_error

    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if args and args[0] in SUBCOMMANDS:
            return _load(SUBCOMMANDS[args.pop(0)])(args)
        if args and _could_be_a_command(args[0]):
            command = _plugin_command(args[0])
            if command is None:
                raise UsageError(args[0])
            return command(args[1:])
        return _load(RUN_TARGET)(args)
    except MwgaUserError as error:
        print_error(error)
        return error.exit_code
    except BrokenPipeError:  # `mwga --help | head`: the reader left; not an error
        sys.stderr.close()
        return 0


class UsageError(MwgaUserError):
    """``mwga <word>`` where the word is neither a subcommand nor an override."""

    def __init__(self, word: str) -> None:
        from mwga_core.plugin_host.host import get_host

        known = sorted([*SUBCOMMANDS, *get_host().commands.commands])
        super().__init__(
            f"unknown subcommand {word!r}; subcommands: {', '.join(known)} "
            "(or give overrides such as descriptor.bins=16 to run the attribution job)"
        )


def _could_be_a_command(word: str) -> bool:
    """A bare word, not a Hydra override (``key=value``, ``+key=...``, ``~key``) nor an option (``-m``)."""
    return COMMAND_NAME.match(word) is not None


def _plugin_command(word: str):
    """The function a plugin registered as ``mwga <word>`` (hook ``mwga_register_commands``), or None.

    Only a word that is no built-in subcommand loads the plugins here, so ``mwga --help`` and overrides stay
    as fast as before.
    """
    from mwga_core.plugin_host.host import get_host

    spec = get_host().commands.commands.get(word)
    return spec.function if spec is not None else None


if __name__ == "__main__":
    sys.exit(main())
