"""`ztpki doctor`: check a node or CA-system deployment and say what is wrong and how to fix it.

The checks read the directories as the services would (the same configuration loaders, the
same store schema constants), so the doctor never disagrees with `serve` about what is
broken; each finding names the command or the change that repairs it.
"""
