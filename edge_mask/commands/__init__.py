"""Sub-commands of the `edge-mask` CLI; each module exposes `register(subparsers)`."""
