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

#: ``mwga <word>`` -> the function that runs it, as ``module:function``
SUBCOMMANDS: dict[str, str] = {
    "index": "mwga_core.cli.index:index_command",
    "attribute": "mwga_core.cli.attribute:attribute_command",
    "model-check": "mwga_core.cli.model_check:model_check_command",
    "flow-eval": "mwga_core.cli.flow_eval:flow_eval_command",
    "cache": "mwga_core.cli.cache:cache_command",
    "report": "mwga_core.cli.report:report_command",
    "plugins": "mwga_core.cli.plugins:plugins_command",
    "train-raft": "mwga_plugins.motion.raft_net.train:main",
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
    target = SUBCOMMANDS[args.pop(0)] if args and args[0] in SUBCOMMANDS else RUN_TARGET
    try:
        return _load(target)(args)
    except MwgaUserError as error:
        print_error(error)
        return error.exit_code
    except BrokenPipeError:  # `mwga --help | head`: the reader left; not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
