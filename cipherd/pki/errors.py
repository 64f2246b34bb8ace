"""
The exceptions of the PKI package.  Each carries a message an administrator
can act on; the MPA turns them into log lines and bounces.
"""


class PKIError(Exception):
    """
    The root of every PKI failure.
    """


class CMSFormatError(PKIError):
    """
    The data is not a CMS structure we can read (or not CMS at all).
    """


class UnsupportedAlgorithm(PKIError):
    """
    The structure uses an algorithm cipherd does not implement.
    """


class DecryptionKeyNotFound(PKIError):
    """
    None of the available private keys is a recipient of the message.
    """

    def __init__(self, message: str = "A suitable decryption key could not be found.") -> None:
        super().__init__(message)


class DecryptionFailed(PKIError):
    """
    A matching key was found but the content could not be decrypted (wrong
    key, tampered data).
    """


class CertificateImportError(PKIError):
    """
    Data given to import is not a certificate, key or CRL we can read.
    """
