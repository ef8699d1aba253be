"""One module per `vitmix` sub-command; each defines ``register(subparsers)``.

The CLI discovers the modules here, so adding a command touches no other file.
"""
