from setuptools import find_packages, setup

setup(
    name="cipherd",
    version="0.1.0",
    description="Email encryption gateway with a secure webmail messenger",
    python_requires=">=3.11",
    packages=[*find_packages(include=["cipherd", "cipherd.*"]), "twisted.plugins"],
    package_data={
        "cipherd.web": ["templates/*.html", "static/*"],
        "cipherd.webmail": ["templates/*.txt"],
    },
    include_package_data=True,
    install_requires=[
        "twisted[tls]>=24.7",
        "cryptography>=44",
        "pyopenssl>=24",
        "service-identity>=24",
        "asn1crypto>=1.5",
        "klein>=24.8",
        "jinja2>=3.1",
        "sqlalchemy>=2.0",
        "psycopg[binary]>=3.2",
        "argon2-cffi>=23",
        "zxcvbn>=4.4",
        "croniter>=2",
        "dkimpy>=1.1",
        "nh3>=0.2",
        "psutil>=5.9",
        "pysequoia>=0.1.35",
        # Only to read the signatures pysequoia cannot reach (cipherd.pki.pgp).
        "pgpy>=0.6",
        # The PDF method (cipherd.webmail.pdf): fpdf2 lays the message out
        # (uharfbuzz shapes right-to-left and joined scripts for it) and
        # encrypts it with AES-256.  Below 2.9: cipherd.webmail.pdf fixes
        # how 2.8 writes the names of embedded files in an encrypted
        # document, through its output producer's internals.
        "fpdf2>=2.8.9,<2.9",
        "uharfbuzz>=0.39",
        # The metrics at /metrics (cipherd.web.dashboard).
        "prometheus-client>=0.20",
        # DLP: RE2 runs every pattern in time linear in the text (no
        # catastrophic backtracking); pypdf reads the text of PDF attachments.
        "google-re2>=1.1",
        "pypdf>=5",
        # Passkeys in the portal (cipherd.webmail.passkeys): WebAuthn
        # registration and assertion checks.
        "webauthn>=2.2",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "treq>=24",
            "hypothesis>=6",
            "playwright>=1.45",
            "ruff>=0.6",
            "mypy>=1.11",
            "mypy-zope>=1.0",
            # The API against its OpenAPI description (tests/test_openapi*.py).
            "schemathesis>=4.3",
            # bench/pdf_libraries.py: qpdf's encryption, compared.
            "pikepdf>=9",
        ],
    },
)
