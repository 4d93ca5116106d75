"""sbtui: a time-travel debugger for whole virtual machines."""
__version__ = "0.1.0"
