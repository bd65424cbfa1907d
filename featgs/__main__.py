from featgs.cli import entry

entry()
