"""`python -m automation …`: the same as the `automation` command."""

from automation.cli import main

main()
