"""The operator web console: server-rendered pages over the node's register, on a listener of
its own (`node serve --console-listen`); it reads through the store and changes the register
only through ztpki.node.operations, as the CLI does.

Only the settings are imported here (node.toml reads them); the server is in
ztpki.node.console.server.
"""

from ztpki.node.console.settings import ConsoleConfig

__all__ = ["ConsoleConfig"]
