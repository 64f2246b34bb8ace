"""
cipherd: an email encryption gateway with a secure webmail messenger.
"""

__version__ = "0.1.0"
