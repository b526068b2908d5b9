"""The ``sglang-ampere`` commands: one module per command, each ``add_arguments(parser)`` and
``run(args) -> int`` (or ``OWN_ARGV = True`` and ``main(argv) -> int``). The library they call lives
beside this package; nothing in the library imports a command.
"""
