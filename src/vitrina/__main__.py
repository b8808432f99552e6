from vitrina.cli import entry

entry()
