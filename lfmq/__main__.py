"""`python -m lfmq`: the CLI, as the `lfmq` console script runs it."""

from lfmq.cli import main

main()
