"""The command-line tools: run as `python tools/NAME.py` from a checkout, or as the `ppti-*` console scripts of an
installed ppti (this folder is installed as the package `ppti.tools`; see pyproject.toml)."""
