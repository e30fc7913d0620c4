#!/usr/bin/env python3
"""Core Lightning plugin entry point: `lightningd --plugin=/path/to/superscalar_plugin.py`."""

from superscalar.cln.plugin import build_plugin

if __name__ == "__main__":
    build_plugin().run()
