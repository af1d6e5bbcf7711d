"""Operator tools: the `taskledger` command, its console, the Procfile supervisor and the demo.

They import `schemas` and start the other packages as processes; nothing imports them.
"""
