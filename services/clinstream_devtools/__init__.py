"""Development tooling of clinstream: local stack, simulators, process supervisor, demo data and demo federation.

Nothing here runs at a site. It depends on the site runtime (`clinstream`), never the reverse (an import-linter
contract), and reaches the `clinstream` command through the CLI's `clinstream.commands` entry point.
"""
